"""tasks/: the Celery configuration, the per-process model holder, and the tasks run by a real
prefork worker (subprocess) against a real Redis and a real small model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from celery.exceptions import TimeoutError as CeleryTimeout

from ml.config import REPO_ROOT
from ml.registry import ModelRegistry
from support import outcome, result_of
from tasks import errors, names
from tasks.celery_app import make_celery
from tasks.model_holder import ModelHolder, NoModelPublished
from tasks.recommend import (
    check_customer_id,
    check_filters,
    check_product_id,
    check_top,
    jsonable,
    recommend_one,
)

# ---------------------------------------------------------------- configuration (no worker)


def test_celery_config_is_json_only_and_reliable(settings):
    conf = make_celery(settings).conf
    assert conf.broker_url == settings.redis_url and conf.result_backend == settings.redis_url
    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert conf.task_serializer == "json" and conf.result_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert not conf.task_track_started and conf.task_annotations[names.TRAIN]["track_started"]
    assert not conf.worker_send_task_events and not conf.task_send_sent_event
    assert conf.result_expires == settings.result_expires_s
    assert conf.task_soft_time_limit == settings.task_soft_time_limit_s
    assert conf.task_time_limit == settings.task_time_limit_s
    assert conf.task_annotations[names.TRAIN]["time_limit"] == settings.train_time_limit_s
    assert conf.broker_connection_retry_on_startup
    assert conf.worker_proc_alive_timeout == settings.worker_init_timeout_s
    assert {q.name for q in conf.task_queues} == {"inference", "training"}


@pytest.mark.parametrize(
    "task, queue",
    [
        (names.RECOMMEND, "inference"),
        (names.RECOMMEND_BATCH, "inference"),
        (names.CUSTOMERS, "inference"),
        (names.SIMILAR, "inference"),
        (names.TRAIN, "training"),
    ],
)
def test_routes(settings, task, queue):
    route = make_celery(settings).amqp.router.route({}, task)
    assert route["queue"].name == queue


def test_importing_tasks_and_web_does_not_load_tensorflow():
    """The worker's parent process and the web app never import TensorFlow (nor tasks/ Flask), and
    the task modules import without numpy/pandas: Flower (in the web image, requirements/web.txt,
    which has neither) imports them; a module-level `from ml.catalog import ...` in tasks/recommend.py
    put Flower into a restart loop in the Docker stack."""
    code = (
        "import sys\n"
        "from tasks.celery_app import app\n"
        "app.loader.import_default_modules()\n"
        "heavy = lambda: sorted(m for m in ('tensorflow', 'keras', 'flask', 'numpy', 'pandas', 'scipy')"
        " if m in sys.modules)\n"
        "print(heavy())\n"
        "import web; web.create_app()\n"
        "print(heavy())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "['flask']"]


def test_tasks_package_never_imports_flask():
    for path in (REPO_ROOT / "tasks").glob("*.py"):
        text = path.read_text()
        assert "import flask" not in text.lower() and "from flask" not in text.lower(), path


# ---------------------------------------------------------------- validation helpers


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "é", "a\n", None, 5, ["a"]])
def test_check_customer_id_rejects(bad):
    with pytest.raises(errors.TaskFailure) as caught:
        check_customer_id(bad)
    assert caught.value.code == errors.INVALID_INPUT


@pytest.mark.parametrize("bad", [0, 101, -1, True, 1.5, "10", None])
def test_check_top_rejects(bad):
    with pytest.raises(errors.TaskFailure) as caught:
        check_top(bad, 100)
    assert caught.value.code == errors.INVALID_INPUT


@pytest.mark.parametrize(
    "bad",
    [
        "x",
        [],
        {"colour": "red"},
        {"category": ""},
        {"category": " > "},
        {"category": 5},
        {"category": "x" * 201},
        {"max_price": "10"},
        {"max_price": True},
        {"max_price": -1},
        {"max_price": float("nan")},
    ],
)
def test_check_filters_rejects(bad):
    with pytest.raises(errors.TaskFailure) as caught:
        check_filters(bad)
    assert caught.value.code == errors.INVALID_INPUT


def test_check_filters_accepts():
    assert check_filters(None) is None and check_filters({}) is None
    assert check_filters({"category": None, "max_price": None}) is None
    found = check_filters({"category": "A > B", "max_price": 20})
    assert (found.category, found.max_price) == ("A > B", 20.0)


@pytest.mark.parametrize("bad", ["", "x" * 129, "a\nb", "a\x00", None, 3])
def test_check_product_id_rejects(bad):
    with pytest.raises(errors.TaskFailure) as caught:
        check_product_id(bad)
    assert caught.value.code == errors.INVALID_INPUT


def test_jsonable_converts_numpy():
    np = pytest.importorskip("numpy")
    value = {
        "a": np.float32(1.5),
        "b": np.int64(3),
        "c": np.array([1, 2]),
        "d": Path("/x"),
        "e": float("nan"),
        "f": (np.bool_(True),),
    }
    assert jsonable(value) == {"a": 1.5, "b": 3, "c": [1, 2], "d": "/x", "e": None, "f": [True]}
    json.dumps(jsonable(value))


# ---------------------------------------------------------------- model holder (in process)


class _Loads:
    """Counts loads (`attempts`: every call, `paths`: the ones that succeeded); `fail` makes loads raise."""

    def __init__(self):
        self.paths: list[Path] = []
        self.attempts: list[str] = []
        self.fail = False

    def __call__(self, path):
        self.attempts.append(Path(path).name)
        if self.fail:
            raise RuntimeError("corrupt artifact")
        self.paths.append(Path(path))
        return {"path": Path(path)}


def _publish_copy(models_dir: Path, version: str) -> None:
    (models_dir / version).mkdir(parents=True)
    (models_dir / version / "manifest.json").write_text(json.dumps({"version": version}))
    ModelRegistry(models_dir).publish(version)


def test_holder_no_model_then_lazy_load_then_swap(tmp_path, base_settings):
    models = tmp_path / "models"
    loads = _Loads()
    holder = ModelHolder(replace(base_settings, models_dir=models, redis_url="redis://127.0.0.1:1/0"), loads)
    with pytest.raises(NoModelPublished, match="no model published"):
        holder.get()
    holder.warm()  # logs, never raises
    _publish_copy(models, "v1")
    assert holder.loaded_version is None  # lazy: nothing loaded until asked
    assert holder.get().version == "v1" and holder.get().version == "v1"
    assert len(loads.paths) == 1  # loaded once, reused
    _publish_copy(models, "v2")
    assert holder.get().version == "v2"  # CURRENT moved: swapped without a restart
    assert [p.name for p in loads.paths] == ["v1", "v2"]


def test_holder_keeps_serving_when_new_version_fails_to_load(tmp_path, base_settings):
    models = tmp_path / "models"
    loads = _Loads()
    holder = ModelHolder(
        replace(base_settings, models_dir=models, redis_url="redis://127.0.0.1:1/0", model_retry_s=3600.0),
        loads,
    )
    _publish_copy(models, "v1")
    assert holder.get().version == "v1"
    loads.fail = True
    _publish_copy(models, "v2")
    assert [holder.get().version for _ in range(5)] == ["v1"] * 5
    assert loads.attempts == ["v1", "v2"]  # v2 tried once, not on every task, within the back-off
    loads.fail = False
    assert holder.get().version == "v1"  # fixed, but the back-off has not passed
    assert loads.attempts == ["v1", "v2"]


def test_holder_retries_a_failed_version_after_the_back_off(tmp_path, base_settings):
    models = tmp_path / "models"
    loads = _Loads()
    holder = ModelHolder(
        replace(base_settings, models_dir=models, redis_url="redis://127.0.0.1:1/0", model_retry_s=0.0), loads
    )
    _publish_copy(models, "v1")
    holder.get()
    loads.fail = True
    _publish_copy(models, "v2")
    assert [holder.get().version for _ in range(3)] == ["v1"] * 3
    assert loads.attempts == ["v1", "v2", "v2", "v2"]  # no back-off: tried on every task
    loads.fail = False
    assert holder.get().version == "v2"
    assert [p.name for p in loads.paths] == ["v1", "v2"]


def test_retry_back_off_comes_from_the_environment(monkeypatch):
    from ml.config import Settings

    monkeypatch.setenv("RECSYS_MODEL_RETRY_S", "2.5")
    assert Settings.from_env().model_retry_s == 2.5
    monkeypatch.delenv("RECSYS_MODEL_RETRY_S")
    assert Settings.from_env().model_retry_s == Settings().model_retry_s == 30.0


def test_holder_publishes_customers_to_redis(tmp_path, settings, models_dir, first_version):
    import redis

    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.delete(names.CUSTOMERS_KEY)
    holder = ModelHolder(replace(settings, models_dir=models_dir))
    loaded = holder.get()
    published = json.loads(client.get(names.CUSTOMERS_KEY))
    assert published["model_version"] == loaded.version
    assert published["customers"] == loaded.model.customers(names.PUBLISHED_CUSTOMERS)
    assert published["customers"], "the model knows customers"


def test_loading_a_model_drops_the_idle_jax_gc_callback(settings, models_dir, first_version, jax_gc_callback):
    import gc

    ModelHolder(replace(settings, models_dir=models_dir)).get()  # the real loader: tasks/gc_callbacks.py
    assert jax_gc_callback not in gc.callbacks


def test_training_drops_the_idle_jax_gc_callback_first(world_dir, jax_gc_callback, monkeypatch):
    import gc

    import ml.train
    import tasks.training

    seen = []

    def stop(*args, **kwargs):
        seen.append(jax_gc_callback in gc.callbacks)
        raise RuntimeError("stop before training")

    monkeypatch.setattr(ml.train, "train_model", stop)
    monkeypatch.setattr(tasks.training, "training_data", Path)  # (the world lies outside data_dir)
    with pytest.raises(RuntimeError, match="stop before training"):
        tasks.training.train_and_publish(str(world_dir), epochs=1, publish=False)
    assert seen == [False]


def test_recommend_one_with_the_real_model(settings, models_dir, known_customers):
    model = ModelHolder(replace(settings, models_dir=models_dir)).get().model
    result = recommend_one(model, known_customers[0], 5)
    json.dumps(result)
    assert result["customer_id"] == known_customers[0] and result["cold_start"] is False
    ids = [item["product_id"] for item in result["items"]]
    assert len(ids) == 5 == len(set(ids))
    assert {"product_id", "score", "predicted_rating", "title", "image", "cold_start", "strategy"} <= set(
        result["items"][0]
    )
    cold = recommend_one(model, "never-seen-customer", 3)
    assert cold["cold_start"] is True and len(cold["items"]) == 3


# ---------------------------------------------------------------- tasks run by a real worker


@pytest.mark.service
def test_recommend_task(worker, celery_client, models_dir, known_customers):
    result = result_of(celery_client.send_task(names.RECOMMEND, args=[known_customers[1], 7]), 60)
    assert result["customer_id"] == known_customers[1]
    assert result["model_version"] == ModelRegistry(models_dir).current_version()
    assert result["cold_start"] is False and result["top"] == 7
    ids = [item["product_id"] for item in result["items"]]
    assert len(ids) == 7 == len(set(ids))


@pytest.mark.service
def test_recommend_batch_task(worker, celery_client, known_customers):
    ids = known_customers[:3] + ["brand-new-customer"]
    result = result_of(celery_client.send_task(names.RECOMMEND_BATCH, args=[ids, 4]), 60)
    assert [r["customer_id"] for r in result["results"]] == ids
    assert [r["cold_start"] for r in result["results"]] == [False, False, False, True]
    assert all(len(r["items"]) == 4 for r in result["results"])
    assert result["count"] == 4 and result["model_version"]


@pytest.mark.service
def test_customers_task(worker, celery_client, known_customers):
    result = result_of(celery_client.send_task(names.CUSTOMERS, args=[5]), 60)
    assert result["customers"] == known_customers[:5]


def _shoes(world_dir: Path) -> tuple[str, set[str]]:
    """A category prefix of the session's world and its products, read from the world's meta file."""
    inside = set()
    for line in (world_dir / "meta_Amazon_Fashion.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["categories"][:2] == ["Clothing, Shoes & Jewelry", "Shoes"]:
            inside.add(rec["parent_asin"])
    assert inside, "the test world has shoes"
    return "Clothing, Shoes & Jewelry > Shoes", inside


@pytest.mark.service
def test_recommend_tasks_filter_and_give_reasons(worker, celery_client, world_dir, known_customers):
    category, shoes = _shoes(world_dir)
    filters = {"category": category, "max_price": 1000}
    result = result_of(celery_client.send_task(names.RECOMMEND, args=[known_customers[0], 3, filters]), 60)
    assert result["filters"] == filters and len(result["items"]) == 3
    assert {x["product_id"] for x in result["items"]} <= shoes
    assert all(x["because"]["method"] == "content_similarity" for x in result["items"])
    ids = [known_customers[1], "brand-new-customer"]
    batch = result_of(celery_client.send_task(names.RECOMMEND_BATCH, args=[ids, 2, filters]), 60)
    assert batch["filters"] == filters
    for r in batch["results"]:
        assert len(r["items"]) == 2 and {x["product_id"] for x in r["items"]} <= shoes
    assert [x["because"]["method"] for x in batch["results"][1]["items"]] == ["popular", "popular"]
    plain = result_of(celery_client.send_task(names.RECOMMEND, args=[known_customers[0], 3]), 60)
    assert "filters" not in plain and all("because" in x for x in plain["items"])


@pytest.mark.service
def test_similar_task(worker, celery_client, known_customers, models_dir):
    from ml.recommender import Recommender

    rec = Recommender.load(ModelRegistry(models_dir).current_path())
    pid = str(rec.tables.product_ids[3])
    result = result_of(celery_client.send_task(names.SIMILAR, args=[pid, 4]), 60)
    assert result["product_id"] == pid and result["title"] == rec.title(pid)
    assert result["method"] == "content_cosine" and result["modalities"] == ["image", "text"]
    assert [x["product_id"] for x in result["items"]] == [x["product_id"] for x in rec.similar(pid, 4)]
    assert result["top"] == 4 and result["model_version"] == rec.version


@pytest.mark.service
@pytest.mark.parametrize(
    "task, args, code",
    [
        (names.SIMILAR, ["NO-SUCH-PRODUCT", 3], errors.NOT_FOUND),
        (names.RECOMMEND, ["someone", 3, {"category": "No Such > Category"}], errors.INVALID_INPUT),
        (names.RECOMMEND_BATCH, [["someone"], 3, {"category": "No Such > Category"}], errors.INVALID_INPUT),
        (names.RECOMMEND, ["someone", 3, {"max_price": "cheap"}], errors.INVALID_INPUT),
    ],
)
def test_unknown_product_or_category_fails_with_its_code(worker, celery_client, task, args, code):
    res = celery_client.send_task(task, args=args)
    with pytest.raises(Exception) as caught:
        result_of(res, 60)
    assert errors.failure_code(caught.value) == code


@pytest.mark.service
def test_invalid_arguments_fail_the_task(worker, celery_client):
    """The worker sets the code; it reaches a result reader in the exception's args (JSON)."""
    res = celery_client.send_task(names.RECOMMEND, args=["bad id!", 5])
    with pytest.raises(Exception, match="invalid customer_id") as caught:
        result_of(res, 60)
    assert res.state == "FAILURE"
    assert errors.failure_code(caught.value) == errors.INVALID_INPUT
    assert errors.failure_message(caught.value).startswith("invalid customer_id")


