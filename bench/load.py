"""Load: `python -m bench load [--clients 50] [--seconds 60] [--workers 1] [--json PATH]` (issue 14, item 6).

Starts its own stack on free loopback ports with the launcher's own helpers (`scripts/run_stack`:
the embedded Redis with a password and its append-only file, `--workers` Celery worker processes as
`make run` starts them, prefork, `-c RECSYS_WORKER_CONCURRENCY`, and the web app under gunicorn,
`RECSYS_WEB_WORKERS` x `RECSYS_WEB_THREADS`), serving the demo catalog model (the published model, or
one trained now on the SYNTHETIC demo world: `bench.__main__._model_dir`). Then `--clients` client
threads, each with its own keep-alive HTTP connection, loop until `--seconds` are over:

- most iterations (1 - JOB_SHARE): `GET /recommendation?customer_id=<random known customer>&top=10`,
  the synchronous path; it must answer 200 with 10 items;
- the others: `POST /jobs` (must be 202), then `GET /jobs/<id>` every POLL_S until the job has
  finished; every poll must be 200, and the job must end `succeeded` with 10 items.

A client starts no new iteration after the deadline; the one in flight finishes, so the run stops by
itself (every request has a timeout). Nothing is retried: any other status, a connection error or a
timeout is an error, counted by kind and status. Results are printed and written to
var/bench/load.json (or --json): requests by kind, errors by kind and status, throughput, latency
percentiles per kind, the stack's sizes, the machine (CPUs, load average before and after). The exit
status is 1 when there was any error.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np

from ml.argtypes import number, positive_int
from ml.config import REPO_ROOT, Settings

OUT = REPO_ROOT / "var" / "bench" / "load.json"
TOP = 10
JOB_SHARE = 0.2  # share of iterations that go through POST /jobs + polling
POLL_S = 0.05  # polling interval of GET /jobs/<id>
REQUEST_TIMEOUT_S = 30.0  # per HTTP request (the sync path waits at most RECSYS_SYNC_WAIT_S, 5 s)
JOB_TIMEOUT_S = 60.0  # a polled job not finished by then is an error
WARMUP_REQUESTS = 20

# What a healthy service answers, per kind of request.
EXPECTED_STATUS = {"recommendation": 200, "post_job": 202, "get_job": 200}
KINDS = tuple(EXPECTED_STATUS)


def classify(
    kind: str, status: int | None, body: dict | None, error: BaseException | None = None, top: int = TOP
) -> str | None:
    """None when the answer is what a healthy service gives for this kind of request; else the
    error's label: `connection:<Exception>` (refused, reset, timed out, ...), the status when it is
    not the expected one (a 5xx, a 4xx, or a 202 from the synchronous path, whose wait ran out),
    `bad_body` when the status is right but the body is not, `job_failed` for a polled job that
    failed."""
    if error is not None:
        return f"connection:{type(error).__name__}"
    if status != EXPECTED_STATUS[kind]:
        return str(status)
    if not isinstance(body, dict):
        return "bad_body"
    if kind == "recommendation" and len(body.get("items") or ()) != top:
        return "bad_body"
    if kind == "post_job" and not body.get("job_id"):
        return "bad_body"
    if kind == "get_job":
        state = body.get("state")
        if state == "failed":
            return "job_failed"
        if state not in ("queued", "started", "succeeded"):
            return "bad_body"
        if state == "succeeded" and len((body.get("result") or {}).get("items") or ()) != top:
            return "bad_body"
    return None


@dataclass
class Tally:
    """What one client saw: one record per HTTP request (kind, error label or None, seconds) and the
    end-to-end seconds of each job that succeeded (POST to the poll that saw it finished)."""

    requests: list[tuple[str, str | None, float]] = field(default_factory=list)
    jobs_s: list[float] = field(default_factory=list)
    jobs_abandoned: int = 0  # a job flow cut short by an error (the error itself is in `requests`)

    def add(self, kind: str, label: str | None, seconds: float) -> None:
        self.requests.append((kind, label, seconds))


class Client:
    """One simulated user: a keep-alive HTTP/1.1 connection, used by one thread only."""

    def __init__(self, base_url: str, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        parts = urlsplit(base_url)
        self.host, self.port, self.timeout_s = parts.hostname, parts.port or 80, timeout_s
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, payload: dict | None = None
    ) -> tuple[int | None, dict | None, BaseException | None]:
        """(status, JSON body or None, exception or None). After an exception or a `Connection:
        close` the connection is dropped and the next request opens a new one (no retry)."""
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            raw = response.read()
            if response.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return None, None, exc
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        return response.status, data, None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _timed(
    client: Client,
    tally: Tally,
    kind: str,
    method: str,
    path: str,
    payload: dict | None = None,
    top: int = TOP,
) -> tuple[str | None, dict | None]:
    started = time.perf_counter()
    status, body, error = client.request(method, path, payload)
    label = classify(kind, status, body, error, top)
    tally.add(kind, label, time.perf_counter() - started)
    return label, body


def one_iteration(
    client: Client,
    tally: Tally,
    rng: random.Random,
    customers: list[str],
    job_share: float,
    poll_s: float,
    top: int = TOP,
) -> None:
    """One user action: a synchronous recommendation, or a job posted and polled until it finished."""
    customer = rng.choice(customers)
    if rng.random() >= job_share:
        _timed(
            client,
            tally,
            "recommendation",
            "GET",
            f"/recommendation?customer_id={quote(customer, safe='')}&top={top}",
            top=top,
        )
        return
    started = time.perf_counter()
    label, body = _timed(
        client, tally, "post_job", "POST", "/jobs", {"customer_id": customer, "top": top}, top
    )
    if label is not None:
        tally.jobs_abandoned += 1
        return
    path = f"/jobs/{body['job_id']}"
    while True:
        label, view = _timed(client, tally, "get_job", "GET", path, top=top)
        if label is not None:
            tally.jobs_abandoned += 1
            return
        if view["state"] == "succeeded":
            tally.jobs_s.append(time.perf_counter() - started)
            return
        if time.perf_counter() - started > JOB_TIMEOUT_S:
            tally.add("get_job", "job_timeout", 0.0)
            tally.jobs_abandoned += 1
            return
        time.sleep(poll_s)


def run_clients(
    base_url: str,
    customers: list[str],
    clients: int,
    seconds: float,
    job_share: float = JOB_SHARE,
    poll_s: float = POLL_S,
    top: int = TOP,
    seed: int = 0,
) -> dict:
    """`clients` threads loop over `one_iteration` until `seconds` have passed (the iteration in
    flight finishes); returns the summary (`summarize`)."""
    if not customers:
        raise ValueError("no customers to ask for")
    tallies = [Tally() for _ in range(clients)]
    go = threading.Event()
    deadline = [0.0]

    def loop(k: int) -> None:
        client, rng = Client(base_url), random.Random(seed * 100003 + k)
        go.wait()
        try:
            while time.monotonic() < deadline[0]:
                one_iteration(client, tallies[k], rng, customers, job_share, poll_s, top)
        finally:
            client.close()

    threads = [
        threading.Thread(target=loop, args=(k,), name=f"load-client-{k}", daemon=True) for k in range(clients)
    ]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    started = time.monotonic()
    deadline[0] = started + seconds
    go.set()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    out = summarize(tallies, wall)
    out.update(
        clients=clients,
        seconds=seconds,
        client_process_cpu_s=round(time.process_time() - cpu0, 1),
        mix={
            "recommendation_share": round(1 - job_share, 3),
            "job_share": job_share,
            "poll_ms": round(poll_s * 1000),
            "top": top,
            "customers": len(customers),
        },
    )
    return out


def percentiles(samples_s: list[float]) -> dict:
    if not samples_s:
        return {"n": 0}
    ms = np.asarray(samples_s) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "n": int(ms.size),
        "p50_ms": round(float(p50), 2),
        "p90_ms": round(float(p90), 2),
        "p99_ms": round(float(p99), 2),
        "max_ms": round(float(ms.max()), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


def summarize(tallies: list[Tally], wall_s: float) -> dict:
    """Counts, errors, throughput and latency percentiles over every client's tally."""
    records = [r for t in tallies for r in t.requests]
    # a `job_timeout` record is a verdict on a job, not a request: an error, but not a request
    by_kind = Counter(kind for kind, label, _ in records if label != "job_timeout")
    errors = Counter(f"{kind}:{label}" for kind, label, _ in records if label is not None)
    jobs_s = [s for t in tallies for s in t.jobs_s]
    latency = {
        kind: percentiles([s for k, label, s in records if k == kind and label != "job_timeout"])
        for kind in KINDS
    }
    latency["job_end_to_end"] = percentiles(jobs_s)
    sync_ok = sum(1 for kind, label, _ in records if kind == "recommendation" and label is None)
    http_requests = sum(by_kind.values())
    return {
        "wall_s": round(wall_s, 2),
        "requests": {"total": http_requests, "by_kind": {k: by_kind.get(k, 0) for k in KINDS}},
        "errors": {"total": sum(errors.values()), "by_kind_status": dict(sorted(errors.items()))},
        "jobs": {
            "succeeded": len(jobs_s),
            "abandoned_after_an_error": sum(t.jobs_abandoned for t in tallies),
        },
        "throughput_req_s": round(http_requests / wall_s, 1) if wall_s > 0 else None,
        "recommendations_per_s": round((sync_ok + len(jobs_s)) / wall_s, 1) if wall_s > 0 else None,
        "latency_ms": latency,
    }


