"""Fast job completion through HTTP: the synchronous GET /recommendation and GET /jobs/<id>?wait=N
learn of completion from the result backend's pub/sub message (web.service.wait), not by sleeping.

Against the real session stack (a real Redis and a real prefork worker), plus a Redis no worker
listens on (`idle_redis`) where a test completes the job itself through Celery's result backend
(SET + PUBLISH, exactly what a worker does). Assertions are about order and counts, never durations.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from dataclasses import replace

import pytest
import redis

import web.jobs
import web.service
from ml.config import REPO_ROOT
from scripts.procs import wait_until

# ---------------------------------------------------------------- helpers


def json_of(response) -> tuple[int, dict]:
    assert response.mimetype == "application/json", response.get_data(as_text=True)
    return response.status_code, response.get_json()


def channel(job_id: str) -> str:
    return f"celery-task-meta-{job_id}"


def subscribers(url: str, job_ids: list[str]) -> dict[str, int]:
    """PUBSUB NUMSUB of each job's result channel on the Redis at `url`."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return dict(client.pubsub_numsub(*[channel(j) for j in job_ids]))
    finally:
        client.close()


class Waiter(threading.Thread):
    """GET `path` through its own test client in a thread; keeps (status, body)."""

    def __init__(self, app, path: str) -> None:
        super().__init__(daemon=True)
        self.app, self.path = app, path
        self.answer: tuple[int, dict] | None = None

    def run(self) -> None:
        self.answer = json_of(self.app.test_client().get(self.path))


@pytest.fixture
def state_reads(monkeypatch) -> list[str]:
    """Counts every read of a job's stored state (web.service.stored_meta) by the views and `wait`."""
    calls: list[str] = []
    real = web.service.stored_meta

    def counting(job_id):
        meta = real(job_id)
        calls.append(job_id)  # after the read: a count of completed reads
        return meta

    monkeypatch.setattr(web.service, "stored_meta", counting)
    return calls


@pytest.fixture
def idle_settings(base_settings, idle_redis):
    return replace(base_settings, redis_url=idle_redis.url, sync_wait_s=0.3)


@pytest.fixture
def idle_app(make_app, idle_settings):
    return make_app(idle_settings)


@pytest.fixture
def backend(idle_settings):
    """Celery's result backend on the idle Redis: stores results the way a worker does."""
    from tasks.celery_app import make_celery

    app = make_celery(idle_settings)
    yield app.backend
    app.close()


def post_job(client, customer_id: str = "abc", top: int = 3) -> str:
    status, body = json_of(client.post("/jobs", json={"customer_id": customer_id, "top": top}))
    assert status == 202, body
    return body["job_id"]


def fake_result(job_id: str) -> dict:
    return {
        "customer_id": f"for-{job_id}",
        "top": 1,
        "items": [],
        "cold_start": True,
        "model_version": "v-test",
    }


# ---------------------------------------------------------------- with the real worker


@pytest.mark.service
def test_sync_get_returns_the_result_of_the_finished_job(client, worker, known_customers):
    status, body = json_of(client.get(f"/recommendation?customer_id={known_customers[0]}&top=3"))
    assert status == 200, body
    assert body["customer_id"] == known_customers[0] and len(body["items"]) == 3
    _, job = json_of(client.get(f"/jobs/{body['job_id']}"))
    assert job["state"] == "succeeded"
    assert [i["product_id"] for i in job["result"]["items"]] == [i["product_id"] for i in body["items"]]


@pytest.mark.service
def test_long_poll_answers_succeeded_with_the_result(client, worker, known_customers, settings):
    job_id = post_job(client, known_customers[1], 4)
    status, job = json_of(client.get(f"/jobs/{job_id}?wait=30"))
    assert status == 200
    assert job["state"] == "succeeded", job
    assert job["result"]["customer_id"] == known_customers[1] and len(job["result"]["items"]) == 4
    assert subscribers(settings.redis_url, [job_id]) == {channel(job_id): 0}


