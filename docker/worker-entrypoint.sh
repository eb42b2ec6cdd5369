#!/bin/sh
# Entrypoint of the worker image (Celery worker and the one-shot `train` service).
#
# 1. KERAS_BACKEND: an explicit, non-empty value wins; else `jax` for an image built with
#    GPU_STACK=jax and `tensorflow` otherwise.
# 2. One GPU per container: when RECSYS_GPU_LOCK_DIR is set, CUDA_VISIBLE_DEVICES is not, and GPUs
#    are visible, take the first GPU whose lock file (RECSYS_GPU_LOCK_DIR/gpu<i>.lock, on a volume
#    shared by all replicas on this host) is free, hold the lock for the life of the process, and
#    export CUDA_VISIBLE_DEVICES=<i>. So `--scale worker=<number of GPUs>` gives each replica its own
#    GPU, although Docker hands every replica all of them. When every GPU is taken:
#    RECSYS_GPU_WHEN_BUSY=fail (default, workers) exits with status 75 (scale down to the number of
#    GPUs); RECSYS_GPU_WHEN_BUSY=share (the train service) uses GPU 0 next to its worker.
#    RECSYS_GPU_IDS (e.g. "1,3") limits the claim to those GPU indices; RECSYS_GPU_COUNT overrides
#    the detected number of GPUs.
set -eu

if [ -z "${KERAS_BACKEND:-}" ]; then
    if [ "${GPU_STACK:-none}" = "jax" ]; then KERAS_BACKEND=jax; else KERAS_BACKEND=tensorflow; fi
fi
export KERAS_BACKEND

gpu_count() {
    if [ -n "${RECSYS_GPU_COUNT:-}" ]; then
        echo "$RECSYS_GPU_COUNT"
        return
    fi
    if command -v nvidia-smi >/dev/null 2>&1; then
        n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
        if [ "${n:-0}" -gt 0 ]; then
            echo "$n"
            return
        fi
    fi
    n=0
    for dev in /dev/nvidia[0-9]*; do
        [ -e "$dev" ] && n=$((n + 1))
    done
    echo "$n"
}

if [ -n "${RECSYS_GPU_LOCK_DIR:-}" ] && [ -z "${CUDA_VISIBLE_DEVICES:-}" ]; then
    n=$(gpu_count)
    if [ "$n" -eq 0 ]; then
        echo "worker-entrypoint: no GPU visible, running on CPU" >&2
    else
        if [ -n "${RECSYS_GPU_IDS:-}" ]; then
            ids=$(echo "$RECSYS_GPU_IDS" | tr ',' ' ')
        else
            ids=$(seq 0 $((n - 1)))
        fi
        # shellcheck disable=SC2086,SC2116  # word splitting joins the list into one spaced line
        ids=$(echo $ids)
        for i in $ids; do
            case "$i" in
                *[!0-9]*) echo "worker-entrypoint: bad GPU index '$i' in RECSYS_GPU_IDS" >&2; exit 64 ;;
            esac
        done
        mkdir -p "$RECSYS_GPU_LOCK_DIR"
        claimed=""
        for i in $ids; do
            exec 9>"$RECSYS_GPU_LOCK_DIR/gpu$i.lock"
            if flock -n 9; then
                claimed=$i
                break
            fi
            exec 9>&-
        done
        k=$(echo "$ids" | wc -w)
        if [ -z "$claimed" ] && [ "${RECSYS_GPU_WHEN_BUSY:-fail}" = "share" ]; then
            claimed=${ids%% *}
            echo "worker-entrypoint: GPUs $ids are all held by workers; sharing GPU $claimed" >&2
        elif [ -z "$claimed" ]; then
            echo "worker-entrypoint: GPUs $ids are all held by other containers;" \
                 "run at most $k worker replicas (docker compose up --scale worker=$k)" >&2
            exit 75
        fi
        CUDA_VISIBLE_DEVICES=$claimed
        export CUDA_VISIBLE_DEVICES
        echo "worker-entrypoint: using GPU $claimed of $ids (KERAS_BACKEND=$KERAS_BACKEND)" >&2
    fi
fi

exec "$@"
