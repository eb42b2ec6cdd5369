"""The one configuration object, read from environment variables with sane defaults.

Every role (library, worker, web, the `make run` launcher, Docker) reads its settings here, so a
value has one name and one default. Paths are resolved against the repository root.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _path(name: str, default: Path) -> Path:
    return Path(_env(name, str(default))).expanduser().resolve()


@dataclass(frozen=True)
class Settings:
    """Runtime settings. Build with `Settings.from_env()`; tests pass overrides explicitly."""

    var_dir: Path = REPO_ROOT / "var"
    # Versioned model artifacts live in models_dir/<version>/; models_dir/CURRENT names the live one.
    models_dir: Path = REPO_ROOT / "var" / "models"
    # Embedding cache, converted weights, downloaded images.
    cache_dir: Path = REPO_ROOT / "var" / "cache"
    # Cached embedding rows re-encoded per modality and run to check the cache (0: trust it blindly).
    cache_verify_sample: int = 4
    # The demo "fashion world" (synthetic) built by `make run` when no data is given.
    demo_data_dir: Path = REPO_ROOT / "var" / "demo-world"
    redis_url: str = "redis://127.0.0.1:6379/0"
    result_expires_s: int = 3600
    job_registry_ttl_s: int = 24 * 3600
    task_soft_time_limit_s: int = 60
    task_time_limit_s: int = 90
    train_soft_time_limit_s: int = 3600
    train_time_limit_s: int = 3900
    # How long GET /recommendation waits for its job before answering 202.
    sync_wait_s: float = 5.0
    # GET /jobs/<id>?wait=N: the longest long-poll a client may ask for (a request holds a web thread).
    job_wait_max_s: float = 30.0
    web_host: str = "127.0.0.1"
    web_port: int = 5000
    flower_port: int = 5555
    flower_user: str = ""
    flower_password: str = ""
    worker_concurrency: int = 1
    max_top: int = 100
    max_batch: int = 1000
    # Service additions (tasks/, web/, scripts/run_stack.py):
    # Celery prefork pool: how long a pool child may take in worker_process_init (model load) before
    # the parent kills it (Celery's default, 4 s, is too short for TensorFlow + a model).
    worker_init_timeout_s: float = 300.0
    # Worker pool for the launcher's worker: prefork (default), solo or threads.
    worker_pool: str = "prefork"
    # GET /readyz: how long to wait for a worker to answer a ping.
    readyz_timeout_s: float = 1.0
    # gunicorn (gthread) processes and threads per process for the web app.
    web_workers: int = 2
    web_threads: int = 4
    # Serving above exact_max_products products is two-stage: retrieval_k candidates from the
    # artifact's two-tower index (ml.retrieval), reranked by the heads; at or below it, exact.
    retrieval_k: int = 1000
    exact_max_products: int = 20000
    # After a model version failed to load, a worker keeps serving the old one and retries the new
    # one no sooner than this many seconds later.
    model_retry_s: float = 30.0
    # Fault handling (docs/SERVICE.md, "Faults"):
    # Redis broker visibility timeout: a message a worker took but did not acknowledge (acks_late:
    # until the task has run) goes back to its queue this many seconds after delivery when no ack
    # came, e.g. because the worker's main process was killed. It must be longer than any task can
    # run on a live worker (the hard limit task_time_limit_s; training is acknowledged on receipt),
    # or a running task is delivered a second time (celery #5935); celery_config refuses a shorter
    # one. A message also waits, taken, while a new pool child loads the model (up to
    # worker_init_timeout_s), hence 600 = 300 + 90 + margin.
    broker_visibility_timeout_s: int = 600
    # How often each worker sweeps the unacked index for messages past their visibility timeout
    # (kombu's unacked_restore_interval with throttle 1): the delay after the timeout.
    broker_restore_interval_s: int = 5
    # The embedded Redis (scripts/procs.start_redis): append-only file under var/redis/, fsync
    # "always" (a 202 is answered after the job's message is on disk: a crash loses no accepted
    # job) or "everysec" (faster; a crash can lose the last second of accepted jobs).
    redis_appendfsync: str = "always"
    # The embedded Redis password, generated at the first run, kept in this file (mode 0600); the
    # launcher puts it into the REDIS_URL its children get.
    redis_password_file: Path = REPO_ROOT / "var" / "redis" / "password"
    # The worker re-writes the published-model key (names.CUSTOMERS_KEY, what /readyz reads) at
    # most this often while it serves, so a Redis that lost it (no persistence) gets it back.
    model_announce_s: float = 60.0

    @classmethod
    def from_env(cls) -> "Settings":
        var_dir = _path("RECSYS_VAR_DIR", REPO_ROOT / "var")
        return cls(
            var_dir=var_dir,
            models_dir=_path("RECSYS_MODELS_DIR", var_dir / "models"),
            cache_dir=_path("RECSYS_CACHE_DIR", var_dir / "cache"),
            cache_verify_sample=int(_env("RECSYS_CACHE_VERIFY_SAMPLE", "4")),
            demo_data_dir=_path("RECSYS_DEMO_DATA_DIR", var_dir / "demo-world"),
            redis_url=_env("REDIS_URL", "redis://127.0.0.1:6379/0"),
            result_expires_s=int(_env("RECSYS_RESULT_EXPIRES_S", "3600")),
            job_registry_ttl_s=int(_env("RECSYS_JOB_TTL_S", str(24 * 3600))),
            task_soft_time_limit_s=int(_env("RECSYS_TASK_SOFT_LIMIT_S", "60")),
            task_time_limit_s=int(_env("RECSYS_TASK_HARD_LIMIT_S", "90")),
            train_soft_time_limit_s=int(_env("RECSYS_TRAIN_SOFT_LIMIT_S", "3600")),
            train_time_limit_s=int(_env("RECSYS_TRAIN_HARD_LIMIT_S", "3900")),
            sync_wait_s=float(_env("RECSYS_SYNC_WAIT_S", "5")),
            job_wait_max_s=float(_env("RECSYS_JOB_WAIT_MAX_S", "30")),
            web_host=_env("RECSYS_WEB_HOST", "127.0.0.1"),
            web_port=int(_env("RECSYS_WEB_PORT", "5000")),
            flower_port=int(_env("RECSYS_FLOWER_PORT", "5555")),
            flower_user=_env("FLOWER_USER", ""),
            flower_password=_env("FLOWER_PASSWORD", ""),
            worker_concurrency=int(_env("RECSYS_WORKER_CONCURRENCY", "1")),
            max_batch=int(_env("RECSYS_MAX_BATCH", "1000")),
            worker_init_timeout_s=float(_env("RECSYS_WORKER_INIT_TIMEOUT_S", "300")),
            worker_pool=_env("RECSYS_WORKER_POOL", "prefork"),
            readyz_timeout_s=float(_env("RECSYS_READYZ_TIMEOUT_S", "1")),
            web_workers=int(_env("RECSYS_WEB_WORKERS", "2")),
            web_threads=int(_env("RECSYS_WEB_THREADS", "4")),
            retrieval_k=int(_env("RECSYS_RETRIEVAL_K", "1000")),
            exact_max_products=int(_env("RECSYS_EXACT_MAX_PRODUCTS", "20000")),
            model_retry_s=float(_env("RECSYS_MODEL_RETRY_S", "30")),
            broker_visibility_timeout_s=int(_env("RECSYS_BROKER_VISIBILITY_TIMEOUT_S", "600")),
            broker_restore_interval_s=int(_env("RECSYS_BROKER_RESTORE_INTERVAL_S", "5")),
            redis_appendfsync=_env("RECSYS_REDIS_APPENDFSYNC", "always"),
            redis_password_file=_path("RECSYS_REDIS_PASSWORD_FILE", var_dir / "redis" / "password"),
            model_announce_s=float(_env("RECSYS_MODEL_ANNOUNCE_S", "60")),
        )


def get_settings() -> Settings:
    """Settings from the current environment (read each call, so tests can change env)."""
    return Settings.from_env()