@pytest.mark.service
def test_many_concurrent_waiters_each_get_their_own_result(app, worker, known_customers, settings):
    """gthread serves requests from many threads: every waiter has its own subscription."""
    client = app.test_client()
    wanted = [(known_customers[i % len(known_customers)], 1 + i % 5) for i in range(12)]
    job_ids = [post_job(client, c, top) for c, top in wanted]
    waiters = [Waiter(app, f"/jobs/{j}?wait=30") for j in job_ids]
    syncs = [Waiter(app, f"/recommendation?customer_id={c}&top={top}") for c, top in wanted[:6]]
    for thread in waiters + syncs:
        thread.start()
    for thread in waiters + syncs:
        thread.join(120)
    for (customer, top), waiter in zip(wanted, waiters):
        status, job = waiter.answer
        assert status == 200 and job["state"] == "succeeded", job
        assert (job["result"]["customer_id"], len(job["result"]["items"])) == (customer, top)
    sync_ids = []
    for (customer, top), sync in zip(wanted, syncs):
        status, body = sync.answer
        assert status == 200, body
        assert (body["customer_id"], len(body["items"])) == (customer, top)
        sync_ids.append(body["job_id"])
    assert set(subscribers(settings.redis_url, job_ids + sync_ids).values()) == {0}


