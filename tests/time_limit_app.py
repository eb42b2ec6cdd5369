"""The service's Celery app plus one task that ignores its soft time limit, for tests/test_time_limits.py.

A real task stops at its soft limit (SoftTimeLimitExceeded is raised in it), so none of them can show
the hard limit at work; a task stuck in native code (a long TensorFlow op, a hung C call) would not
see the soft exception either. This task stands for that case: it swallows the soft exception and
goes on, so only the hard limit's kill can end it. Run as `celery -A tests.time_limit_app:app worker`.
"""

from __future__ import annotations

import time

import redis
from celery.exceptions import SoftTimeLimitExceeded

from tasks.celery_app import app

STUBBORN = "tests.stubborn"
RUNS_KEY = "tests:stubborn:runs"


@app.task(name=STUBBORN, bind=True)
def stubborn(self, seconds: float) -> int:
    """Count this run in Redis, then sleep `seconds` whatever the soft limit says; returns the pid."""
    import os

    redis.Redis.from_url(self.app.conf.broker_url).incr(RUNS_KEY)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            continue
    return os.getpid()