@pytest.mark.service
def test_worker_refuses_pickle(worker, celery_client, known_customers):
    """A pickle-serialised message is never executed (accept_content is JSON only)."""
    res = celery_client.send_task(names.RECOMMEND, args=[known_customers[0], 3], serializer="pickle")
    refused = "refusing to deserialize untrusted content of type pickle"
    deadline = time.monotonic() + 20
    while refused not in worker.log().lower() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert refused in worker.log().lower()
    with pytest.raises(CeleryTimeout):
        result_of(res, 0.5)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.service
def test_model_loads_in_the_pool_child_not_in_the_parent(worker):
    """TensorFlow is mapped in the prefork child (worker_process_init) and never in the parent."""
    parent = worker.proc.pid
    children = _children(parent)
    assert children, "the prefork pool has a child"
    assert "tensorflow" not in _maps(parent)
    assert any("tensorflow" in _maps(child) for child in children)
    log = worker.log()
    loads = [line for line in log.splitlines() if "loading model" in line]
    assert loads and all(f"(pid {parent})" not in line for line in loads)


# Training, listing and publishing through the API (and the swap without a restart):
# tests/test_web_models.py.


@pytest.mark.service
@pytest.mark.parametrize(
    "data_path, code",
    [
        ("nope", errors.NOT_FOUND),  # under the data directory, but nothing there
        ("../../etc", errors.INVALID_INPUT),  # outside every allowed directory
        ("/etc", errors.INVALID_INPUT),
        ("", errors.INVALID_INPUT),
    ],
)
def test_train_task_refuses_bad_data_paths_cleanly(worker, celery_client, models_dir, data_path, code):
    before = ModelRegistry(models_dir).versions()
    with pytest.raises(Exception) as caught:
        result_of(celery_client.send_task(names.TRAIN, args=[data_path]), 60)
    assert errors.failure_code(caught.value) == code, repr(caught.value)
    assert ModelRegistry(models_dir).versions() == before


