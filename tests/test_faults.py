"""Faults on purpose, against the real embedded Redis (password, append-only file) and real prefork
workers: a pool child killed mid-task, a worker's main process killed, Redis crashed and restarted.
Every accepted job (202) must succeed exactly once with the result the model gives in process.

Exactly once is counted in the workers' logs (Celery logs "Task <name>[<id>] succeeded in" once per
run that stored a result); correct is the in-process `Recommender.recommend` of the version the job
names. Small timeouts make redelivery take seconds here (visibility timeout VT, sweep every second);
the 100-job runs with timings are `python -m bench faults` (bench/faults.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from dataclasses import replace

import pytest
import redis
from fault_app import HOLD

from ml.registry import ModelRegistry
from support import RedisServer, Worker
from tasks import names

pytestmark = [pytest.mark.service, pytest.mark.fault]

SOFT_S, HARD_S, VT_S = 9, 10, 12  # task limits and broker visibility timeout for these workers
HOLD_S = 8.0  # the held job's first run (killed before it ends)
N_JOBS = 40
SUCCEEDED = re.compile(r"Task (\S+)\[([0-9a-f-]{36})\] succeeded in ")


class FaultService:
    def __init__(self, tmp, settings, make_app) -> None:
        from tasks.celery_app import make_celery

        self.tmp = tmp
        self.redis = RedisServer(tmp, appendfsync="always")
        self.settings = replace(
            settings,
            redis_url=self.redis.url,
            task_soft_time_limit_s=SOFT_S,
            task_time_limit_s=HARD_S,
            broker_visibility_timeout_s=VT_S,
            broker_restore_interval_s=1,
            readyz_timeout_s=1.0,
        )
        self.celery = make_celery(self.settings)
        self.web = make_app(self.settings).test_client()
        self.workers: list[Worker] = []
        self.db = redis.Redis.from_url(self.redis.url, decode_responses=True)

    def start_worker(self) -> Worker:
        name = f"fault{len(self.workers)}"
        worker = Worker(self.settings, self.tmp / f"{name}.log", name, app="tests.fault_app:app")
        self.workers.append(worker)
        worker.wait_ready(self.celery)
        return worker

    @property
    def worker(self) -> Worker:
        return self.workers[-1]

    def logs(self) -> str:
        return "".join(w.log() for w in self.workers)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.db.close()
        self.celery.close()
        self.redis.stop()


@pytest.fixture(scope="module")
def faults(tmp_path_factory, settings, make_app_module):
    service = FaultService(tmp_path_factory.mktemp("faults"), settings, make_app_module)
    try:
        service.start_worker()
        yield service
    finally:
        service.close()


@pytest.fixture(scope="module")
def make_app_module():
    from web import create_app

    return lambda settings: create_app({"TESTING": True, "SETTINGS": settings})


@pytest.fixture(scope="module")
def expected(models_dir):
    """expected(version, customer, top) -> product ids, from the artifact in process."""
    from ml.recommender import Recommender

    registry, loaded = ModelRegistry(models_dir), {}

    def ids(version: str, customer: str, top: int) -> list[str]:
        if version not in loaded:
            loaded[version] = Recommender.load(registry.path_for(version))
        return [item["product_id"] for item in loaded[version].recommend(customer, top=top)]

    return ids


def post_jobs(faults: FaultService, customers: list[str], n: int) -> dict[str, tuple[str, int]]:
    """POST /jobs n times; {job_id: (customer, top)} of the accepted (202) ones."""
    jobs = {}
    for k in range(n):
        customer, top = customers[k % len(customers)], 1 + k % 5
        response = faults.web.post("/jobs", json={"customer_id": customer, "top": top})
        assert response.status_code == 202, response.get_data(as_text=True)
        jobs[response.get_json()["job_id"]] = (customer, top)
    return jobs


def hold_running(faults: FaultService):
    """Send the holding job and return it once its first run has started."""
    res = faults.celery.send_task(HOLD, args=[HOLD_S], queue=names.INFERENCE_QUEUE)
    wait_for(lambda: res.state == "STARTED", 120, "the holding job to start")
    return res


def wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def wait_all_finished(faults: FaultService, job_ids, timeout_s: float) -> None:
    pending = set(job_ids)

    def done() -> bool:
        for job_id in list(pending):
            if faults.celery.AsyncResult(job_id).state in ("SUCCESS", "FAILURE"):
                pending.discard(job_id)
        return not pending

    wait_for(done, timeout_s, f"{len(pending)} jobs")


def check_jobs(faults: FaultService, jobs: dict, expected) -> None:
    """Every job succeeded with the in-process result of its version, and ran to a result once."""
    for job_id, (customer, top) in jobs.items():
        response = faults.web.get(f"/jobs/{job_id}")
        assert response.status_code == 200
        job = response.get_json()
        assert job["state"] == "succeeded", job
        got = [item["product_id"] for item in job["result"]["items"]]
        assert got == expected(job["model_version"], customer, top), job
    runs = Counter(job_id for _, job_id in SUCCEEDED.findall(faults.logs()))
    assert {job_id: runs[job_id] for job_id in jobs} == {job_id: 1 for job_id in jobs}


def customers_for(known_customers) -> list[str]:
    return list(known_customers) + ["cold-start-1", "cold-start-2"]


def test_pool_child_killed_mid_task(faults, known_customers, expected):
    """kill -9 the pool child while it runs a job, with N_JOBS queued behind it: the running job is
    requeued at once (reject_on_worker_lost), a new child serves it and every queued job."""
    held = hold_running(faults)
    jobs = post_jobs(faults, customers_for(known_customers), N_JOBS)
    (child,) = faults.worker.pool_children()
    assert held.state == "STARTED"  # still in its first run
    os.kill(child, signal.SIGKILL)
    wait_all_finished(faults, [held.id, *jobs], 180)
    assert held.state == "SUCCESS", held.result
    assert held.result["runs"] == 2 and held.result["pid"] != child  # killed once, run again elsewhere
    check_jobs(faults, jobs, expected)
    assert Counter(i for _, i in SUCCEEDED.findall(faults.logs()))[held.id] == 1
    assert faults.worker.proc.poll() is None  # the worker itself lived on
    assert "WorkerLostError" in faults.worker.log()


def test_worker_main_process_killed(faults, known_customers, expected):
    """kill -9 the worker's main process while a job runs and N_JOBS wait; a new worker starts.
    The queued jobs are consumed by it; the unacknowledged running job comes back after the
    visibility timeout (or, when the orphaned child still stored its result, is not run again)."""
    old = faults.worker
    held = hold_running(faults)
    jobs = post_jobs(faults, customers_for(known_customers), N_JOBS)
    old.kill_main()
    killed_at = time.monotonic()
    faults.start_worker()
    wait_all_finished(faults, [held.id, *jobs], VT_S + 180)
    recovery_s = time.monotonic() - killed_at
    assert held.state == "SUCCESS", held.result
    check_jobs(faults, jobs, expected)
    assert Counter(i for _, i in SUCCEEDED.findall(faults.logs()))[held.id] == 1
    print(f"main process killed: {len(jobs) + 1} jobs, all succeeded once, {recovery_s:.1f}s to the last")


def test_redis_crash_and_restart(faults, known_customers, expected):
    """SIGKILL Redis with jobs queued and one running, POST on during the outage (503 JSON within
    2 s each, /readyz 503), start it again on the same folder: /readyz is 200 within 30 s, the
    worker consumes again (celery #8030) and every 202 job succeeds once, those from before the
    crash included (appendfsync always: a 202 is answered after the message is on disk)."""
    customers = customers_for(known_customers)
    held = hold_running(faults)
    before = post_jobs(faults, customers, N_JOBS // 2)
    faults.redis.kill()
    outage_posts = 0
    outage_end = time.monotonic() + 3.0
    while time.monotonic() < outage_end:
        started = time.monotonic()
        response = faults.web.post("/jobs", json={"customer_id": customers[0], "top": 3})
        assert time.monotonic() - started < 2.0  # the deadline for a 503
        assert response.status_code == 503 and response.mimetype == "application/json"
        assert response.get_json()["error"]
        outage_posts += 1
    ready = faults.web.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["ready"] is False
    faults.redis.start()
    restarted_at = time.monotonic()
    wait_for(lambda: faults.web.get("/readyz").status_code == 200, 30, "/readyz 200 after the restart")
    ready_s = time.monotonic() - restarted_at
    after = post_jobs(faults, customers, N_JOBS // 2)
    wait_all_finished(faults, [held.id, *before, *after], VT_S + 120)
    assert held.state == "SUCCESS", held.result
    check_jobs(faults, {**before, **after}, expected)
    assert outage_posts >= 2
    print(
        f"redis crash: {len(before) + len(after) + 1} jobs succeeded once, {outage_posts} POSTs "
        f"answered 503 during the outage, /readyz 200 {ready_s:.1f}s after the restart"
    )


def test_job_state_expires(faults):
    """What a job leaves in Redis has a TTL (results: result_expires_s, the job registry:
    job_registry_ttl_s); keys without one are the fixed set of the broker and the published model."""
    keys = list(faults.db.scan_iter(count=1000))
    no_ttl = sorted(k for k in keys if faults.db.ttl(k) == -1)
    per_job = [k for k in no_ttl if k.startswith(("celery-task-meta-", "recsys:job:", "tests:hold:"))]
    assert len(keys) > 2 * N_JOBS and per_job == [], per_job
    assert len(no_ttl) <= 10, no_ttl  # queues, kombu bindings, unacked index, the model key
    published = json.loads(faults.db.get(names.CUSTOMERS_KEY))
    assert published["model_version"] in ModelRegistry(faults.settings.models_dir).versions()
