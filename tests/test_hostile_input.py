"""Hostile and malformed input, and server-side faults (issue 14, items 3, 4 and part of 7).

* Generated: schemathesis reads the app's own `/openapi.json` and sends cases (valid and invalid by
  the document) to every operation of the real app, through its WSGI interface, with the session's
  real Redis and real prefork worker behind it (tests/conftest.py). Every answer must be JSON or the
  documented media type, have a documented status, match its documented schema, and never be a 5xx.
* By hand: bodies over the size limit, nesting, odd encodings and traversal on /media, unicode /
  empty / 10 kB customer ids, batches over the limit, `top` of the wrong type.
* Faults (real prefork workers, their own Redis and registry): no CURRENT, and an artifact that does
  not load (its loader raises a ValueError), are 503 JSON saying so, never a 400 `invalid input`;
  the worker sets the error code, the web maps it.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import replace

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hyp_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ml.registry import ModelRegistry

# The checks every generated answer goes through. Not `positive_data_acceptance`: the document
# cannot say everything the views check (the `wait` bound and max_batch come from the settings,
# query numbers must be plain decimals), so a 400 for a schema-valid case is not a defect by
# itself; every 4xx still has to be documented and match the documented error schema.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# Cases per operation, for every operation (every route but /openapi.json itself); the ones without
# parameters (/healthz, /readyz, /, /docs) give hypothesis little to vary, so the total is counted,
# not assumed (test_generated_cases_cover_every_operation).
EXAMPLES_PER_OPERATION = 140
# Model management is on, with a token no generated case carries: its routes must answer 401 (they
# must never start a training run from generated input); tests/test_web_models.py covers the rest.
ADMIN_TOKEN = "generated-cases-never-know-this"
MIN_GENERATED_CASES = 1000
GENERATED: Counter[str] = Counter()
STATUSES: Counter[tuple[str, int]] = Counter()


def _spec_app():
    """The app whose /openapi.json drives the generation: built like every other (create_app), with
    the Redis URL unused (the spec does not depend on it). Cases are sent to `generated_app`, the
    same code wired to the session's Redis and worker; test_generated_cases_cover_every_operation
    checks both serve the same document. (A schema from a fixture, schemathesis.pytest.from_fixture,
    does not work with pytest 9: it sets Function._nodeid, which pytest 9 no longer has.)"""
    from ml.config import Settings
    from web import create_app

    return create_app(
        {
            "TESTING": True,
            "SETTINGS": replace(
                Settings(), redis_url="redis://127.0.0.1:1/0", max_batch=5, admin_token=ADMIN_TOKEN
            ),
        }
    )


schema = schemathesis.openapi.from_wsgi("/openapi.json", _spec_app())
schema.config.generation.update(max_examples=EXAMPLES_PER_OPERATION, modes=["positive", "negative"])


@pytest.fixture(scope="module")
def generated_app(settings, worker):
    """The real app against the session Redis and worker; short waits so no case blocks for long."""
    from web import create_app

    return create_app(
        {
            "TESTING": True,
            "SETTINGS": replace(
                settings,
                sync_wait_s=0.5,
                job_wait_max_s=0.5,
                readyz_timeout_s=0.5,
                max_batch=5,
                admin_token=ADMIN_TOKEN,
            ),
        }
    )


@pytest.mark.service
@schema.parametrize()
@hyp_settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_generated_cases(case, generated_app):
    response = case.call(app=generated_app)
    label = f"{case.method} {case.path}"
    GENERATED[label] += 1
    STATUSES[(label, response.status_code)] += 1
    case.validate_response(response, checks=CHECKS, transport_kwargs={"app": generated_app})


@pytest.mark.service
def test_generated_cases_cover_every_operation(generated_app):
    """Runs after test_generated_cases (file order): enough cases, every operation reached."""
    spec = generated_app.test_client().get("/openapi.json").get_json()
    assert spec == schema.raw_schema  # the cases came from the document the real app serves
    operations = {f"{method.upper()} {path}" for path, ops in spec["paths"].items() for method in ops}
    assert GENERATED, "test_generated_cases did not run in this session (run the whole module)"
    statuses = Counter()
    for (_, status), n in STATUSES.items():
        statuses[status] += n
    print(
        f"\ngenerated cases: {sum(GENERATED.values())} over {len(GENERATED)} operations; "
        f"per operation: {dict(GENERATED)}; statuses: {dict(sorted(statuses.items()))}"
    )
    # every documented operation got cases (but the document itself, which schemathesis leaves out:
    # it read it to load the schema); it also sends each path the methods it does not document
    # (TRACE, PUT, ...), which must be 405 JSON (or 200 for OPTIONS)
    operations.discard("GET /openapi.json")
    assert operations <= set(GENERATED), operations - set(GENERATED)
    assert sum(GENERATED.values()) >= MIN_GENERATED_CASES
    assert not [key for key in STATUSES if key[1] >= 500]


# ---------------------------------------------------------------- by hand (no worker needed)


@pytest.fixture
def idle_web(make_app, base_settings, idle_redis):
    """A Redis no worker consumes from: accepted jobs stay queued, nothing waits long."""
    return make_app(
        replace(base_settings, redis_url=idle_redis.url, sync_wait_s=0.2, max_batch=3)
    ).test_client()


def json_error(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body["error"], str) and body["error"] and body["status"] == status
    return body


@pytest.mark.parametrize("path", ["/jobs", "/jobs/batch"])
def test_a_2_mb_body_is_413_json(idle_web, path):
    body = json.dumps({"customer_id": "a" * (2 * 1024 * 1024)})
    json_error(idle_web.post(path, data=body, content_type="application/json"), 413)
    spec = idle_web.get("/openapi.json").get_json()
    assert "413" in spec["paths"][path]["post"]["responses"]  # documented


@pytest.mark.parametrize(
    "body",
    [
        "[" * 200_000 + "]" * 200_000,
        '{"customer_ids": ' + "[" * 5_000 + "]" * 5_000 + "}",
        '{"customer_id": ' + '{"a": ' * 3_000 + "1" + "}" * 3_000 + "}",
    ],
    ids=["array-200k-deep", "ids-5k-deep", "object-3k-deep"],
)
@pytest.mark.parametrize("path", ["/jobs", "/jobs/batch"])
def test_deeply_nested_json_is_400_not_a_crash(idle_web, path, body):
    json_error(idle_web.post(path, data=body, content_type="application/json"), 400)


MEDIA_ATTACKS = [
    "/media/../../etc/passwd.png",
    "/media/%2e%2e/%2e%2e/etc/passwd.png",
    "/media/..%2f..%2fetc%2fpasswd.png",
    "/media/%2E%2E%2F%2E%2E%2Fsecret.png",
    "/media/..%5c..%5csecret.png",
    "/media/..\\..\\secret.png",
    "/media/%252e%252e/%252e%252e/secret.png",
    "/media/%c0%ae%c0%ae/secret.png",
    "/media/pics/%00p1.png",
    "/media/pics/p1.png%00.png",
    "/media//etc/passwd.png",
    "/media/%2fetc%2fpasswd.png",
    "/media/./../secret.png",
    "/media/pics/../../secret.png",
    "/media/%ff%fe.png",
    "/media/" + "a" * 5000 + ".png",
    "/media/pics",
    "/media/pics/",
    "/media/secret.txt",
    "/media/pics/p1.png/",
    "/media/pics/p1.PNG.txt",
]


def test_media_traversal_and_odd_encodings_are_404(idle_web, base_settings):
    var = base_settings.var_dir
    (var / "pics").mkdir(parents=True, exist_ok=True)
    (var / "pics" / "p1.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    (var / "secret.txt").write_text("no")
    (var.parent / "secret.png").write_bytes(b"outside var")
    assert idle_web.get("/media/pics/p1.png").status_code == 200  # the route does serve files
    for path in MEDIA_ATTACKS:
        response = idle_web.get(path)
        json_error(response, 404)
        assert b"outside var" not in response.get_data(), path


BAD_IDS = [
    "",
    " ",
    "x" * 10_240,
    "é",
    "Ｃ0001",
    "C0001\u200b",
    "\u202eC0001",
    "C\u00000001",
    "💥",
    "C0001\n",
    "C 0001",
    "../C0001",
    "C0001;DROP",
    "%43",
    "x" * 65,
]
BAD_ID_NAMES = [
    "empty",
    "space",
    "10kB",
    "accent",
    "fullwidth",
    "zero-width",
    "rtl-override",
    "nul",
    "emoji",
    "newline",
    "inner-space",
    "dotdot",
    "semicolon",
    "percent",
    "65-chars",
]


@pytest.mark.parametrize("customer_id", BAD_IDS, ids=BAD_ID_NAMES)
def test_bad_customer_ids_are_400_everywhere(idle_web, customer_id):
    from urllib.parse import quote

    json_error(idle_web.post("/jobs", json={"customer_id": customer_id}), 400)
    json_error(idle_web.post("/jobs/batch", json={"customer_ids": ["ok", customer_id]}), 400)
    json_error(idle_web.get(f"/recommendation?customer_id={quote(customer_id)}"), 400)


def test_a_batch_over_the_limit_is_400(idle_web):
    body = json_error(idle_web.post("/jobs/batch", json={"customer_ids": ["a", "b", "c", "d"]}), 400)
    assert "at most 3" in json.dumps(body["detail"])
    assert idle_web.post("/jobs/batch", json={"customer_ids": ["a", "b", "c"]}).status_code == 202


BAD_TOPS_JSON = ["10", "ten", 2.5, 10.0, True, False, -1, 0, 101, None, [], {}, 1e308]
BAD_TOPS_QUERY = [
    "ten",
    "2.5",
    "10.0",
    "true",
    "false",
    "-1",
    "0",
    "101",
    "",
    "1e1",
    "+5",
    " 5",
    "0x10",
    "５",
    "99999999999999999999",
]


@pytest.mark.parametrize("top", BAD_TOPS_JSON, ids=[repr(t) for t in BAD_TOPS_JSON])
def test_bad_top_in_a_body_is_400(idle_web, top):
    json_error(idle_web.post("/jobs", json={"customer_id": "C0001", "top": top}), 400)
    json_error(idle_web.post("/jobs/batch", json={"customer_ids": ["C0001"], "top": top}), 400)


@pytest.mark.parametrize("top", BAD_TOPS_QUERY, ids=[repr(t) for t in BAD_TOPS_QUERY])
def test_bad_top_in_a_query_is_400(idle_web, top):
    from urllib.parse import quote

    json_error(idle_web.get(f"/recommendation?customer_id=C0001&top={quote(top)}"), 400)


def test_good_top_is_accepted(idle_web):
    """The 400s above come from the value of `top`, not from something else in the request."""
    assert idle_web.post("/jobs", json={"customer_id": "C0001", "top": 100}).status_code == 202
    assert idle_web.post("/jobs/batch", json={"customer_ids": ["C0001"], "top": 1}).status_code == 202
    assert idle_web.get("/recommendation?customer_id=C0001&top=100").status_code == 202


# ---------------------------------------------------------------- job views of every kind


def _stored_job(web, backend, kind: str, result, state: str = "SUCCESS") -> str:
    body = {
        "recommend": ("/jobs", {"customer_id": "C0001"}),
        "batch": ("/jobs/batch", {"customer_ids": ["C0001", "C0002"]}),
    }
    if kind in ("customers", "similar"):
        import uuid

        from web.job_store import JobStore

        job_id = str(uuid.uuid4())
        with web.application.app_context():
            JobStore(web.application.extensions["redis"], 60).add(job_id, kind)
    else:
        job_id = web.post(body[kind][0], json=body[kind][1]).get_json()["job_id"]
    backend.store_result(job_id, result, state)
    return job_id


def test_job_views_of_every_kind_match_the_schema(idle_web, base_settings, idle_redis):
    """What a worker stores for each kind of job (and a coded failure) is served as documented:
    serialising a batch result once read dict.items for the missing "items" key (a 500)."""
    from tasks import errors
    from tasks.celery_app import make_celery

    celery = make_celery(replace(base_settings, redis_url=idle_redis.url))
    item = {
        "product_id": "P1",
        "score": 0.25,
        "predicted_rating": None,
        "title": "t",
        "image": str(base_settings.var_dir / "pics" / "p1.png"),
        "cold_start": True,
        "strategy": "popularity",
        "path": "popularity",
        "because": {"method": "popular", "products": []},
    }
    one = {"customer_id": "C0001", "items": [item], "cold_start": True}
    similar = {
        "product_id": "P2",
        "title": "u",
        "method": "content_cosine",
        "modalities": ["image"],
        "index": "exact_cosine",
        "top": 1,
        "model_version": "v1",
        "items": [{"product_id": "P1", "similarity": 0.5, "title": "t", "image": item["image"]}],
    }
    jobs = {
        "recommend": _stored_job(
            idle_web, celery.backend, "recommend", {**one, "top": 1, "model_version": "v1"}
        ),
        "batch": _stored_job(
            idle_web,
            celery.backend,
            "batch",
            {"results": [one, {**one, "customer_id": "C0002"}], "count": 2, "top": 1, "model_version": "v1"},
        ),
        "customers": _stored_job(
            idle_web, celery.backend, "customers", {"customers": ["C0001"], "model_version": "v1"}
        ),
        "similar": _stored_job(idle_web, celery.backend, "similar", similar),
        "failed": _stored_job(
            idle_web,
            celery.backend,
            "recommend",
            errors.TaskFailure(errors.MODEL_UNAVAILABLE, "no model"),
            "FAILURE",
        ),
    }
    celery.close()
    operation = schema["/jobs/{job_id}"]["GET"]
    views = {}
    for name, job_id in jobs.items():
        case = operation.Case(path_parameters={"job_id": job_id})
        response = case.call(app=idle_web.application)
        assert response.status_code == 200, response.text
        case.validate_response(response, checks=CHECKS, transport_kwargs={"app": idle_web.application})
        views[name] = response.json()
    assert views["batch"]["result"]["count"] == 2 and "items" not in views["batch"]["result"]
    assert views["recommend"]["result"]["items"][0]["image_url"] == "/media/pics/p1.png"
    assert "image" not in views["recommend"]["result"]["items"][0]
    assert views["customers"]["result"] == {"customers": ["C0001"], "model_version": "v1"}
    assert views["similar"]["result"]["items"][0]["image_url"] == "/media/pics/p1.png"
    assert (views["failed"]["state"], views["failed"]["error_code"]) == ("failed", "model_unavailable")


# ---------------------------------------------------------------- answers of the real worker


@pytest.mark.service
def test_answers_carry_no_server_paths_and_match_the_schema(generated_app, known_customers, settings):
    """Known and cold-start customers, synchronous and job views: every answer matches its
    documented schema and none carries a server file path (items have image_url, no image)."""
    client = generated_app.test_client()
    var = str(settings.var_dir)
    answers = []
    for customer in (known_customers[0], "someone-new"):
        case = schema["/recommendation"]["GET"].Case(query={"customer_id": customer, "top": "5"})
        response = case.call(app=generated_app)
        case.validate_response(response, checks=CHECKS, transport_kwargs={"app": generated_app})
        answers.append(response)
    job = client.post("/jobs/batch", json={"customer_ids": [known_customers[1], "new-1"], "top": 2})
    job_id = job.get_json()["job_id"]
    for _ in range(240):  # at most 0.5 s per wait here (job_wait_max_s)
        if client.get(f"/jobs/{job_id}?wait=0.5").get_json()["state"] in ("succeeded", "failed"):
            break
    case = schema["/jobs/{job_id}"]["GET"].Case(path_parameters={"job_id": job_id})
    response = case.call(app=generated_app)
    case.validate_response(response, checks=CHECKS, transport_kwargs={"app": generated_app})
    answers.append(response)
    known, cold, batch = (r.json() for r in answers)
    assert known["cold_start"] is False and cold["cold_start"] is True
    assert {i["strategy"] for i in cold["items"]} == {"popularity"}
    assert {i["predicted_rating"] for i in cold["items"]} == {None}  # documented as nullable
    assert batch["state"] == "succeeded" and [r["cold_start"] for r in batch["result"]["results"]] == [
        False,
        True,
    ]
    items = known["items"] + cold["items"] + [i for r in batch["result"]["results"] for i in r["items"]]
    assert items and all("image" not in i and "image_url" in i for i in items)
    assert any(i["image_url"] for i in items)  # the demo world has local images: served via /media
    for response in answers:
        assert var not in response.text and "/tmp/" not in response.text


# ---------------------------------------------------------------- server-side faults


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, base_settings):
    """Its own Redis, an empty registry and a real prefork worker."""
    from support import empty_service

    with empty_service(tmp_path_factory.mktemp("faulty"), base_settings) as service:
        yield service


def _broken_copy(source_dir, registry: ModelRegistry) -> str:
    """A copy of a real artifact whose manifest.json is cut short (a half-written file): loading it
    raises a ValueError (json.JSONDecodeError) inside the worker."""
    version = registry.new_version()
    target = registry.path_for(version)
    shutil.copytree(source_dir, target)
    manifest = json.dumps({**json.loads((target / "manifest.json").read_text()), "version": version})
    (target / "manifest.json").write_text(manifest[: len(manifest) // 2])
    return version


@pytest.mark.service
def test_no_model_and_a_broken_pointer_are_503_not_400(faulty, make_app):
    empty, _, proc = faulty
    client = make_app(replace(empty, sync_wait_s=60.0)).test_client()

    def sync_answer() -> dict:
        response = client.get("/recommendation?customer_id=C0001&top=3")
        return json_error(response, 503)

    def job_view() -> dict:
        job_id = client.post("/jobs", json={"customer_id": "C0001"}).get_json()["job_id"]
        view = client.get(f"/jobs/{job_id}?wait=30").get_json()
        assert view["state"] == "failed", view
        return view

    # no CURRENT
    body = sync_answer()
    assert body["code"] == "model_unavailable" and "no model published" in body["error"]
    view = job_view()
    assert view["error_code"] == "model_unavailable" and "no model published" in view["error"]
    _assert_no_details(empty, body, view)

    # CURRENT names no valid version (the registry raises a ValueError): not the client's fault
    empty.models_dir.mkdir(parents=True, exist_ok=True)
    (empty.models_dir / "CURRENT").write_text("../half-written")
    body = sync_answer()
    assert body["code"] == "model_unavailable" and "could not be loaded" in body["error"], body
    view = job_view()
    assert view["error_code"] == "model_unavailable"
    _assert_no_details(empty, body, view)
    log = proc.log()
    assert "the published model could not be loaded" in log and "invalid model version" in log


@pytest.mark.service
@pytest.mark.slow
def test_a_half_written_artifact_is_503_not_400(faulty, make_app, models_dir, first_version):
    """CURRENT names a real artifact copy whose manifest.json is cut short: the loader's
    json.JSONDecodeError (a ValueError) is a 503 `model_unavailable`. Marked slow: the worker's
    pool child imports TensorFlow for the load (tens of seconds on a loaded 2-core machine)."""
    empty, _, proc = faulty
    client = make_app(replace(empty, sync_wait_s=120.0)).test_client()
    registry = ModelRegistry(empty.models_dir)
    registry.publish(_broken_copy(models_dir / first_version, registry))
    body = json_error(client.get("/recommendation?customer_id=C0001&top=3"), 503)
    assert body["code"] == "model_unavailable" and "could not be loaded" in body["error"], body
    _assert_no_details(empty, body)
    assert "JSONDecodeError" in proc.log()


def _assert_no_details(settings, *answers: dict) -> None:
    for answer in answers:
        text = json.dumps(answer)
        assert str(settings.models_dir) not in text and str(settings.var_dir) not in text
        assert "Traceback" not in text and "Error:" not in text


@pytest.mark.service
def test_a_worker_exception_is_500_with_the_internal_code(faulty, make_app):
    """An exception in the task body that is no input error (here a TypeError: the task called with
    arguments it does not take) is coded `internal` by the worker: a failed job, and a 500 from the
    one place that maps codes to statuses."""
    from tasks import names
    from web.errors import job_failed
    from web.job_store import JobStore
    from web.service import describe

    empty, celery, proc = faulty
    app = make_app(empty)
    with app.app_context():
        store = JobStore(app.extensions["redis"], 60)
        res = celery.send_task(names.RECOMMEND, args=["C0001", 3, None, "unexpected"])
        store.add(res.id, "recommend")
    client = app.test_client()
    view = client.get(f"/jobs/{res.id}?wait=30").get_json()
    assert view["state"] == "failed" and view["error_code"] == "internal", view
    assert "TypeError" not in view["error"] and "unexpected" not in view["error"]
    with app.test_request_context():
        response = job_failed(describe(res.id, {"kind": "recommend"}))
    body = json_error(response, 500)
    assert body["code"] == "internal" and body["job_id"] == res.id
    assert "TypeError" in proc.log()  # the details are in the worker log