# ---------------------------------------------------------------- the stack


def _get_json(base_url: str, path: str) -> tuple[int | None, dict | None]:
    client = Client(base_url, timeout_s=60)
    try:
        status, body, _ = client.request("GET", path)
        return status, body
    finally:
        client.close()


@contextmanager
def serve(
    models: Path, tmp: Path, workers: int = 1, base: Settings | None = None, redis_url: str | None = None
):
    """The stack as `make run` starts it (scripts/run_stack: `ensure_redis`, `worker_command`,
    `web_command`, `wait_ready`; no Flower), on free loopback ports, `workers` Celery worker processes,
    serving the registry `models`; child logs in `tmp/logs/`. Yields (settings, base URL, the
    launcher's `Stack`) once GET /readyz is 200. With `redis_url` (a Redis that answers, whose workers
    already serve, e.g. the tests' session Redis and worker) and `workers=0`, only the web app is
    started."""
    from scripts.procs import free_port
    from scripts.run_stack import Stack, ensure_redis, wait_ready, web_command, worker_command

    base = base or Settings.from_env()
    log_dir = tmp / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    # ensure_redis keeps the embedded Redis's data and password under var_dir: a temporary one here,
    # never the user's var/redis; the web and the workers then get the real var_dir back (images).
    settings = replace(
        base,
        var_dir=tmp,
        redis_password_file=tmp / "redis" / "password",
        models_dir=models,
        redis_url=redis_url or f"redis://127.0.0.1:{free_port()}/0",
        web_host="127.0.0.1",
        web_port=free_port(),
    )
    stack = Stack(settings, log_dir)
    try:
        ensure_redis(stack)
        stack.settings = replace(stack.settings, var_dir=base.var_dir)
        for k in range(workers):
            stack.spawn(f"worker{k}", worker_command(stack.settings, f"load{k}@%h"))
        stack.spawn("web", web_command(stack.settings))
        base_url = f"http://127.0.0.1:{stack.settings.web_port}"
        wait_ready(stack, base_url, timeout_s=600)
        yield stack.settings, base_url, stack
    finally:
        stack.stop_all()


