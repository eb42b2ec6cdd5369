#!/bin/sh
# The one-shot `train` service: build the first model into the shared models volume.
#
# - A model is already published (RECSYS_MODELS_DIR/CURRENT) and RECSYS_FORCE_TRAIN is not 1:
#   nothing to do, exit 0 (so `docker compose up` does not retrain every time).
# - TRAIN_DATA set: train on it (a path inside the container, e.g. a bind mount under /data/input).
# - Otherwise: generate the synthetic demo world into RECSYS_DEMO_DATA_DIR (skipped when present)
#   and train on it.
set -eu

models="${RECSYS_MODELS_DIR:-/data/models}"
if [ -s "$models/CURRENT" ] && [ "${RECSYS_FORCE_TRAIN:-0}" != "1" ]; then
    echo "train: model $(cat "$models/CURRENT") is already published in $models;" \
         "set RECSYS_FORCE_TRAIN=1 to train a new version"
    exit 0
fi

data="${TRAIN_DATA:-}"
if [ -z "$data" ]; then
    data="${RECSYS_DEMO_DATA_DIR:-/data/demo-world}"
    if [ -e "$data/SYNTHETIC.md" ]; then
        echo "train: demo data already in $data"
    else
        echo "train: generating the synthetic demo world in $data"
        python -m ml demo-data --out "$data"
    fi
fi

echo "train: training on $data (models -> $models, KERAS_BACKEND=${KERAS_BACKEND:-})"
exec python -m ml train --data "$data"