# ---------------------------------------------------------------- a worker with no model published

# The module's own worker runs with short limits, so expiry, time limits and the load back-off can be
# watched happening (every other test only sees these values in the configuration). Every real task
# stops at its soft limit (SoftTimeLimitExceeded), so none reaches the hard kill: tests/test_time_limits.py
# watches the hard limit with a task that ignores its soft one.
SHORT = {
    "result_expires_s": 4,
    "job_registry_ttl_s": 8,
    "train_soft_time_limit_s": 1,
    "train_time_limit_s": 3,
    "model_retry_s": 4.0,
}
SHORT_ENV = {
    "RECSYS_RESULT_EXPIRES_S": "4",
    "RECSYS_JOB_TTL_S": "8",
    "RECSYS_TRAIN_SOFT_LIMIT_S": "1",
    "RECSYS_TRAIN_HARD_LIMIT_S": "3",
    "RECSYS_MODEL_RETRY_S": "4",
}


@pytest.fixture(scope="module")
def empty_service(tmp_path_factory, base_settings):
    """Its own Redis and an EMPTY registry, served by its own prefork worker with the SHORT limits.

    Yields (settings, celery client, worker)."""
    from support import empty_service as start

    tmp = tmp_path_factory.mktemp("empty")
    # an empty cache: a training task must convert encoder weights and embed every text, so it runs
    # well past the SHORT training limits on any machine
    with start(tmp, base_settings, SHORT_ENV, cache_dir=tmp / "cache", **SHORT) as service:
        yield service


