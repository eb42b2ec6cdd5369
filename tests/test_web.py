"""web/: routes, input validation, JSON errors and the OpenAPI document, through the Flask test
client against a real Redis that no worker consumes from (jobs stay queued)."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import replace

import pytest
import redis

from tasks import names
from web.job_store import KEY_PREFIX

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def web_settings(base_settings, idle_redis):
    return replace(base_settings, redis_url=idle_redis.url, sync_wait_s=0.3, max_batch=3)


@pytest.fixture
def web_app(make_app, web_settings):
    return make_app(web_settings)


@pytest.fixture
def web(web_app):
    return web_app.test_client()


@pytest.fixture
def rdb(idle_redis):
    client = redis.Redis.from_url(idle_redis.url, decode_responses=True)
    yield client
    client.close()


def assert_json_error(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body.get("error"), str) and body["error"]
    return body


# ---------------------------------------------------------------- health


def test_healthz(web):
    response = web.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


# ---------------------------------------------------------------- submitting jobs


def test_post_job_is_accepted_and_queued(web, rdb, web_settings):
    before = rdb.llen(names.INFERENCE_QUEUE)
    response = web.post("/jobs", json={"customer_id": "C-001_x", "top": 5})
    assert response.status_code == 202
    body = response.get_json()
    assert UUID_RE.fullmatch(body["job_id"])
    assert body["status_url"].endswith(f"/jobs/{body['job_id']}")
    assert response.headers["Location"] == body["status_url"]
    # routed to the inference queue, JSON-serialised
    assert rdb.llen(names.INFERENCE_QUEUE) == before + 1
    message = json.loads(rdb.lindex(names.INFERENCE_QUEUE, 0))
    assert message["content-type"] == "application/json"
    assert message["headers"]["task"] == names.RECOMMEND
    # registered with a TTL, so the id is known
    ttl = rdb.ttl(KEY_PREFIX + body["job_id"])
    assert 0 < ttl <= web_settings.job_registry_ttl_s
    status = web.get(f"/jobs/{body['job_id']}")
    assert status.status_code == 200
    assert status.get_json() == {
        "job_id": body["job_id"],
        "kind": "recommend",
        "state": "queued",
        "model_version": None,
    }


def test_top_defaults_to_10(web, rdb):
    response = web.post("/jobs", json={"customer_id": "abc"})
    assert response.status_code == 202
    message = json.loads(rdb.lindex(names.INFERENCE_QUEUE, 0))
    assert message["headers"]["id"] == response.get_json()["job_id"]
    assert message["headers"]["argsrepr"] == "['abc', 10]"


def test_post_batch_job(web):
    response = web.post("/jobs/batch", json={"customer_ids": ["a", "b", "c"], "top": 2})
    assert response.status_code == 202
    job = web.get(response.headers["Location"]).get_json()
    assert job["kind"] == "batch" and job["state"] == "queued"


def test_unknown_job_is_404(web):
    assert_json_error(web.get(f"/jobs/{uuid.uuid4()}"), 404)
    assert_json_error(web.get("/jobs/not-a-job-id"), 404)


# ---------------------------------------------------------------- validation

BAD_JOB_BODIES = [
    ({}, "missing customer_id"),
    ({"customer_id": ""}, "empty customer_id"),
    ({"customer_id": "x" * 65}, "overlong customer_id"),
    ({"customer_id": "a b"}, "space"),
    ({"customer_id": "a/b"}, "slash"),
    ({"customer_id": "é"}, "non-ascii"),
    ({"customer_id": "abc\n"}, "trailing newline"),
    ({"customer_id": 12}, "number customer_id"),
    ({"customer_id": None}, "null customer_id"),
    ({"customer_id": "abc", "top": 0}, "top=0"),
    ({"customer_id": "abc", "top": 101}, "top too large"),
    ({"customer_id": "abc", "top": -3}, "negative top"),
    ({"customer_id": "abc", "top": True}, "bool top"),
    ({"customer_id": "abc", "top": 2.5}, "float top"),
    ({"customer_id": "abc", "top": "10"}, "string top"),
    ({"customer_id": "abc", "top": None}, "null top"),
    ({"customer_id": "abc", "extra": 1}, "unknown field"),
    (["abc"], "array body"),
    ("abc", "string body"),
    (None, "null body"),
]


@pytest.mark.parametrize("body, why", BAD_JOB_BODIES, ids=[why for _, why in BAD_JOB_BODIES])
def test_post_job_rejects_bad_input(web, body, why):
    response = web.post("/jobs", data=json.dumps(body), content_type="application/json")
    assert_json_error(response, 400)


@pytest.mark.parametrize(
    "data, content_type",
    [
        ('{"customer_id": "abc"', "application/json"),
        ("{'customer_id': 'abc'}", "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        ("", "application/json"),
        ('{"customer_id": "abc"}', "text/plain"),
        ("customer_id=abc", "application/x-www-form-urlencoded"),
    ],
)
def test_post_job_rejects_malformed_or_non_json(web, data, content_type):
    assert_json_error(web.post("/jobs", data=data, content_type=content_type), 400)


def test_malformed_json_says_so(web):
    body = assert_json_error(web.post("/jobs", data="{oops", content_type="application/json"), 400)
    assert "malformed JSON" in body["error"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"customer_ids": []},
        {"customer_ids": "abc"},
        {"customer_ids": ["ok", "not ok"]},
        {"customer_ids": ["a", "b", "c", "d"]},  # over max_batch (3 here)
        {"customer_ids": ["a"], "top": 0},
        {"customer_ids": ["a"], "top": False},
        {"customer_ids": ["a"], "extra": True},
    ],
)
def test_post_batch_rejects_bad_input(web, body):
    assert_json_error(web.post("/jobs/batch", json=body), 400)


@pytest.mark.parametrize(
    "query",
    [
        "",
        "top=5",
        "customer_id=",
        "customer_id=a%20b",
        "customer_id=" + "x" * 65,
        "customer_id=abc&top=0",
        "customer_id=abc&top=101",
        "customer_id=abc&top=1.5",
        "customer_id=abc&top=true",
        "customer_id=abc&top=",
        "customer_id=abc&top=-1",
        "customer_id=abc&top=1e1",
        "customer_id=abc&unknown=1",
    ],
)
def test_get_recommendation_rejects_bad_query(web, query):
    assert_json_error(web.get(f"/recommendation?{query}"), 400)


BAD_FILTERS = [
    ({"category": ""}, "category="),
    ({"category": " > "}, "category=%20%3E%20"),
    ({"category": "x" * 201}, "category=" + "x" * 201),
    ({"category": "a\u0007b"}, "category=a%07b"),
    ({"max_price": -1}, "max_price=-1"),
    ({"max_price": "10"}, "max_price=1e1"),
    ({"max_price": True}, "max_price=true"),
    ({"max_price": None}, "max_price="),
    ({"category": 3}, "max_price=nan"),
    ({"category": ["A"]}, "max_price=inf"),
]


@pytest.mark.parametrize("body, query", BAD_FILTERS, ids=[q for _, q in BAD_FILTERS])
def test_invalid_filters_are_400_on_every_route(web, body, query):
    assert_json_error(web.post("/jobs", json={"customer_id": "abc", **body}), 400)
    assert_json_error(web.post("/jobs/batch", json={"customer_ids": ["abc"], **body}), 400)
    assert_json_error(web.get(f"/recommendation?customer_id=abc&{query}"), 400)


def test_filters_reach_the_task_only_when_given(web, rdb):
    web.post("/jobs", json={"customer_id": "abc", "top": 4, "category": "Shoes > Boots", "max_price": 25})
    message = json.loads(rdb.lindex(names.INFERENCE_QUEUE, 0))
    assert message["headers"]["argsrepr"] == "['abc', 4, {'category': 'Shoes > Boots', 'max_price': 25.0}]"
    web.post("/jobs/batch", json={"customer_ids": ["a", "b"], "max_price": 9.5})
    message = json.loads(rdb.lindex(names.INFERENCE_QUEUE, 0))
    assert message["headers"]["argsrepr"] == "[['a', 'b'], 10, {'max_price': 9.5}]"
    web.get("/recommendation?customer_id=abc&top=2&category=Shoes")
    message = json.loads(rdb.lindex(names.INFERENCE_QUEUE, 0))
    assert message["headers"]["argsrepr"] == "['abc', 2, {'category': 'Shoes'}]"


@pytest.mark.parametrize("query", ["top=0", "top=101", "top=x", "top=1.5", "top=3&x=1"])
def test_similar_rejects_a_bad_top(web, query):
    assert_json_error(web.get(f"/products/B0X/similar?{query}"), 400)


@pytest.mark.parametrize("product_id", ["x" * 129, "a%07b", "%00"])
def test_similar_of_an_impossible_product_id_is_404_without_a_job(web, rdb, product_id):
    before = rdb.llen(names.INFERENCE_QUEUE)
    assert_json_error(web.get(f"/products/{product_id}/similar"), 404)
    assert rdb.llen(names.INFERENCE_QUEUE) == before


def test_similar_answers_202_when_the_job_is_not_done_in_time(web, rdb):
    response = web.get("/products/B0X%20Y/similar?top=3")
    assert response.status_code == 202
    message = json.loads(rdb.lindex(names.INFERENCE_QUEUE, 0))
    assert message["headers"]["task"] == names.SIMILAR and message["headers"]["argsrepr"] == "['B0X Y', 3]"
    job = web.get(response.get_json()["status_url"]).get_json()
    assert job["kind"] == "similar" and job["state"] == "queued"


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "limit=5&x=1"])
def test_rated_rejects_a_bad_limit(web, query):
    assert_json_error(web.get(f"/customers/C1/rated?{query}"), 400)


@pytest.mark.parametrize("customer_id", ["x" * 65, "a b", "a%07b", "%C3%A9"])
def test_rated_of_an_impossible_customer_id_is_404_without_a_job(web, rdb, customer_id):
    before = rdb.llen(names.INFERENCE_QUEUE)
    assert_json_error(web.get(f"/customers/{customer_id}/rated"), 404)
    assert rdb.llen(names.INFERENCE_QUEUE) == before


def test_rated_answers_202_when_the_job_is_not_done_in_time(web, rdb):
    response = web.get("/customers/C-1/rated?limit=7")
    assert response.status_code == 202
    message = json.loads(rdb.lindex(names.INFERENCE_QUEUE, 0))
    assert message["headers"]["task"] == names.RATED and message["headers"]["argsrepr"] == "['C-1', 7]"
    assert web.get(response.get_json()["status_url"]).get_json()["kind"] == "rated"


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "limit=5&x=1"])
def test_get_customers_rejects_bad_query(web, query):
    assert_json_error(web.get(f"/customers?{query}"), 400)


# ---------------------------------------------------------------- synchronous API without a worker


def test_get_recommendation_answers_202_when_the_job_is_not_done_in_time(web):
    response = web.get("/recommendation?customer_id=abc&top=3")
    assert response.status_code == 202
    body = response.get_json()
    assert response.headers["Location"] == body["status_url"]
    assert web.get(body["status_url"]).get_json()["state"] == "queued"


def test_customers_come_from_the_list_a_worker_published(web, rdb):
    rdb.set(names.CUSTOMERS_KEY, json.dumps({"model_version": "v1", "customers": ["a", "b", "c"]}))
    try:
        response = web.get("/customers?limit=2")
        assert response.status_code == 200
        assert response.get_json() == {"customers": ["a", "b"], "model_version": "v1"}
    finally:
        rdb.delete(names.CUSTOMERS_KEY)


def test_customers_without_a_published_list_or_worker_is_503(web, rdb):
    rdb.delete(names.CUSTOMERS_KEY)
    assert_json_error(web.get("/customers"), 503)


# ---------------------------------------------------------------- JSON errors everywhere


def test_404_and_405_are_json(web):
    assert_json_error(web.get("/no/such/page"), 404)
    assert_json_error(web.get("/jobs"), 405)
    assert_json_error(web.delete("/healthz"), 405)


def test_unexpected_errors_are_json_500(make_app, web_settings):
    app = make_app(web_settings)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret details")

    response = app.test_client().get("/boom")
    body = assert_json_error(response, 500)
    assert "secret" not in response.get_data(as_text=True)
    assert body["error"] == "Internal server error"


# ---------------------------------------------------------------- OpenAPI


def _spec_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_openapi_matches_the_routes(web_app, web):
    spec = web.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    routes: dict[str, set[str]] = {}
    for rule in web_app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        routes.setdefault(_spec_path(rule.rule), set()).update(
            m.lower() for m in rule.methods - {"HEAD", "OPTIONS"}
        )
    documented = {
        path: set(ops) & {"get", "post", "put", "patch", "delete"} for path, ops in spec["paths"].items()
    }
    assert set(routes) == set(documented)
    for path, methods in routes.items():
        assert methods == documented[path], path
    for path in (
        "/jobs",
        "/jobs/batch",
        "/jobs/{job_id}",
        "/recommendation",
        "/customers",
        "/healthz",
        "/readyz",
        "/products/{product_id}/similar",
        "/customers/{customer_id}/rated",
    ):
        assert path in spec["paths"]
    assert "requestBody" in spec["paths"]["/jobs"]["post"]


# ---------------------------------------------------------------- demo page and images


def test_index_page(web):
    response = web.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "Fashion recommender" in response.get_data(as_text=True)


def test_media_serves_images_under_var_only(web, web_settings):
    image = web_settings.var_dir / "pics" / "p1.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    (web_settings.var_dir / "secret.txt").write_text("no")
    assert web.get("/media/pics/p1.png").status_code == 200
    assert_json_error(web.get("/media/secret.txt"), 404)
    assert_json_error(web.get("/media/../../etc/passwd.png"), 404)
    assert_json_error(web.get("/media/pics/missing.png"), 404)


def test_image_urls_are_added_to_results(web_app, web_settings):
    from web.service import with_image_urls

    local = str(web_settings.var_dir / "world" / "images" / "P1.png")
    result = {
        "items": [
            {"image": local},
            {"image": "https://cdn.example/x.jpg"},
            {"image": ""},
            {"image": "/etc/passwd"},
        ]
    }
    with web_app.test_request_context():
        items = with_image_urls(result)["items"]
    assert [i["image_url"] for i in items] == [
        "/media/world/images/P1.png",
        "https://cdn.example/x.jpg",
        None,
        None,
    ]
    assert not [i for i in items if "image" in i]  # the server path never reaches a client


@pytest.mark.parametrize(
    "code, status",
    [
        ("invalid_input", 400),
        ("not_found", 404),
        ("model_unavailable", 503),
        ("timeout", 503),
        ("expired", 410),
        ("internal", 500),
        (None, 500),
        ("no-such-code", 500),
    ],
)
def test_a_failed_job_answers_the_status_of_its_code(web_app, code, status):
    """web.errors is the one place where a worker's error code becomes an HTTP status."""
    from web.errors import job_failed

    with web_app.test_request_context():
        response = job_failed({"job_id": "j1", "error": "why", "error_code": code})
    body = assert_json_error(response, status)
    assert body["job_id"] == "j1" and body["error"] == "why"


def test_worker_errors_cross_as_codes_not_class_names():
    """The code travels in the exception's args, which Celery keeps through JSON: a class the web
    cannot import (rebuilt by Celery as a stand-in) still gives its code; an uncoded exception
    (a crash outside the task body, a lost worker) is internal and shows no details."""
    from tasks import errors
    from tasks.celery_app import make_celery

    app = make_celery()
    stored = json.loads(
        json.dumps(  # what the result backend keeps
            app.backend.prepare_exception(errors.TaskFailure(errors.MODEL_UNAVAILABLE, "m"))
        )
    )
    assert stored["exc_message"] == ["model_unavailable", "m"]
    stand_in = app.backend.exception_to_python({**stored, "exc_module": "no.such.module"})
    assert type(stand_in) is not errors.TaskFailure
    assert errors.failure_code(stand_in) == "model_unavailable"
    assert errors.failure_message(stand_in) == "m"
    crash = ValueError("/srv/models/v1/products.json: Expecting value")
    assert errors.failure_code(crash) == "internal"
    assert "/srv" not in errors.failure_message(crash)
    app.close()
