"""The whole service: gunicorn serving the web app, a real prefork Celery worker, a real Redis and a
real small model; plus the failure modes (no worker, Redis down, no model) and the `make run`
launcher (Flower auth, Ctrl-C stops everything)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import redis as redis_lib
import requests

from ml.config import REPO_ROOT
from ml.registry import ModelRegistry
from scripts.procs import free_port, port_in_use, stop_group, wait_until
from scripts.run_stack import flower_credentials
from support import empty_service

pytestmark = pytest.mark.service


def assert_json_error(response, status: int) -> dict:
    text = response.get_data(as_text=True) if hasattr(response, "get_data") else response.text
    assert response.status_code == status, text
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(text)
    assert isinstance(body["error"], str) and body["error"]
    return body


# ---------------------------------------------------------------- the happy path over HTTP


def test_readyz(live, worker, models_dir):
    response = live.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ready"] is True and worker.hostname in body["workers"]
    assert body["model_version"] == ModelRegistry(models_dir).current_version()  # which version serves


def test_post_job_then_poll_until_succeeded(live, wait_job, known_customers, models_dir):
    customer = known_customers[2]
    response = live.post("/jobs", json={"customer_id": customer, "top": 6})
    assert response.status_code == 202
    body = response.json()
    assert response.headers["Location"] == body["status_url"]
    job = wait_job(live.json_get, body["job_id"])
    assert job["state"] == "succeeded", job
    result = job["result"]
    ids = [item["product_id"] for item in result["items"]]
    assert len(ids) == 6 == len(set(ids))
    assert result["customer_id"] == customer and result["cold_start"] is False
    assert job["model_version"] == result["model_version"] == ModelRegistry(models_dir).current_version()
    assert all(item["strategy"] == "hybrid" for item in result["items"])
    # every product of the demo world has a picture under var_dir: each is served by /media
    for item in result["items"]:
        assert item["image_url"], item
        picture = live.get(item["image_url"])
        assert picture.status_code == 200 and picture.headers["Content-Type"].startswith("image/")
        assert "image" not in item  # the server path stays on the server (issue 14, item 7)
        on_disk = live.settings.var_dir / item["image_url"].removeprefix("/media/")
        assert picture.content == on_disk.read_bytes()


def test_unknown_customer_gets_cold_start_recommendations(live, wait_job):
    body = live.post("/jobs", json={"customer_id": "someone-new", "top": 4}).json()
    job = wait_job(live.json_get, body["job_id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["cold_start"] is True
    assert {item["strategy"] for item in job["result"]["items"]} == {"popularity"}
    assert len({item["product_id"] for item in job["result"]["items"]}) == 4


def test_batch_job(live, wait_job, known_customers):
    ids = known_customers[:4]
    response = live.post("/jobs/batch", json={"customer_ids": ids, "top": 3})
    assert response.status_code == 202
    job = wait_job(live.json_get, response.json()["job_id"])
    assert job["state"] == "succeeded", job
    results = job["result"]["results"]
    assert [r["customer_id"] for r in results] == ids
    assert all(len({i["product_id"] for i in r["items"]}) == 3 for r in results)
    assert job["model_version"]


def test_original_get_recommendation_returns_200(live, known_customers):
    response = live.get("/recommendation", params={"customer_id": known_customers[0], "top": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["customer_id"] == known_customers[0]
    assert len({item["product_id"] for item in body["items"]}) == 5
    assert body["model_version"] and body["job_id"]


def test_original_get_answers_202_when_the_wait_is_over(
    make_app, settings, wait_job, known_customers, worker
):
    client = make_app(replace(settings, sync_wait_s=0.0)).test_client()
    response = client.get(f"/recommendation?customer_id={known_customers[0]}&top=2")
    assert response.status_code in (200, 202)
    if response.status_code == 202:

        def get(path):
            r = client.get(path)
            return r.status_code, r.get_json()

        job = wait_job(get, response.get_json()["job_id"])
        assert job["state"] == "succeeded" and len(job["result"]["items"]) == 2


def _raw_rows(world_dir: Path, name: str) -> list[dict]:
    """The rows of one of the world's JSONL files, read directly (not through ml.data)."""
    with open(world_dir / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_customers_are_real(live, world_dir):
    """GET /customers lists the most active reviewers of the raw data file (ids and counts)."""
    from collections import Counter

    from demo import REVIEWS_FILE

    reviews = Counter(row["user_id"] for row in _raw_rows(world_dir, REVIEWS_FILE))
    status, body = live.json_get("/customers?limit=5")
    assert status == 200
    ids = body["customers"]
    assert len(ids) == 5 == len(set(ids)) and set(ids) <= set(reviews)
    assert [reviews[c] for c in ids] == sorted(reviews.values(), reverse=True)[:5]  # most active first


def test_never_rated_product_reaches_a_known_customer(live, world_dir, models_dir):
    """A product nobody rated is scored from its content and served to a known customer as in process.

    On the small test world never-rated products rank low (with the 3-epoch model the best is about
    20th of ~28 unseen), so the request asks for as many items as it takes to reach the first one."""
    from demo import META_FILE, REVIEWS_FILE
    from ml.recommender import Recommender

    never_rated = {row["parent_asin"] for row in _raw_rows(world_dir, META_FILE)} - {
        row["parent_asin"] for row in _raw_rows(world_dir, REVIEWS_FILE)
    }
    assert len(never_rated) >= 2, "the synthetic world has never-rated products"
    version = ModelRegistry(models_dir).current_version()
    rec = Recommender.load(ModelRegistry(models_dir).path_for(version))
    ranked = {c: rec.recommend(c, top=rec.n_products) for c in rec.customers(1000)}
    first = {
        c: next(k for k, x in enumerate(items) if x["product_id"] in never_rated) + 1
        for c, items in ranked.items()
    }
    customer = min(first, key=lambda c: (first[c], c))
    # scored from content: the never-rated products (no rating, no popularity) get different scores
    assert len({x["score"] for x in ranked[customer] if x["product_id"] in never_rated}) >= 2

    response = live.get("/recommendation", params={"customer_id": customer, "top": first[customer]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == version and body["cold_start"] is False
    served = body["items"]
    assert [x["product_id"] for x in served] == [x["product_id"] for x in ranked[customer][: first[customer]]]
    assert served[-1]["product_id"] in never_rated
    assert served[-1]["strategy"] == "hybrid" and served[-1]["cold_start"] is False
    assert served[-1]["score"] == pytest.approx(ranked[customer][first[customer] - 1]["score"], abs=1e-6)


def test_bad_requests_over_http(live):
    assert_json_error(live.get(f"/jobs/{uuid.uuid4()}"), 404)
    assert_json_error(live.post("/jobs", json={"customer_id": "abc", "top": 0}), 400)
    assert_json_error(live.post("/jobs", data="{not json", headers={"Content-Type": "application/json"}), 400)
    assert_json_error(live.get("/recommendation", params={"customer_id": "abc", "top": 0}), 400)
    assert_json_error(live.get("/nowhere"), 404)
    assert_json_error(live.post("/healthz"), 405)


def test_openapi_is_served(live):
    spec = live.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}", "/recommendation"} <= set(spec["paths"])


# ---------------------------------------------------------------- model swap without a restart


def _publish_copy_as_new_version(models_dir: Path) -> str:
    """Publish the current artifact again under a new version name (as a promotion would)."""
    registry = ModelRegistry(models_dir)
    source = registry.current_path()
    version = registry.new_version()
    target = registry.path_for(version)
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    (target / "manifest.json").write_text(json.dumps(manifest))
    registry.publish(version)
    return version


def test_model_swap_while_serving(live, worker, wait_job, models_dir, known_customers):
    pid = worker.proc.pid
    before = live.get("/recommendation", params={"customer_id": known_customers[0], "top": 3}).json()
    new_version = _publish_copy_as_new_version(models_dir)
    assert new_version != before["model_version"]
    job = wait_job(
        live.json_get, live.post("/jobs", json={"customer_id": known_customers[0], "top": 3}).json()["job_id"]
    )
    assert job["state"] == "succeeded", job
    assert job["model_version"] == new_version
    after = live.get("/recommendation", params={"customer_id": known_customers[0], "top": 3}).json()
    assert after["model_version"] == new_version
    assert worker.proc.pid == pid and worker.proc.poll() is None  # same worker, never restarted
    assert f"loading model {new_version}" in worker.log()


# ---------------------------------------------------------------- failure modes


def test_readyz_is_503_without_a_worker(make_app, settings, spare_redis):
    client = make_app(replace(settings, redis_url=spare_redis.url)).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["ready"] is False and "no Celery worker" in body["reason"]


def test_redis_down_is_503_json(make_app, settings, dead_redis_url):
    client = make_app(replace(settings, redis_url=dead_redis_url)).test_client()
    calls = [
        lambda: client.post("/jobs", json={"customer_id": "abc", "top": 3}),
        lambda: client.post("/jobs/batch", json={"customer_ids": ["abc"], "top": 3}),
        lambda: client.get(f"/jobs/{uuid.uuid4()}"),
        lambda: client.get("/recommendation?customer_id=abc&top=3"),
        lambda: client.get("/customers?limit=3"),
        lambda: client.get("/readyz"),
    ]
    for call in calls:
        response = call()
        assert response.status_code == 503, response.get_data(as_text=True)
        assert response.mimetype == "application/json" and response.get_json()["error"]
    assert client.get("/healthz").status_code == 200  # the process itself is fine


def test_redis_dying_while_serving_is_503(make_app, settings, spare_redis):
    client = make_app(replace(settings, redis_url=spare_redis.url)).test_client()
    job_id = client.post("/jobs", json={"customer_id": "abc"}).get_json()["job_id"]
    assert client.get(f"/jobs/{job_id}").status_code == 200
    spare_redis.stop()
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 503 and response.get_json()["error"]


@pytest.fixture(scope="module")
def no_model(tmp_path_factory, base_settings):
    with empty_service(tmp_path_factory.mktemp("no-model"), base_settings) as service:
        yield service


def test_readyz_is_503_while_no_worker_has_loaded_a_model(make_app, no_model):
    """A worker answers pings, but there is no model: not ready (issue 16: it used to say 200)."""
    empty, client, worker = no_model
    replies = client.control.ping(timeout=1.0) or []
    assert any(worker.hostname in reply for reply in replies)  # the worker is up
    body = assert_json_error(make_app(empty).test_client().get("/readyz"), 503)
    assert body["ready"] is False and "none has loaded a model" in body["reason"]


def test_no_model_published_is_a_clear_error(make_app, no_model, wait_job):
    empty, _, _ = no_model
    client = make_app(empty).test_client()
    response = client.get("/recommendation?customer_id=abc&top=3")
    body = assert_json_error(response, 503)
    assert "no model published" in body["error"]

    def get(path):
        r = client.get(path)
        return r.status_code, r.get_json()

    job = wait_job(get, client.post("/jobs", json={"customer_id": "abc"}).get_json()["job_id"])
    assert job["state"] == "failed" and "no model published" in job["error"]


# ---------------------------------------------------------------- the launcher (make run)


def test_flower_password_is_generated_when_unset(base_settings):
    user, password, generated = flower_credentials(replace(base_settings, flower_user="", flower_password=""))
    assert user == "admin" and generated and len(password) >= 20
    assert flower_credentials(replace(base_settings, flower_password=""))[1] != password
    assert flower_credentials(replace(base_settings, flower_user="u", flower_password="p")) == (
        "u",
        "p",
        False,
    )


def _processes_with(marker: str) -> list[int]:
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                pids.append(int(environ.parent.name))
        except OSError:
            continue
    return pids


def test_run_stack_starts_everything_and_ctrl_c_stops_it(
    tmp_path, base_settings, models_dir, known_customers
):
    marker = f"RECSYS_TEST_MARKER={uuid.uuid4().hex}"
    web_port, flower_port, redis_port = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",  # nothing there: the launcher starts it
            "RECSYS_VAR_DIR": str(tmp_path / "var"),
            "RECSYS_MODELS_DIR": str(models_dir),  # a published model: no training
            "RECSYS_CACHE_DIR": str(base_settings.cache_dir),
            "RECSYS_WEB_PORT": str(web_port),
            "RECSYS_FLOWER_PORT": str(flower_port),
            "RECSYS_WEB_WORKERS": "1",
            "FLOWER_USER": "ops",
            "FLOWER_PASSWORD": "s3cret-pw",
            "PYTHONUNBUFFERED": "1",
            marker.split("=")[0]: marker.split("=")[1],
        }
    )
    out_file = tmp_path / "run_stack.out"
    with open(out_file, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.run_stack"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: "Press Ctrl-C" in out_file.read_text(), 240, interval_s=0.5, proc=proc, what="run_stack"
        )
        text = out_file.read_text()
        # a ready-to-paste example with a REAL customer id
        match = re.search(r'"customer_id": "([A-Za-z0-9_-]+)"', text)
        assert match and match.group(1) in known_customers, text
        base = f"http://127.0.0.1:{web_port}"
        assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
        response = requests.get(
            f"{base}/recommendation", params={"customer_id": match.group(1), "top": 3}, timeout=60
        )
        assert response.status_code == 200 and len(response.json()["items"]) == 3
        flower = f"http://127.0.0.1:{flower_port}/"
        wait_until(lambda: port_in_use("127.0.0.1", flower_port), 30, proc=proc, what="flower")
        assert requests.get(flower, timeout=10).status_code == 401
        assert requests.get(flower, auth=("ops", "wrong"), timeout=10).status_code == 401
        assert requests.get(flower, auth=("ops", "s3cret-pw"), timeout=10).status_code == 200
        assert "s3cret-pw" not in " ".join(
            Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            for pid in _processes_with(marker)
            if Path(f"/proc/{pid}/cmdline").exists()
        )
        started = _processes_with(marker)
        assert len(started) >= 5  # launcher, redis, worker (+ child), gunicorn (+ worker), flower

        # the embedded Redis: 127.0.0.1 only, a password from a 0600 file that nothing printed
        password_file = tmp_path / "var" / "redis" / "password"
        assert password_file.stat().st_mode & 0o777 == 0o600
        redis_password = password_file.read_text().strip()
        assert len(redis_password) >= 24
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(port=redis_port, socket_timeout=5).ping()
        assert redis_lib.Redis(port=redis_port, password=redis_password, socket_timeout=5).ping()
        logs = out_file.read_text() + "".join(
            p.read_text(errors="replace") for p in (tmp_path / "var" / "logs").glob("*.log")
        )
        assert redis_password not in logs
        assert text.count("s3cret-pw") == 1  # the Flower credentials, shown once by the launcher
        # redis-server retitles itself ("redis-server 127.0.0.1:PORT") over its argv and environ
        redis_pid = next(
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if f"redis-server 127.0.0.1:{redis_port}" in " ".join(p.info["cmdline"] or [])
        )
        assert redis_password not in Path(f"/proc/{redis_pid}/cmdline").read_bytes().decode(errors="replace")
        listening = {c.laddr.ip for c in psutil.Process(redis_pid).net_connections() if c.status == "LISTEN"}
        assert listening == {"127.0.0.1"}

        # a supervisor: Redis killed -9 is started again with its data, the rest keeps running
        db = redis_lib.Redis(port=redis_port, password=redis_password, socket_timeout=5)
        db.set("recsys:test:survives", "1")
        others = {pid for pid in started if pid != redis_pid and pid != proc.pid}
        os.kill(redis_pid, signal.SIGKILL)
        wait_until(lambda: "redis is back" in out_file.read_text(), 30, proc=proc, what="redis restart")
        assert db.get("recsys:test:survives") == b"1"
        wait_until(
            lambda: requests.get(f"{base}/readyz", timeout=10).status_code == 200,
            30,
            interval_s=0.5,
            proc=proc,
            what="/readyz after the Redis restart",
        )
        response = requests.get(
            f"{base}/recommendation", params={"customer_id": match.group(1), "top": 3}, timeout=60
        )
        assert response.status_code == 200 and len(response.json()["items"]) == 3
        assert others <= set(_processes_with(marker))  # web, worker, Flower: the same processes
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            proc.wait(timeout=90)
        finally:
            stop_group(proc, timeout_s=1)
    assert proc.returncode == 0, out_file.read_text()
    wait_until(lambda: not _processes_with(marker), 10, what="every started process to exit")
    for port in (web_port, flower_port, redis_port):
        assert not port_in_use("127.0.0.1", port)
    assert "stopped" in out_file.read_text()


def test_make_run_retrains_when_the_published_model_is_of_an_older_format(tmp_path, base_settings):
    import dataclasses

    from ml.artifact import ARTIFACT_FORMAT
    from ml.registry import ModelRegistry
    from scripts.run_stack import Stack, StackError, ensure_model

    models = tmp_path / "models"
    (models / "v-old").mkdir(parents=True)
    (models / "v-old" / "manifest.json").write_text(json.dumps({"format": ARTIFACT_FORMAT - 1}))
    ModelRegistry(models).publish("v-old")
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "SYNTHETIC.md").write_text("synthetic")
    steps = []

    class Recording(Stack):
        def run_step(self, title, cmd):  # record instead of training for real
            steps.append(cmd)

    settings = dataclasses.replace(base_settings, models_dir=models, demo_data_dir=demo)
    with pytest.raises(StackError, match="cannot be served"):  # the recorded step published nothing new
        ensure_model(Recording(settings, tmp_path))
    assert [cmd[1:] for cmd in steps] == [["-m", "ml", "train", "--data", str(demo)]]
