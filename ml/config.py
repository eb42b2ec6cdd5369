"""The one configuration object, read from environment variables with sane defaults.

Every role (library, worker, web, the `make run` launcher, Docker) reads its settings here, so a
value has one name and one default. Paths are resolved against the repository root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which a container or taskset narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _setting(env: str, default, under_var: str = ""):
    """A settings field read from the environment variable `env`; `under_var`: a path that defaults
    to that sub-path of `var_dir` (so RECSYS_VAR_DIR moves every such path at once)."""
    return field(default=default, metadata={"env": env, "under_var": under_var})


def _path(raw: str) -> Path:
    return Path(raw).expanduser().resolve()


# How a field's annotation (a string: `from __future__ import annotations`) parses its variable.
_PARSE = {"Path": _path, "int": int, "float": float, "str": str}
_KIND = {"Path": "a path", "int": "an integer", "float": "a number", "str": "a string"}


@dataclass(frozen=True)
class Settings:
    """Runtime settings. Build with `Settings.from_env()`; tests pass overrides explicitly."""

    var_dir: Path = _setting("RECSYS_VAR_DIR", REPO_ROOT / "var")
    # Versioned model artifacts live in models_dir/<version>/; models_dir/CURRENT names the live one.
    models_dir: Path = _setting("RECSYS_MODELS_DIR", REPO_ROOT / "var" / "models", under_var="models")
    # Embedding cache, converted weights, downloaded images.
    cache_dir: Path = _setting("RECSYS_CACHE_DIR", REPO_ROOT / "var" / "cache", under_var="cache")
    # Cached embedding rows re-encoded per modality and run to check the cache (0: trust it blindly).
    cache_verify_sample: int = _setting("RECSYS_CACHE_VERIFY_SAMPLE", 4)
    # How the pretrained image and text encoders run (ml.encoders.lite): "tflite" (TFLite's XNNPACK
    # kernels, ~1.2-2x Keras on a CPU; TensorFlow backend only), "keras", or "auto" (tflite where it can).
    encoder_runtime: str = _setting("RECSYS_ENCODER_RUNTIME", "auto")
    # The text encoder's TFLite weights for product texts (the catalog's content vectors: never-rated
    # products, live feedback): "float32" (equal to the Keras network to 1e-5) or "int8"
    # (dynamic-range quantised: int8 weights, activations quantised per batch; 2.5-3x the float32
    # rate on this CPU, unit vectors at cosine min 0.9947, mean 0.9985 to float32's on 512 real
    # reviews; opt-in: on the synthetic world live feedback moved a new customer's kind up for 74,
    # 87, 89 of 90 category pairs over three training seeds against 90, 90, 86 with float32, see
    # docs/HISTORY.md, sessions 15 and 21). The Keras runtime is always float32. The two are cached
    # under different versions.
    text_precision: str = _setting("RECSYS_TEXT_PRECISION", "float32")
    # The same for review texts, int8 by default: a review's vector is only ever averaged, after PCA,
    # into its customer's and its product's profile (ml.features), where int8's error is far below
    # the spread of the reviews averaged; reviews are most of a catalog's texts (28,818 of 38,808 in
    # the 10k bench world, 2.0-2.6x the float32 rate there). See docs/HISTORY.md, session 21.
    review_text_precision: str = _setting("RECSYS_REVIEW_TEXT_PRECISION", "int8")
    # The image encoder's TFLite weights: "int8" (full-integer: weights and activations, activation
    # ranges calibrated on a fixed batch of drawn scenes, `ml.encoders.image.calibration_images`;
    # 2.4-3.3x the float32 network's rate on this CPU; on real photos features at cosine mean 0.995
    # to float32's and neighbours as good; on the synthetic world's renders a weaker response to
    # live feedback, see docs/HISTORY.md, session 24) or "float32" (the Keras network to 1e-5). The Keras
    # runtime is always float32. The two are cached under different versions.
    image_precision: str = _setting("RECSYS_IMAGE_PRECISION", "int8")
    # The demo "fashion world" (synthetic) built by `make run` when no data is given.
    demo_data_dir: Path = _setting(
        "RECSYS_DEMO_DATA_DIR", REPO_ROOT / "var" / "demo-world", under_var="demo-world"
    )
    redis_url: str = _setting("REDIS_URL", "redis://127.0.0.1:6379/0")
    result_expires_s: int = _setting("RECSYS_RESULT_EXPIRES_S", 3600)
    job_registry_ttl_s: int = _setting("RECSYS_JOB_TTL_S", 24 * 3600)
    task_soft_time_limit_s: int = _setting("RECSYS_TASK_SOFT_LIMIT_S", 60)
    task_time_limit_s: int = _setting("RECSYS_TASK_HARD_LIMIT_S", 90)
    train_soft_time_limit_s: int = _setting("RECSYS_TRAIN_SOFT_LIMIT_S", 3600)
    train_time_limit_s: int = _setting("RECSYS_TRAIN_HARD_LIMIT_S", 3900)
    # How long GET /recommendation waits for its job before answering 202.
    sync_wait_s: float = _setting("RECSYS_SYNC_WAIT_S", 5.0)
    # GET /jobs/<id>?wait=N: the longest long-poll a client may ask for (a request holds a web thread).
    job_wait_max_s: float = _setting("RECSYS_JOB_WAIT_MAX_S", 30.0)
    web_host: str = _setting("RECSYS_WEB_HOST", "127.0.0.1")
    web_port: int = _setting("RECSYS_WEB_PORT", 5000)
    flower_port: int = _setting("RECSYS_FLOWER_PORT", 5555)
    flower_user: str = _setting("FLOWER_USER", "")
    flower_password: str = _setting("FLOWER_PASSWORD", "")
    worker_concurrency: int = _setting("RECSYS_WORKER_CONCURRENCY", 1)
    max_top: int = _setting("RECSYS_MAX_TOP", 100)
    max_batch: int = _setting("RECSYS_MAX_BATCH", 1000)
    # Service additions (tasks/, web/, scripts/run_stack.py):
    # Celery prefork pool: how long a pool child may take in worker_process_init (model load) before
    # the parent kills it (Celery's default, 4 s, is too short for TensorFlow + a model).
    worker_init_timeout_s: float = _setting("RECSYS_WORKER_INIT_TIMEOUT_S", 300.0)
    # Worker pool for the launcher's worker: prefork (default), solo or threads.
    worker_pool: str = _setting("RECSYS_WORKER_POOL", "prefork")
    # GET /readyz: how long to wait for a worker to answer a ping.
    readyz_timeout_s: float = _setting("RECSYS_READYZ_TIMEOUT_S", 1.0)
    # gunicorn (gthread) processes and threads per process for the web app.
    web_workers: int = _setting("RECSYS_WEB_WORKERS", 2)
    web_threads: int = _setting("RECSYS_WEB_THREADS", 4)
    # Serving above exact_max_products products is two-stage: retrieval_k candidates from the
    # artifact's two-tower index (ml.retrieval), reranked by the heads; at or below it, exact.
    retrieval_k: int = _setting("RECSYS_RETRIEVAL_K", 1000)
    exact_max_products: int = _setting("RECSYS_EXACT_MAX_PRODUCTS", 20000)
    # Threads a batch job (recommend_many) spreads its chunks of customers over, each on one CPU;
    # 0: the CPUs the worker process may run on. With several pool processes per worker
    # (RECSYS_WORKER_CONCURRENCY), CPUs / concurrency keeps their batch jobs from crowding each other.
    batch_threads: int = _setting("RECSYS_BATCH_THREADS", 0)
    # After a model version failed to load, a worker keeps serving the old one and retries the new
    # one no sooner than this many seconds later.
    model_retry_s: float = _setting("RECSYS_MODEL_RETRY_S", 30.0)
    # Fault handling (docs/SERVICE.md, "Faults"):
    # Redis broker visibility timeout: a message a worker took but did not acknowledge (acks_late:
    # until the task has run) goes back to its queue this many seconds after delivery when no ack
    # came, e.g. because the worker's main process was killed. It must be longer than any task can
    # run on a live worker (the hard limit task_time_limit_s; training is acknowledged on receipt),
    # or a running task is delivered a second time (celery #5935); celery_config refuses a shorter
    # one. A message also waits, taken, while a new pool child loads the model (up to
    # worker_init_timeout_s), hence 600 = 300 + 90 + margin.
    broker_visibility_timeout_s: int = _setting("RECSYS_BROKER_VISIBILITY_TIMEOUT_S", 600)
    # How often each worker sweeps the unacked index for messages past their visibility timeout
    # (kombu's unacked_restore_interval with throttle 1): the delay after the timeout.
    broker_restore_interval_s: int = _setting("RECSYS_BROKER_RESTORE_INTERVAL_S", 5)
    # The embedded Redis (scripts/procs.start_redis): append-only file under var/redis/, fsync
    # "always" (a 202 is answered after the job's message is on disk: a crash loses no accepted
    # job) or "everysec" (faster; a crash can lose the last second of accepted jobs).
    redis_appendfsync: str = _setting("RECSYS_REDIS_APPENDFSYNC", "always")
    # The embedded Redis password, generated at the first run, kept in this file (mode 0600); the
    # launcher puts it into the REDIS_URL its children get.
    redis_password_file: Path = _setting(
        "RECSYS_REDIS_PASSWORD_FILE", REPO_ROOT / "var" / "redis/password", under_var="redis/password"
    )
    # The worker re-writes the published-model key (names.CUSTOMERS_KEY, what /readyz reads) at
    # most this often while it serves, so a Redis that lost it (no persistence) gets it back.
    model_announce_s: float = _setting("RECSYS_MODEL_ANNOUNCE_S", 60.0)
    # Model management (POST/GET /models, POST /models/<version>/publish): the bearer token an
    # operator sends; empty (the default): those routes are off and answer 503.
    admin_token: str = _setting("RECSYS_ADMIN_TOKEN", "")
    # POST /models trains only from data under this directory or the demo world's; a relative
    # data_path is taken under it (Settings.training_data_path).
    data_dir: Path = _setting("RECSYS_DATA_DIR", REPO_ROOT / "var" / "data", under_var="data")
    # Live feedback (POST /feedback): every rating is appended here (JSON lines), and training reads
    # it with its data; the Redis stream the workers fold in from keeps about this many entries.
    feedback_file: Path = _setting(
        "RECSYS_FEEDBACK_FILE",
        REPO_ROOT / "var" / "feedback" / "feedback.jsonl",
        under_var="feedback/feedback.jsonl",
    )
    feedback_stream_max: int = _setting("RECSYS_FEEDBACK_STREAM_MAX", 1_000_000)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `environ` (default: the process environment); an unset or empty variable
        takes the default, a path under `var_dir` follows RECSYS_VAR_DIR. A value that does not
        parse is a ValueError naming the variable."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"], "")
            if raw == "":
                under = f.metadata.get("under_var")
                values[f.name] = values["var_dir"] / under if under else f.default
                continue
            try:
                values[f.name] = _PARSE[f.type](raw)
            except ValueError:
                raise ValueError(f"{f.metadata['env']}={raw!r}: expected {_KIND[f.type]}") from None
        return cls(**values)

    def __post_init__(self) -> None:
        if self.batch_threads < 0:
            raise ValueError(f"RECSYS_BATCH_THREADS={self.batch_threads}: expected 0 (every CPU) or more")

    def training_data_path(self, raw: str) -> Path:
        """Where a training request's `data_path` points: relative to data_dir, or absolute; after
        resolving `..` and links it must lie in data_dir or demo_data_dir (ValueError otherwise), so
        an API client cannot make a worker read arbitrary files. Whether it exists is not checked."""
        if not isinstance(raw, str) or not raw.strip() or "\x00" in raw or len(raw) > 1024:
            raise ValueError("data_path must be a non-empty path of at most 1024 characters")
        path = (self.data_dir / Path(raw).expanduser()).resolve()
        roots = [Path(self.data_dir).resolve(), Path(self.demo_data_dir).resolve()]
        if not any(path == root or root in path.parents for root in roots):
            raise ValueError(f"data_path must lie under {self.data_dir} or {self.demo_data_dir}")
        return path

    def to_env(self) -> dict[str, str]:
        """Every setting as the environment variable that gives it back (`from_env(s.to_env()) == s`):
        how a launcher or a test hands its settings to a child process."""
        return {f.metadata["env"]: str(getattr(self, f.name)) for f in fields(self)}


def get_settings() -> Settings:
    """Settings from the current environment (read each call, so tests can change env)."""
    return Settings.from_env()
