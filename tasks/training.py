"""Training task (queue `training`): build a new model version with `ml.train` and publish it.

Serving workers notice the new CURRENT pointer on their next task and swap models without a restart.
"""
from __future__ import annotations

import inspect
import logging
import shutil
from pathlib import Path
from typing import Any

from tasks import names
from tasks.celery_app import app
from tasks.model_holder import holder
from tasks.recommend import jsonable

log = logging.getLogger(__name__)


def train_and_publish(data_path: str, epochs: int | None = None, *, publish: bool = True) -> dict[str, Any]:
    # Imported here: ml.train pulls in TensorFlow, which must never load in the worker's parent.
    from ml.train import TrainConfig, train_model

    if not isinstance(data_path, str) or not data_path:
        raise ValueError("data_path must be a non-empty string")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not Path(data_path).exists():
        raise FileNotFoundError(f"no training data at {data_path}")
    registry = holder.registry
    version = registry.new_version()
    out_dir = registry.path_for(version)
    config = TrainConfig() if epochs is None else TrainConfig(epochs=epochs)
    log.info("training model %s from %s", version, data_path)
    extra = {"settings": holder.settings} if "settings" in inspect.signature(train_model).parameters else {}
    try:
        manifest = train_model(data_path, out_dir, config=config, **extra)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # never leave a half-written version behind
        raise
    if publish:
        registry.publish(version)
        log.info("published model %s", version)
    return {
        "model_version": version,
        "published": publish,
        "path": str(out_dir),
        "manifest": jsonable(manifest or {}),
    }


@app.task(name=names.TRAIN)
def train(data_path: str, epochs: int | None = None) -> dict[str, Any]:
    """Train a new model version from `data_path` and make it the live one."""
    return train_and_publish(data_path, epochs)