@pytest.mark.service
def test_the_web_process_never_imports_tensorflow_while_waiting(settings, worker, known_customers):
    """A fresh process serves a synchronous GET and a long-poll, then has no TensorFlow/Keras."""
    code = (
        "import json, sys\n"
        "from dataclasses import replace\n"
        "from ml.config import Settings\n"
        "from web import create_app\n"
        f"s = replace(Settings(), redis_url={settings.redis_url!r}, sync_wait_s=60.0)\n"
        "c = create_app({'SETTINGS': s}).test_client()\n"
        f"r = c.get('/recommendation?customer_id={known_customers[0]}&top=2')\n"
        f"j = c.post('/jobs', json={{'customer_id': {known_customers[1]!r}, 'top': 2}}).get_json()\n"
        "w = c.get(f\"/jobs/{j['job_id']}?wait=30\").get_json()\n"
        "print(json.dumps([r.status_code, w['state'],"
        " sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [200, "succeeded", []]


# ---------------------------------------------------------------- order and counts (idle Redis)


def test_waiter_wakes_on_the_published_result(idle_app, backend, idle_redis, state_reads, monkeypatch):
    """The waiter is subscribed before the job finishes and wakes on the message, not on a timer:
    1 read by the view, 1 right after subscribing, none on the message (it carries the state)."""
    monkeypatch.setattr(web.service, "RECHECK_S", 3600.0)  # no safety-net re-read in this test
    job_id = post_job(idle_app.test_client())
    waiter = Waiter(idle_app, f"/jobs/{job_id}?wait=30")
    waiter.start()
    # The view's read, then the read right after subscribing: from here on it waits for a message.
    wait_until(lambda: len(state_reads) == 2, 60, interval_s=0.02, what="the waiter's reads")
    assert subscribers(idle_redis.url, [job_id])[channel(job_id)] == 1
    assert waiter.is_alive() and waiter.answer is None  # still waiting: nothing published yet
    backend.store_result(job_id, fake_result(job_id), "SUCCESS")  # SET + PUBLISH, like a worker
    waiter.join(120)
    assert waiter.answer is not None, "the waiter did not wake up on the published result"
    status, job = waiter.answer
    assert status == 200 and job["state"] == "succeeded"
    assert job["result"]["customer_id"] == f"for-{job_id}"
    assert state_reads == [job_id] * 2  # the answer is the published state, not read again
    assert subscribers(idle_redis.url, [job_id])[channel(job_id)] == 0


def test_the_waiter_takes_the_newest_of_the_states_queued_for_it(idle_redis):
    """States published while the waiter was busy (a training job's PROGRESS, then more) are read
    up to the newest one, so an answer at the deadline is never older than what was published."""
    pubsub = redis.Redis.from_url(idle_redis.url).pubsub()
    publisher = redis.Redis.from_url(idle_redis.url)
    try:
        pubsub.subscribe("job-channel")
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        assert web.service._latest_message(pubsub, 0.05) is None  # nothing published: None in time
        for epoch in (1, 2, 3):
            publisher.publish("job-channel", json.dumps({"status": "PROGRESS", "result": {"epoch": epoch}}))
        # the waiter busy until all three are on its socket (PUBLISH's reply can come first: on a
        # loaded machine the third was not yet there once, and the newest then was the second)
        wait_until(lambda: _unread(pubsub).count(b"epoch") == 3, 5, 0.01, what="three queued states")
        message = web.service._latest_message(pubsub, 5)
        assert json.loads(message["data"])["result"] == {"epoch": 3}
        assert web.service._latest_message(pubsub, 0.05) is None  # the older two were consumed with it
    finally:
        pubsub.close()
        publisher.close()


def _unread(pubsub: redis.client.PubSub) -> bytes:
    """What the subscriber's socket holds and nothing has read yet (peeked: left there)."""
    try:
        return pubsub.connection._sock.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""


def test_a_result_stored_before_the_subscription_is_seen(idle_app, backend, idle_redis, monkeypatch):
    """The result lands between the view's first read and the SUBSCRIBE: `wait` reads the state
    after subscribing, so it answers without ever waiting for a message."""
    monkeypatch.setattr(web.service, "RECHECK_S", 3600.0)
    job_id = post_job(idle_app.test_client())
    real_subscribe = web.service._subscribe
    blocking_reads: list[float] = []

    def store_first(pubsub, name, deadline):
        backend.store_result(job_id, fake_result(job_id), "SUCCESS")  # published to nobody
        real_get_message = pubsub.get_message

        def get_message(ignore_subscribe_messages=False, timeout=0.0):
            if ignore_subscribe_messages:
                blocking_reads.append(timeout)
            return real_get_message(ignore_subscribe_messages=ignore_subscribe_messages, timeout=timeout)

        pubsub.get_message = get_message
        real_subscribe(pubsub, name, deadline)

    monkeypatch.setattr(web.service, "_subscribe", store_first)
    status, job = json_of(idle_app.test_client().get(f"/jobs/{job_id}?wait=5"))
    assert status == 200 and job["state"] == "succeeded"
    assert job["result"]["customer_id"] == f"for-{job_id}"
    assert blocking_reads == []  # never waited for a message that had already gone by
    assert subscribers(idle_redis.url, [job_id])[channel(job_id)] == 0


def test_a_job_that_never_runs_is_still_queued_after_the_budget(idle_app, idle_redis):
    client = idle_app.test_client()
    response = client.get("/recommendation?customer_id=abc&top=3")  # sync_wait_s = 0.3
    status, body = json_of(response)
    assert status == 202 and response.headers["Location"] == body["status_url"]
    job_id = body["job_id"]
    status, job = json_of(client.get(f"/jobs/{job_id}?wait=0.3"))
    assert status == 200 and job["state"] == "queued"
    assert subscribers(idle_redis.url, [job_id])[channel(job_id)] == 0


def test_a_finished_job_answers_without_subscribing(idle_app, backend, state_reads, monkeypatch):
    job_id = post_job(idle_app.test_client())
    backend.store_result(job_id, fake_result(job_id), "SUCCESS")
    monkeypatch.setattr(web.jobs, "wait", lambda *a: pytest.fail("waited for a finished job"))
    status, job = json_of(idle_app.test_client().get(f"/jobs/{job_id}?wait=30"))
    assert status == 200 and job["state"] == "succeeded" and state_reads == [job_id]


def test_plain_get_does_not_wait(idle_app, state_reads, monkeypatch):
    monkeypatch.setattr(web.jobs, "wait", lambda *a: pytest.fail("a plain GET waited"))
    job_id = post_job(idle_app.test_client())
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}?wait=0"):
        status, job = json_of(idle_app.test_client().get(path))
        assert status == 200 and job["state"] == "queued"
    assert state_reads == [job_id, job_id]


# ---------------------------------------------------------------- failures


