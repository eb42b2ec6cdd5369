"""web/feedback.py + tasks/feedback.py on the session's real worker and Redis: POST /feedback is
recorded (stream and file) and the very next recommendation reflects it; bad input is refused."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import redis

from ml.recommender import Recommender
from ml.registry import ModelRegistry
from tasks import names


@pytest.fixture(scope="module")
def catalog(models_dir) -> list[str]:
    rec = Recommender.load(ModelRegistry(models_dir).current_path())
    return [str(p) for p in rec.tables.product_ids]


@pytest.fixture
def web(make_app, settings, worker):
    return make_app(replace(settings, sync_wait_s=30.0)).test_client()


def _recommend(web, customer: str, top: int = 100) -> dict:
    response = web.get(f"/recommendation?customer_id={customer}&top={top}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.mark.service
def test_feedback_makes_a_new_customer_known_and_the_product_seen(web, settings, catalog):
    customer, product = "fb-web-new-1", catalog[3]
    stream = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    before = stream.xlen(names.FEEDBACK_STREAM)
    first = _recommend(web, customer)
    assert first["cold_start"] is True and product in {x["product_id"] for x in first["items"]}

    response = web.post(
        "/feedback", json={"customer_id": customer, "product_id": product, "rating": 5, "text": "Love it"}
    )
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["feedback_id"] and body["known_customer"] is True and body["rating"] == 5.0
    assert response.headers["Location"].endswith(body["job_id"])

    after = _recommend(web, customer)
    assert after["cold_start"] is False
    assert {x["strategy"] for x in after["items"]} == {"hybrid"}
    assert product not in {x["product_id"] for x in after["items"]}  # seen now
    # durable: in the stream (the workers' source) and in the file the next training reads
    entries = stream.xrange(names.FEEDBACK_STREAM, body["feedback_id"], body["feedback_id"])
    assert stream.xlen(names.FEEDBACK_STREAM) == before + 1 and entries[0][1]["product_id"] == product
    lines = [json.loads(x) for x in settings.feedback_file.read_text().splitlines()]
    assert {
        "user_id": customer,
        "parent_asin": product,
        "rating": 5.0,
        "text": "Love it",
        "feedback_id": body["feedback_id"],
    }.items() <= lines[-1].items()
    stream.close()


@pytest.mark.service
def test_an_unknown_product_is_404_and_nothing_is_recorded(web, settings):
    stream = redis.Redis.from_url(settings.redis_url)
    before = stream.xlen(names.FEEDBACK_STREAM)
    response = web.post("/feedback", json={"customer_id": "C1", "product_id": "no-such-product", "rating": 4})
    assert response.status_code == 404, response.get_json()
    assert response.get_json()["code"] == "not_found"
    assert stream.xlen(names.FEEDBACK_STREAM) == before
    stream.close()


@pytest.mark.parametrize(
    "body",
    [
        {"customer_id": "C1", "product_id": "P1"},
        {"customer_id": "C1", "product_id": "P1", "rating": 0},
        {"customer_id": "C1", "product_id": "P1", "rating": 6},
        {"customer_id": "C1", "product_id": "P1", "rating": "5"},
        {"customer_id": "C1", "product_id": "P1", "rating": True},
        {"customer_id": "bad id", "product_id": "P1", "rating": 3},
        {"customer_id": "C1", "product_id": "", "rating": 3},
        {"customer_id": "C1", "product_id": "P\x01", "rating": 3},
        {"customer_id": "C1", "product_id": "P1", "rating": 3, "text": "x" * 5001},
        {"customer_id": "C1", "product_id": "P1", "rating": 3, "extra": 1},
    ],
)
def test_bad_feedback_is_400_before_any_task(make_app, base_settings, idle_redis, body):
    web = make_app(replace(base_settings, redis_url=idle_redis.url, sync_wait_s=0.2)).test_client()
    queued = redis.Redis.from_url(idle_redis.url).llen(names.INFERENCE_QUEUE)
    response = web.post("/feedback", json=body)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["status"] == 400
    assert redis.Redis.from_url(idle_redis.url).llen(names.INFERENCE_QUEUE) == queued


def test_feedback_no_worker_answers_in_time_is_still_accepted(make_app, base_settings, idle_redis):
    """Nothing accepted is lost: without a worker the 202 points at the queued job."""
    web = make_app(replace(base_settings, redis_url=idle_redis.url, sync_wait_s=0.2)).test_client()
    response = web.post("/feedback", json={"customer_id": "C1", "product_id": "P1", "rating": 3})
    assert response.status_code == 202
    body = response.get_json()
    assert "feedback_id" not in body and web.get(body["status_url"]).get_json()["state"] == "queued"
