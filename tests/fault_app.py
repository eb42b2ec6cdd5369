"""The service's Celery app plus one task that holds its pool child, for tests/test_faults.py.

A recommendation on the test model takes milliseconds: too short to kill a worker in the middle of
one on purpose. `tests.hold` stands for the job that is running when the worker dies: its first run
sleeps (and is killed), every later delivery of the same job returns at once. It counts its runs in
Redis. Run as `celery -A tests.fault_app:app worker`.
"""

from __future__ import annotations

import os
import time

import redis

from tasks.celery_app import app

HOLD = "tests.hold"


def runs_key(job_id: str) -> str:
    return f"tests:hold:runs:{job_id}"


# track_started: the tests kill the worker once this job is STARTED (the service's inference tasks
# leave that state out, tasks/celery_app.py)
@app.task(name=HOLD, bind=True, track_started=True)
def hold(self, seconds: float) -> dict:
    """First run: sleep `seconds`; later runs: return at once. Returns the run count and the pid."""
    client = redis.Redis.from_url(self.app.conf.broker_url)
    try:
        runs = client.incr(runs_key(self.request.id))
        client.expire(runs_key(self.request.id), 3600)
    finally:
        client.close()
    if runs == 1:
        time.sleep(seconds)
    return {"runs": int(runs), "pid": os.getpid()}
