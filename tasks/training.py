"""Model management tasks: train a new version (queue `training`), list the versions, publish one.

Serving workers notice a new CURRENT pointer on their next task and swap models without a restart,
so publishing an older version is a rollback. Every failure a client can cause is a coded
`tasks.errors.TaskFailure` (a bad or missing data path, an unknown version); the rest is `internal`.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from tasks import errors, names
from tasks.celery_app import app
from tasks.model_holder import holder
from tasks.recommend import jsonable

log = logging.getLogger(__name__)


def check_epochs(epochs: Any) -> int | None:
    if epochs is not None and (
        isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= names.MAX_EPOCHS
    ):
        raise errors.invalid_input(
            f"epochs must be an integer in 1..{names.MAX_EPOCHS}, got {str(epochs)[:20]!r}"
        )
    return epochs


def training_data(data_path: Any) -> Path:
    """The request's data path, inside the allowed data directories (Settings.training_data_path)
    and present; `invalid_input` / `not_found` otherwise (the message names the path as given)."""
    try:
        path = holder.settings.training_data_path(data_path)
    except ValueError as exc:
        raise errors.invalid_input(str(exc)) from None
    if not path.exists():
        raise errors.TaskFailure(errors.NOT_FOUND, f"no training data at {str(data_path)[:200]!r}")
    return path


def train_and_publish(
    data_path: str, epochs: int | None = None, *, publish: bool = True, report=None
) -> dict[str, Any]:
    """Train a version from `data_path` (checked by `training_data`) and the live feedback so far,
    publish it when `publish`; `report` is told how far the run is (ml.train.Report). A failure
    once the training's soft time limit has passed is that limit (see `_as_soft_limit`)."""
    started = time.monotonic()
    # Imported here: ml.train pulls in TensorFlow, which must never load in the worker's parent.
    from ml.heap import release_free
    from ml.train import TrainConfig, train_model
    from tasks.gc_callbacks import drop_idle_jax_callback

    drop_idle_jax_callback()  # TensorFlow, hence JAX, is loaded: see tasks/gc_callbacks.py
    path, epochs = training_data(data_path), check_epochs(epochs)
    registry = holder.registry
    version = registry.new_version()
    out_dir = registry.path_for(version)
    config = TrainConfig() if epochs is None else TrainConfig(epochs=epochs)
    log.info("training model %s from %s", version, path)
    try:
        manifest = train_model(
            path,
            out_dir,
            config=config,
            settings=holder.settings,
            report=report,
            feedback_file=holder.settings.feedback_file,
        )
    except BaseException as exc:
        shutil.rmtree(out_dir, ignore_errors=True)  # never leave a half-written version behind
        late = _as_soft_limit(exc, time.monotonic() - started, holder.settings.train_soft_time_limit_s)
        if late is not None:
            raise late from exc
        raise
    finally:
        release_free()  # this worker serves on: training's freed heap pages go back (ml/heap.py)
    if publish:
        registry.publish(version)
        log.info("published model %s", version)
    return {"model_version": version, "published": publish, "manifest": jsonable(manifest or {})}


def _as_soft_limit(exc: BaseException, elapsed_s: float, limit_s: float) -> SoftTimeLimitExceeded | None:
    """The soft time limit an error stands for, else None: one caused by it, or any error once the
    limit has passed. Celery raises the limit once, from a signal handler, wherever the task's
    thread is, and library code there can turn it into another error (seen in CI:
    inspect.getfullargspec, called by Keras while building the image network, re-raised it as
    TypeError('unsupported callable')), which would reach the client as an internal fault instead
    of a timeout. 0.1 s of slack: `train_and_publish` starts a little after Celery's timer."""
    if not isinstance(exc, Exception) or isinstance(exc, SoftTimeLimitExceeded):
        return None
    caused, seen = exc.__cause__ or exc.__context__, 0
    while caused is not None and seen < 20 and not isinstance(caused, SoftTimeLimitExceeded):
        caused, seen = caused.__cause__ or caused.__context__, seen + 1
    if not isinstance(caused, SoftTimeLimitExceeded) and (not limit_s or elapsed_s < limit_s - 0.1):
        return None
    return SoftTimeLimitExceeded(
        f"training ran past its soft time limit ({limit_s:g} s); it surfaced as {type(exc).__name__}: {exc}"
    )


@app.task(name=names.TRAIN, bind=True)
def train(self, data_path: str, epochs: int | None = None) -> dict[str, Any]:
    """Train a new model version from `data_path` and make it the live one; the job's state is
    PROGRESS with {"stage", "epoch", "epochs"} while it runs."""

    def report(progress: dict) -> None:
        self.update_state(state=names.PROGRESS_STATE, meta=jsonable(progress))

    return train_and_publish(data_path, epochs, report=report)


@app.task(name=names.MODELS)
def models() -> dict[str, Any]:
    """Every version in the registry, newest first (ml.registry.ModelRegistry.summary)."""
    registry = holder.registry
    versions = [registry.summary(v) for v in reversed(registry.versions())]
    return {"models": jsonable(versions), "current": registry.current_version()}


@app.task(name=names.PUBLISH)
def publish(version: Any) -> dict[str, Any]:
    """Make `version` the live model (a rollback when it is an older one). An unknown version is
    `not_found`; one this code cannot serve (another artifact format) is `invalid_input`."""
    registry = holder.registry
    if not isinstance(version, str) or version not in registry.versions():
        raise errors.TaskFailure(errors.NOT_FOUND, f"unknown model version: {str(version)[:80]!r}")
    summary = registry.summary(version)
    if not summary["servable"]:
        raise errors.invalid_input(f"model {version} cannot be served: {summary['problem']}")
    previous = registry.current_version()
    registry.publish(version)
    log.info("published model %s (was %s)", version, previous)
    return {"model_version": version, "previous": previous}