def _serving(service, models_dir: Path, first_version: str, customer: str) -> str:
    """Publish the session model in the service's registry unless one is live; the served version."""
    import shutil

    empty, client, _ = service
    registry = ModelRegistry(empty.models_dir)
    if registry.current_version() is None:
        shutil.copytree(models_dir / first_version, empty.models_dir / first_version)
        registry.publish(first_version)
    state, result = outcome(client.send_task(names.RECOMMEND, args=[customer, 2]), 240)
    assert state == "SUCCESS", result
    return result["model_version"]


@pytest.mark.service
def test_no_model_published_is_a_clear_task_failure(empty_service):
    _, client, _ = empty_service
    state, error = outcome(client.send_task(names.RECOMMEND, args=["anyone", 3]), 60)
    assert state == "FAILURE"
    assert errors.failure_code(error) == errors.MODEL_UNAVAILABLE
    message = errors.failure_message(error)
    assert "no model published" in message and str(empty_service[0].models_dir) not in message


@pytest.mark.service
def test_worker_picks_up_a_model_published_after_it_started(
    empty_service, models_dir, first_version, known_customers
):
    import shutil

    empty, client, proc = empty_service
    assert ModelRegistry(empty.models_dir).current_version() is None
    shutil.copytree(models_dir / first_version, empty.models_dir / first_version)
    ModelRegistry(empty.models_dir).publish(first_version)
    state, result = outcome(client.send_task(names.RECOMMEND, args=[known_customers[0], 3]), 120)
    assert state == "SUCCESS", result
    assert result["model_version"] == first_version and len(result["items"]) == 3
    assert proc.proc.poll() is None


