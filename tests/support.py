"""What the tests share besides fixtures: a real Redis server, a real Celery worker process, the
worker's environment, waiting for a result, and a whole empty service. Test modules import these from
here (`from support import ...`); tests/conftest.py builds its fixtures on them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import requests

from ml.config import REPO_ROOT, Settings
from scripts.procs import (
    free_port,
    redis_password,
    redis_reachable,
    start_redis,
    stop_group,
    url_with_password,
    wait_until,
)
from scripts.run_stack import CELERY_APP, web_command, worker_command

WORKER_START_TIMEOUT_S = 240.0


class RedisServer:
    """The embedded redis-server as the launcher runs it: 127.0.0.1, a password generated into a
    0600 file, an append-only file in its folder. `kill()` crashes it (SIGKILL), `start()` runs it
    again on the same port and folder (it reloads its data)."""

    def __init__(self, tmp: Path, name: str = "redis", appendfsync: str = "everysec") -> None:
        self.port = free_port()
        self.dir = tmp / name
        self.log_file = tmp / f"{name}.log"
        self.appendfsync = appendfsync
        self.password = redis_password(self.dir / "password")
        self.url = url_with_password(f"redis://127.0.0.1:{self.port}/0", self.password)
        self.start()

    def start(self) -> None:
        self.proc = start_redis(
            self.port, self.dir, log_file=self.log_file, password=self.password, appendfsync=self.appendfsync
        )
        wait_until(lambda: redis_reachable(self.url, 0.5), 15, proc=self.proc, what="redis-server")

    def kill(self) -> None:
        """A crash: SIGKILL, nothing flushed beyond what appendfsync already wrote."""
        stop_group(self.proc, timeout_s=5, sig=signal.SIGKILL)

    def stop(self) -> None:
        stop_group(self.proc, timeout_s=5)


class Worker:
    """The launcher's Celery worker command (scripts.run_stack.worker_command, one process of the
    settings' pool) in its own process group, every setting in its environment, logging to a file."""

    def __init__(
        self,
        settings: Settings,
        log_file: Path,
        name: str,
        app: str = CELERY_APP,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.log_file = log_file
        self.hostname = f"{name}@{os.uname().nodename}"
        cmd = worker_command(replace(settings, worker_concurrency=1), self.hostname, app, alone=True)
        with open(log_file, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                env={**worker_env(settings), **(extra_env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_ready(self, celery_app, timeout_s: float = WORKER_START_TIMEOUT_S) -> None:
        def answers() -> bool:
            replies = celery_app.control.ping(destination=[self.hostname], timeout=0.5) or []
            return any(self.hostname in reply for reply in replies)

        try:
            wait_until(answers, timeout_s, interval_s=0.2, proc=self.proc, what="celery worker")
        except Exception as exc:
            raise RuntimeError(f"{exc}\n--- worker log ---\n{self.log()[-4000:]}") from exc

    def stop(self) -> None:
        stop_group(self.proc, timeout_s=20)

    def pool_children(self) -> list[int]:
        """The pids of the prefork pool's children (the processes that run the tasks)."""
        import psutil

        try:
            return [child.pid for child in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def kill_main(self) -> None:
        """kill -9 the worker's main process only (its pool children are left as they are)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment of a worker or web child process: every setting (`Settings.to_env`)."""
    return {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


class WebServer:
    """The web app under gunicorn (the launcher's command line, every setting in its environment), on
    a free port, with one worker process of four threads."""

    def __init__(self, settings: Settings, log_file: Path) -> None:
        self.settings = replace(settings, web_port=free_port(), web_workers=1, web_threads=4)
        self.url = f"http://127.0.0.1:{self.settings.web_port}"
        with open(log_file, "ab") as out:
            self.proc = subprocess.Popen(
                web_command(self.settings),
                cwd=REPO_ROOT,
                env=worker_env(self.settings),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._up, 30, proc=self.proc, what="gunicorn")

    def _up(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def get(self, path: str, **kw):
        return requests.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, **kw):
        return requests.post(self.url + path, timeout=60, **kw)

    def json_get(self, path: str):
        response = self.get(path)
        return response.status_code, response.json()

    def stop(self) -> None:
        stop_group(self.proc, timeout_s=15)


def outcome(res, timeout_s: float) -> tuple[str, object]:
    """(state, result or exception) once the task finished, by polling the result backend (no pub/sub
    subscription, which would outlive a test's Redis); fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not res.ready():
        assert time.monotonic() < deadline, f"task {res.id} still {res.state}"
        time.sleep(0.1)
    return res.state, res.result


def result_of(res, timeout_s: float = 60.0):
    """Like `res.get(timeout)`, by polling the result backend: no pub/sub subscription is left
    behind (one would try to unsubscribe when collected, after the test Redis has stopped)."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    deadline = time.monotonic() + timeout_s
    while not res.ready():
        if time.monotonic() > deadline:
            raise CeleryTimeout(f"task {res.id} still {res.state} after {timeout_s}s")
        time.sleep(0.05)
    if res.state != "SUCCESS":
        error = res.result
        raise error if isinstance(error, BaseException) else RuntimeError(f"{res.state}: {error!r}")
    return res.result


@contextlib.contextmanager
def empty_service(tmp: Path, settings: Settings, extra_env: dict[str, str] | None = None, **overrides):
    """Its own Redis and an EMPTY registry, served by its own prefork worker (no TensorFlow loaded).
    `overrides` replace fields of the settings; `extra_env` is what the worker reads for them.

    Yields (settings, celery client, worker)."""
    from tasks.celery_app import make_celery

    server = RedisServer(tmp)
    empty = replace(settings, redis_url=server.url, models_dir=tmp / "models", var_dir=tmp, **overrides)
    client = make_celery(empty)
    proc = Worker(empty, tmp / "worker.log", f"empty-{tmp.name}", extra_env=extra_env)
    try:
        proc.wait_ready(client)
        yield empty, client, proc
    finally:
        proc.stop()
        client.close()
        server.stop()


def assert_same_served(got: list[dict], want: list[dict], rating_abs: float = 0.0) -> None:
    """Two served lists alike: the same products in the same order, with the same fields, scores to
    2e-6 (another call shape's BLAS may round a score's last float bit differently, which can move
    its sixth decimal) and predicted ratings to `rating_abs`."""
    import pytest

    assert [x["product_id"] for x in got] == [x["product_id"] for x in want]
    assert [x["score"] for x in got] == pytest.approx([x["score"] for x in want], abs=2e-6)
    if rating_abs:
        assert [x["predicted_rating"] for x in got] == pytest.approx(
            [x["predicted_rating"] for x in want], abs=rating_abs
        )
    loose = {"score": None, **({"predicted_rating": None} if rating_abs else {})}
    assert [{**x, **loose} for x in got] == [{**x, **loose} for x in want]
