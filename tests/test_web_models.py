"""web/models.py: model management behind the admin token. The token and input checks run against a
Redis no worker consumes from; training, listing and publishing run on the session's real worker."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from ml.registry import ModelRegistry
from tasks import names

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def idle_admin(make_app, base_settings, idle_redis):
    return make_app(
        replace(base_settings, redis_url=idle_redis.url, admin_token=TOKEN, sync_wait_s=0.2)
    ).test_client()


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert body["status"] == status and body["error"]
    return body


@pytest.mark.parametrize(
    "method, path", [("GET", "/models"), ("POST", "/models"), ("POST", "/models/v1/publish")]
)
def test_without_a_configured_token_the_routes_are_off(make_app, base_settings, idle_redis, method, path):
    web = make_app(replace(base_settings, redis_url=idle_redis.url, admin_token="")).test_client()
    body = _error(web.open(path, method=method, json={"data_path": "world"}, headers=AUTH), 503)
    assert "RECSYS_ADMIN_TOKEN" in body["error"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
)
def test_a_missing_or_wrong_token_is_401(idle_admin, idle_redis, headers):
    import redis

    queued = redis.Redis.from_url(idle_redis.url).llen(names.TRAINING_QUEUE)
    for method, path in (("GET", "/models"), ("POST", "/models"), ("POST", "/models/v1/publish")):
        response = idle_admin.open(path, method=method, json={"data_path": "world"}, headers=headers)
        _error(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert redis.Redis.from_url(idle_redis.url).llen(names.TRAINING_QUEUE) == queued  # nothing sent


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"data_path": ""},
        {"data_path": "/etc"},
        {"data_path": "../../etc"},
        {"data_path": "world/../.."},
        {"data_path": 3},
        {"data_path": "world", "epochs": 0},
        {"data_path": "world", "epochs": "2"},
        {"data_path": "world", "epochs": True},
        {"data_path": "world", "extra": 1},
    ],
)
def test_bad_training_requests_are_400(idle_admin, body):
    _error(idle_admin.post("/models", json=body, headers=AUTH), 400)


def test_a_good_training_request_is_queued_on_the_training_queue(idle_admin, idle_redis):
    import redis

    client = redis.Redis.from_url(idle_redis.url)
    before = client.llen(names.TRAINING_QUEUE)
    response = idle_admin.post("/models", json={"data_path": "world", "epochs": 2}, headers=AUTH)
    assert response.status_code == 202, response.get_json()
    assert response.headers["Location"].endswith(response.get_json()["job_id"])
    assert client.llen(names.TRAINING_QUEUE) == before + 1
    view = idle_admin.get(response.get_json()["status_url"]).get_json()
    assert (view["kind"], view["state"]) == ("train", "queued")


@pytest.mark.parametrize("version", ["..", ".hidden", "a" * 65, "v1;rm"])
def test_an_impossible_version_is_404(idle_admin, version):
    _error(idle_admin.post(f"/models/{version}/publish", headers=AUTH), 404)


def test_the_openapi_document_says_the_routes_need_the_token(idle_admin):
    spec = idle_admin.get("/openapi.json").get_json()
    assert spec["components"]["securitySchemes"]["AdminToken"] == {"type": "http", "scheme": "bearer"}
    for path, method in (("/models", "get"), ("/models", "post"), ("/models/{version}/publish", "post")):
        operation = spec["paths"][path][method]
        assert operation["security"] == [{"AdminToken": []}] and "401" in operation["responses"]


# ---------------------------------------------------------------- on the real worker


@pytest.fixture
def admin(make_app, settings, worker):
    return make_app(replace(settings, admin_token=TOKEN)).test_client()


def _served_version(web, customer: str) -> str:
    response = web.get(f"/recommendation?customer_id={customer}&top=3")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["model_version"]


def _train(admin, epochs: int) -> tuple[dict, list[dict]]:
    """POST /models, then poll the job every 50 ms: its final view and every progress seen."""
    response = admin.post("/models", json={"data_path": "world", "epochs": epochs}, headers=AUTH)
    assert response.status_code == 202, response.get_json()
    url, seen, deadline = response.get_json()["status_url"], [], time.monotonic() + 300
    while time.monotonic() < deadline:
        view = admin.get(url).get_json()
        assert view["kind"] == "train"
        if view["state"] in ("succeeded", "failed"):
            return view, seen
        if "progress" in view:
            assert view["state"] == "started"
            seen.append(view["progress"])
        time.sleep(0.05)
    raise AssertionError("training did not finish in 300 s")


@pytest.mark.service
def test_train_list_publish_and_roll_back(admin, worker, models_dir, known_customers, settings):
    """Train through the API (with progress), see the version listed and served, roll back to the
    one before, and the same worker process serves each in turn without a restart."""
    registry, pid = ModelRegistry(models_dir), worker.proc.pid
    before = registry.current_version()
    assert _served_version(admin, known_customers[0]) == before

    view, progress = _train(admin, epochs=2)
    assert view["state"] == "succeeded", view
    new = view["result"]["model_version"]
    assert view["result"]["published"] is True and view["model_version"] == new != before
    assert view["result"]["manifest"]["data"]["fingerprint"]
    # the live feedback received so far was trained on (tests/test_web_feedback.py sends some)
    sent = settings.feedback_file.read_text().splitlines() if settings.feedback_file.is_file() else []
    held = view["result"]["manifest"]["feedback"]
    assert held["records"] == len(sent)
    assert held["last_id"] == (json.loads(sent[-1])["feedback_id"] if sent else None)
    stages = [p["stage"] for p in progress]
    assert stages and set(stages) <= {"embed", "fit", "finish"}
    assert stages == sorted(stages, key=["embed", "fit", "finish"].index)  # never goes back
    assert all(p["epochs"] == 2 and 0 <= p["epoch"] <= 2 for p in progress if p["stage"] == "fit")

    listed = admin.get("/models", headers=AUTH)
    assert listed.status_code == 200, listed.get_json()
    models = listed.get_json()
    versions = [m["version"] for m in models["models"]]
    assert versions[0] == new and before in versions and versions == sorted(versions, reverse=True)
    assert models["current"] == new and [m["version"] for m in models["models"] if m["current"]] == [new]
    mine = models["models"][0]
    assert (
        mine["servable"] and mine["data"]["fingerprint"] == view["result"]["manifest"]["data"]["fingerprint"]
    )
    assert mine["metrics"] == view["result"]["manifest"]["metrics"] and mine["created"]
    assert _served_version(admin, known_customers[0]) == new

    rolled = admin.post(f"/models/{before}/publish", headers=AUTH)
    assert rolled.status_code == 200, rolled.get_json()
    assert (rolled.get_json()["model_version"], rolled.get_json()["previous"]) == (before, new)
    assert registry.current_version() == before
    assert _served_version(admin, known_customers[0]) == before
    assert worker.proc.pid == pid and worker.proc.poll() is None

    _error(admin.post("/models/v19990101T000000000000Z/publish", headers=AUTH), 404)
    assert registry.current_version() == before


@pytest.mark.service
def test_training_from_a_missing_folder_fails_as_the_clients_error(admin, models_dir):
    before = ModelRegistry(models_dir).versions()
    response = admin.post("/models", json={"data_path": "no-such-folder"}, headers=AUTH)
    assert response.status_code == 202
    deadline = time.monotonic() + 60
    while (view := admin.get(response.get_json()["status_url"]).get_json())["state"] not in (
        "succeeded",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (view["state"], view["error_code"]) == ("failed", "not_found")
    assert ModelRegistry(models_dir).versions() == before