@pytest.mark.service
def test_job_record_and_result_expire(empty_service, make_app, models_dir, first_version, known_customers):
    """The result lives result_expires_s, the job record job_registry_ttl_s: GET /jobs/<id> reports
    succeeded, then failed (result expired), then 404."""
    import redis

    from web.job_store import KEY_PREFIX

    empty = empty_service[0]
    _serving(empty_service, models_dir, first_version, known_customers[0])
    client = make_app(empty).test_client()
    rdb = redis.Redis.from_url(empty.redis_url)
    job_id = client.post("/jobs", json={"customer_id": known_customers[0], "top": 2}).get_json()["job_id"]
    result_key, record_key = f"celery-task-meta-{job_id}", KEY_PREFIX + job_id
    assert 0 < rdb.ttl(record_key) <= SHORT["job_registry_ttl_s"]

    def view() -> dict:
        response = client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    _wait_for(lambda: view()["state"] == "succeeded", 60, "the job to succeed")
    assert 0 < rdb.ttl(result_key) <= SHORT["result_expires_s"]
    assert rdb.ttl(record_key) > 0

    _wait_for(lambda: not rdb.exists(result_key), 30, "the result to expire")
    expired = view()
    assert expired["state"] == "failed" and expired["error_code"] == "expired", expired
    assert "result" not in expired

    _wait_for(lambda: not rdb.exists(record_key), 30, "the job record to expire")
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 404 and response.get_json()["error"]
    rdb.close()


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _corrupt_copy(registry: ModelRegistry, source: str) -> str:
    """A new version: `source`'s manifest (renamed) and every other file overwritten with junk."""
    import shutil

    version = registry.new_version()
    target = registry.path_for(version)
    shutil.copytree(registry.path_for(source), target)
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps({**manifest, "version": version}))
    for path in target.rglob("*"):
        if path.is_file() and path.name != "manifest.json":
            path.write_bytes(b"corrupt")
    return version


