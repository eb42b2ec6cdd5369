"""The hard task time limit, watched happening on a real prefork worker.

tests/test_tasks.py watches the soft limit (a training task fails with SoftTimeLimitExceeded and the
pool child serves on). Here a task ignores its soft limit (tests/time_limit_app.py) and must be ended
by the hard one: the job fails with TimeLimitExceeded, it is NOT redelivered (acks_late and
reject_on_worker_lost must not turn a task that always overruns into an endless loop), and the worker
replaces the killed pool child and serves the next task.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis
from time_limit_app import RUNS_KEY, STUBBORN

from support import RedisServer, Worker, outcome, result_of
from tasks import names

pytestmark = pytest.mark.service
SOFT_S, HARD_S = 1, 2


@pytest.fixture
def stubborn_worker(tmp_path, base_settings):
    """Its own Redis and a prefork worker of tests.time_limit_app (the service's app plus the stubborn
    task)."""
    from tasks.celery_app import make_celery

    server = RedisServer(tmp_path)
    settings = replace(base_settings, redis_url=server.url, var_dir=tmp_path, models_dir=tmp_path / "models")
    client = make_celery(settings)
    worker = Worker(
        settings, tmp_path / "worker.log", f"stubborn-{tmp_path.name}", app="tests.time_limit_app:app"
    )
    try:
        worker.wait_ready(client)
        yield client, redis.Redis.from_url(server.url), worker.log_file
    finally:
        worker.stop()
        client.close()
        server.stop()


def test_a_task_past_its_hard_limit_is_killed_failed_once_and_the_worker_serves_on(stubborn_worker):
    client, db, log = stubborn_worker
    before = result_of(
        client.send_task(STUBBORN, args=[0.1], queue=names.INFERENCE_QUEUE), 60
    )  # pid of the pool child
    db.delete(RUNS_KEY)

    res = client.send_task(
        STUBBORN, args=[60], queue=names.INFERENCE_QUEUE, soft_time_limit=SOFT_S, time_limit=HARD_S
    )
    state, error = outcome(res, 60)
    assert state == "FAILURE" and type(error).__name__ == "TimeLimitExceeded", repr(error)

    after = result_of(client.send_task(STUBBORN, args=[0.1], queue=names.INFERENCE_QUEUE), 60)
    assert after != before  # the overrunning child was killed and replaced
    assert int(db.get(RUNS_KEY)) == 2  # the killed task ran once (not redelivered), then the last one
    text = log.read_text(errors="replace")
    assert "Hard time limit (2s) exceeded" in text and "Soft time limit (1s) exceeded" in text
