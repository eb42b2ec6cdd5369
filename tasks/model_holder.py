"""One model per worker process, swapped when the registry's CURRENT pointer moves.

* prefork pool: `worker_process_init` loads the model in each pool child, after the fork (TensorFlow
  and CUDA do not survive a fork, so the parent process never imports them);
* solo / threads pool (no worker_process_init): the first task loads it, under a lock;
* every task calls `holder.get()`, which reads CURRENT (one small file) and, when it names another
  version, loads that one and swaps it in; the old model keeps serving if the new one fails to load,
  and the failed version is tried again after `Settings.model_retry_s` (RECSYS_MODEL_RETRY_S).

On every load the worker publishes the known customer ids and the model version to Redis
(`names.CUSTOMERS_KEY`), so the web front end can list them without loading TensorFlow, and
`GET /readyz` says ready only once a worker has loaded a model, naming that version. The worker writes
it again at most every `Settings.model_announce_s` while it serves tasks: a Redis restarted without
its data gets it back with the next task.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery.signals import worker_process_init

from ml.config import Settings, get_settings
from ml.registry import ModelRegistry
from tasks import names

log = logging.getLogger(__name__)


class NoModelPublished(RuntimeError):
    """The registry has no CURRENT model yet: train one (`python -m ml train --data DIR`)."""


@dataclass(frozen=True)
class Loaded:
    version: str
    model: Any


def _default_loader(path):
    # Imported here, never at module import: this pulls in TensorFlow.
    from ml.recommender import Recommender
    from tasks.gc_callbacks import drop_idle_jax_callback

    try:
        return Recommender.load(path)
    finally:  # TensorFlow is loaded now, also when the load failed: see tasks/gc_callbacks.py
        drop_idle_jax_callback()


class ModelHolder:
    def __init__(self, settings: Settings | None = None, loader: Callable[[Any], Any] | None = None) -> None:
        self._settings = settings
        self._loader = loader or _default_loader
        self._lock = threading.Lock()
        self._loaded: Loaded | None = None
        self._failed: dict[str, float] = {}
        self._pid = os.getpid()
        self._announced: tuple[str, float] | None = None  # (version, monotonic time) last published
        # one Redis client for the announcements, made on first use (after the fork): a client made
        # and dropped per announcement left its connection pool to be finalised at a random moment
        # later, and a soft time limit raised inside that finaliser was lost (README, "soft limit")
        self._redis = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = get_settings()
        return self._settings

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.settings.models_dir)

    @property
    def loaded_version(self) -> str | None:
        loaded = self._loaded
        return None if loaded is None else loaded.version

    def get(self) -> Loaded:
        """The live model (loading or swapping first when CURRENT changed)."""
        if os.getpid() != self._pid:  # forked after a load: never reuse a parent's model
            self._pid, self._loaded, self._lock, self._redis = os.getpid(), None, threading.Lock(), None
        current = self.registry.current_version()
        loaded = self._loaded
        if current is None:
            if loaded is not None:  # CURRENT removed: keep serving what we have
                return loaded
            raise NoModelPublished(
                f"no model published in {self.settings.models_dir} (train one: python -m ml train --data DIR)"
            )
        if loaded is not None and loaded.version == current:
            self._maybe_announce(loaded)
            return loaded
        with self._lock:
            loaded = self._loaded
            if loaded is not None and loaded.version == current:
                return loaded
            failed_at = self._failed.get(current)
            if (
                loaded is not None
                and failed_at
                and time.monotonic() - failed_at < self.settings.model_retry_s
            ):
                return loaded
            try:
                new = self._load(current)
            except Exception:
                self._failed[current] = time.monotonic()
                if loaded is None:
                    raise
                log.exception("loading model %s failed; still serving %s", current, loaded.version)
                return loaded
            self._failed.pop(current, None)
            self._loaded = new
            return new

    def _load(self, version: str) -> Loaded:
        path = self.registry.path_for(version)
        started = time.monotonic()
        log.info("loading model %s from %s (pid %s)", version, path, os.getpid())
        model = self._loader(path)
        loaded = Loaded(version=version, model=model)
        log.info("model %s loaded in %.1fs", version, time.monotonic() - started)
        self._publish_customers(loaded)
        return loaded

    def _maybe_announce(self, loaded: Loaded) -> None:
        announced = self._announced
        if (
            announced is None
            or announced[0] != loaded.version
            or time.monotonic() - announced[1] >= self.settings.model_announce_s
        ):
            self._publish_customers(loaded)

    def _publish_customers(self, loaded: Loaded) -> None:
        """Best effort: write the known customer ids and the version to Redis (GET /customers,
        GET /readyz)."""
        try:
            import redis

            customers = [str(c) for c in loaded.model.customers(names.PUBLISHED_CUSTOMERS)]
            payload = {
                "model_version": loaded.version,
                "customers": customers,
                "n_products": int(getattr(loaded.model, "n_products", 0) or 0),
                "published_at": time.time(),
            }
            if self._redis is None:
                self._redis = redis.Redis.from_url(
                    self.settings.redis_url, socket_connect_timeout=2, socket_timeout=5
                )
            self._redis.set(names.CUSTOMERS_KEY, json.dumps(payload))
            self._announced = (loaded.version, time.monotonic())
        except Exception:  # never let this break serving
            log.warning("could not publish the customer list to Redis", exc_info=True)

    def warm(self) -> None:
        """Load the current model now if there is one; log (never raise) otherwise."""
        try:
            self.get()
        except NoModelPublished as exc:
            log.warning("%s; tasks will fail until one is published", exc)
        except Exception:
            log.exception("could not load the current model; tasks will retry on demand")


holder = ModelHolder()


@worker_process_init.connect
def _load_in_pool_child(**_: Any) -> None:
    holder.warm()