def _repair(registry: ModelRegistry, version: str, source: str) -> None:
    """Put `source`'s files back under `version` (the manifest keeps naming `version`)."""
    import shutil

    for path in registry.path_for(source).rglob("*"):
        if path.is_file() and path.name != "manifest.json":
            target = registry.path_for(version) / path.relative_to(registry.path_for(source))
            shutil.copyfile(path, target)


@pytest.mark.service
def test_swap_to_a_corrupt_artifact_under_traffic(empty_service, models_dir, first_version, known_customers):
    """Every request keeps succeeding on the old version; the corrupt one is tried once per back-off
    (not on every task); once repaired it is picked up, and from then on it serves."""
    from concurrent.futures import ThreadPoolExecutor

    empty, client, proc = empty_service
    registry = ModelRegistry(empty.models_dir)
    old = _serving(empty_service, models_dir, first_version, known_customers[0])
    bad = _corrupt_copy(registry, old)
    registry.publish(bad)

    def request(k: int):
        return outcome(client.send_task(names.RECOMMEND, args=[known_customers[k % 5], 3]), 120)

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(request, range(24)))
    assert [state for state, _ in outcomes] == ["SUCCESS"] * 24
    assert {result["model_version"] for _, result in outcomes} == {old}
    failures = proc.log().count(f"loading model {bad} failed; still serving {old}")
    assert 1 <= failures < 24  # tried, but not on every task (model_retry_s back-off)

    _repair(registry, bad, old)
    versions = []
    while not versions or versions[-1] != bad:
        state, result = request(len(versions))
        assert state == "SUCCESS", result
        versions.append(result["model_version"])
        assert len(versions) < 2000, "the repaired version was never picked up"
    assert set(versions[:-1]) <= {old}
    for k in range(3):
        assert request(k)[1]["model_version"] == bad
    log = proc.log()
    assert log.index(f"loading model {bad} failed") < log.index(f"model {bad} loaded")
    assert proc.proc.poll() is None