def test_redis_dying_during_a_long_poll_is_503(make_app, base_settings, spare_redis):
    app = make_app(replace(base_settings, redis_url=spare_redis.url))
    job_id = post_job(app.test_client())
    waiter = Waiter(app, f"/jobs/{job_id}?wait=30")
    waiter.start()
    wait_until(
        lambda: subscribers(spare_redis.url, [job_id])[channel(job_id)] == 1,
        60,
        interval_s=0.02,
        what="the waiter's subscription",
    )
    spare_redis.stop()
    waiter.join(120)
    assert waiter.answer is not None, "the waiter hung after Redis went away"
    status, body = waiter.answer
    assert status == 503 and body["error"]


def test_long_poll_with_redis_down_is_503(make_app, base_settings, dead_redis_url):
    client = make_app(replace(base_settings, redis_url=dead_redis_url)).test_client()
    status, body = json_of(client.get("/jobs/00000000-0000-0000-0000-000000000000?wait=5"))
    assert status == 503 and body["error"]


# ---------------------------------------------------------------- ?wait= validation


@pytest.mark.parametrize(
    "query",
    [
        "wait=-1",
        "wait=abc",
        "wait=",
        "wait=1e3",
        "wait=nan",
        "wait=inf",
        "wait=0.5.5",
        "wait=+1",
        "wait=30.001",
        "wait=31",
        "wait=1&other=2",
    ],
)
def test_bad_wait_is_400_json(idle_app, query):
    job_id = post_job(idle_app.test_client())
    status, body = json_of(idle_app.test_client().get(f"/jobs/{job_id}?{query}"))
    assert status == 400 and body["error"], body


def test_wait_maximum_comes_from_settings(make_app, idle_settings):
    client = make_app(replace(idle_settings, job_wait_max_s=0.5)).test_client()
    job_id = post_job(client)
    assert json_of(client.get(f"/jobs/{job_id}?wait=0.5"))[1]["state"] == "queued"
    status, body = json_of(client.get(f"/jobs/{job_id}?wait=0.6"))
    assert status == 400 and body["detail"] == {"query": {"wait": ["at most 0.5 seconds"]}}


def test_unknown_job_with_wait_is_404(idle_app):
    status, body = json_of(idle_app.test_client().get("/jobs/00000000-0000-0000-0000-000000000000?wait=5"))
    assert status == 404 and body["error"]


def test_wait_is_documented(idle_app):
    spec = idle_app.test_client().get("/openapi.json").get_json()
    operation = spec["paths"]["/jobs/{job_id}"]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert params["wait"]["in"] == "query" and "RECSYS_JOB_WAIT_MAX_S" in params["wait"]["description"]
    assert {"200", "400", "404", "503"} <= set(operation["responses"])


def test_submitting_opens_no_result_subscription(idle_app, idle_redis):
    """Celery's shared result consumer would subscribe to each job's channel on send (and unsubscribe
    when the AsyncResult is collected) on a connection whose replies nobody reads."""
    from web import SubmitOnlyRedisBackend
    from web.service import get_celery

    client = idle_app.test_client()
    for n in range(5):
        post_job(client, customer_id=f"c{n}")
    last_commands = [c.get("cmd") for c in redis.Redis.from_url(idle_redis.url).client_list()]
    assert not {"subscribe", "unsubscribe"} & set(last_commands), last_commands
    with idle_app.app_context():
        assert isinstance(get_celery().backend, SubmitOnlyRedisBackend)


def test_a_waiting_request_opens_its_subscription_without_handshake_round_trips(idle_app, idle_redis):
    """Each wait opens a new connection (web.service.wait): with redis-py's defaults that is HELLO
    and two CLIENT SETINFO before the SUBSCRIBE, three round trips on the request's path."""
    client = idle_app.test_client()
    assert client.get("/recommendation?customer_id=abc&top=3").status_code == 202  # pools warmed
    admin = redis.Redis.from_url(idle_redis.url, decode_responses=True)
    try:
        admin.config_resetstat()
        assert client.get("/recommendation?customer_id=abc&top=3").status_code == 202
        stats = admin.info("commandstats")
    finally:
        admin.close()
    assert "cmdstat_subscribe" in stats, sorted(stats)
    assert not {"cmdstat_hello", "cmdstat_client"} & set(stats), sorted(stats)