def known_customers(base_url: str, limit: int = 1000) -> tuple[list[str], str | None]:
    status, body = _get_json(base_url, f"/customers?limit={limit}")
    if status != 200 or not body or not body.get("customers"):
        raise RuntimeError(f"GET /customers answered {status}: {body}")
    return list(body["customers"]), body.get("model_version")


def warm_up(base_url: str, customers: list[str], n: int = WARMUP_REQUESTS) -> None:
    """A few sequential requests (not counted): every gunicorn worker and pool child has served once."""
    client = Client(base_url)
    try:
        for k in range(n):
            status, body, error = client.request(
                "GET",
                f"/recommendation?customer_id={quote(customers[k % len(customers)], safe='')}&top={TOP}",
            )
            if classify("recommendation", status, body, error) is not None:
                raise RuntimeError(f"warm-up request failed: {status} {body} {error!r}")
    finally:
        client.close()


def cpu_seconds(stack) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each child of the stack, its process tree included
    (a worker's pool children, gunicorn's workers)."""
    import psutil

    out = {}
    for child in stack.children:
        try:
            root = psutil.Process(child.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        out[child.name] = total
    return out


def _catalog(models: Path) -> dict:
    from ml.artifact import read_manifest
    from ml.registry import ModelRegistry

    manifest = read_manifest(ModelRegistry(models).current_path())
    data = manifest.get("data", {})
    return {
        "synthetic": bool(data.get("synthetic")),
        "products": data.get("n_products"),
        "customers": data.get("n_customers"),
        "data": data.get("path") or data.get("name"),
    }


def bench_load(
    clients: int = 50,
    seconds: float = 60.0,
    workers: int = 1,
    job_share: float = JOB_SHARE,
    poll_s: float = POLL_S,
) -> dict:
    from bench.__main__ import _model_dir

    base = Settings.from_env()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as name:
        tmp = Path(name)
        models = _model_dir(base, tmp)
        catalog = _catalog(models)
        with serve(models, tmp, workers, base) as (settings, url, stack):
            customers, version = known_customers(url)
            warm_up(url, customers)
            load_before = [round(x, 2) for x in os.getloadavg()]
            cpu_before = cpu_seconds(stack)
            result = run_clients(url, customers, clients, seconds, job_share, poll_s)
            cpu_after = cpu_seconds(stack)
            load_after = [round(x, 2) for x in os.getloadavg()]
        # cores each part of the stack kept busy during the run (CPU seconds / wall seconds)
        cores = {
            name: round((cpu_after[name] - cpu_before[name]) / result["wall_s"], 2)
            for name in cpu_before
            if name in cpu_after
        }
    return {
        **result,
        "all_hold": result["errors"]["total"] == 0,  # `python -m bench` exits 1 when this is False
        "stack": {
            "celery_workers": workers,
            "worker_pool": settings.worker_pool,
            "worker_concurrency": settings.worker_concurrency,
            "pool_processes_total": workers * settings.worker_concurrency,
            "web": f"gunicorn gthread -w {settings.web_workers} --threads {settings.web_threads}",
            "sync_wait_s": settings.sync_wait_s,
            "redis_appendfsync": settings.redis_appendfsync,
            "cores_busy_during_run": {
                **cores,
                "load_clients": round(result["client_process_cpu_s"] / result["wall_s"], 2),
            },
        },
        "catalog": {**catalog, "model_version": version},
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_before": load_before,
            "load_avg_after": load_after,
        },
    }


# ---------------------------------------------------------------- command line

_positive_int = positive_int
_positive_seconds = number(float, above=0, high=3600, what="a number of seconds")
_share = number(float, 0, 1, what="a fraction")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench load", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=_positive_int, default=50, help="concurrent clients (default 50)")
    p.add_argument("--seconds", type=_positive_seconds, default=60.0, help="duration (default 60)")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="Celery worker processes, each -c RECSYS_WORKER_CONCURRENCY (default 1, as make run)",
    )
    p.add_argument(
        "--job-share",
        type=_share,
        default=JOB_SHARE,
        help=f"share of iterations that POST /jobs and poll (default {JOB_SHARE})",
    )
    p.add_argument(
        "--poll-ms",
        type=_positive_int,
        default=round(POLL_S * 1000),
        help=f"polling interval of GET /jobs/<id> (default {round(POLL_S * 1000)})",
    )
    p.add_argument("--json", type=Path, default=OUT, help=f"where to write the results (default {OUT})")
    args = p.parse_args(argv)
    if args.clients > 1000:
        p.error(f"--clients: at most 1000, got {args.clients}")
    if args.workers > 16:
        p.error(f"--workers: at most 16, got {args.workers}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = bench_load(args.clients, args.seconds, args.workers, args.job_share, args.poll_ms / 1000)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"== load\n{json.dumps(result, indent=2)}", flush=True)
    return 1 if result["errors"]["total"] else 0


if __name__ == "__main__":
    sys.exit(main())