def _left_behind(models: Path, before: set[str]) -> set[str]:
    return {p.name for p in models.iterdir() if p.is_dir()} - before


@pytest.mark.service
def test_training_over_its_soft_time_limit_fails_cleanly(
    empty_service, world_dir, models_dir, first_version, known_customers
):
    """train_soft_time_limit_s (1 s here): the task fails with SoftTimeLimitExceeded, leaves no
    version behind, publishes nothing, and the same pool child serves on."""
    empty, client, proc = empty_service
    registry = ModelRegistry(empty.models_dir)
    _serving(empty_service, models_dir, first_version, known_customers[0])
    current, before = registry.current_version(), {p.name for p in empty.models_dir.iterdir()}
    state, error = outcome(client.send_task(names.TRAIN, args=[str(world_dir)]), 120)
    assert state == "FAILURE" and type(error).__name__ == "SoftTimeLimitExceeded", repr(error)
    assert registry.current_version() == current
    assert _left_behind(empty.models_dir, before) == set()
    children = _children(proc.proc.pid)
    assert _serving(empty_service, models_dir, first_version, known_customers[1]) == current
    assert _children(proc.proc.pid) == children  # the soft limit does not cost the process


@pytest.mark.parametrize(
    "elapsed, limit", [(0.5, 1.0), (0.85, 1.0), (2.0, 0)], ids=["early", "just-before-the-slack", "no-limit"]
)
def test_an_error_before_the_soft_limit_stays_what_it_is(elapsed, limit):
    from tasks.training import _as_soft_limit

    assert _as_soft_limit(TypeError("bad"), elapsed, limit) is None
    assert _as_soft_limit(KeyboardInterrupt(), 99.0, 1.0) is None  # not an Exception: left alone


def test_an_error_the_soft_limit_caused_or_one_past_it_is_the_limit():
    from celery.exceptions import SoftTimeLimitExceeded

    from tasks.training import _as_soft_limit

    try:  # what inspect.getfullargspec did with the limit's exception (seen in CI)
        try:
            raise SoftTimeLimitExceeded()
        except Exception as ex:
            raise TypeError("unsupported callable") from ex
    except TypeError as exc:
        converted = exc
    late = _as_soft_limit(converted, 0.2, 1.0)  # caused by it, whenever
    assert isinstance(late, SoftTimeLimitExceeded) and "TypeError: unsupported callable" in str(late)
    assert isinstance(_as_soft_limit(SystemError("x"), 1.5, 1.0), SoftTimeLimitExceeded)  # past it
    assert _as_soft_limit(SoftTimeLimitExceeded(), 5.0, 1.0) is None  # already the limit
