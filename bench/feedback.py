"""Live feedback: time from POST /feedback to a recommendation that reflects it, on the stack `make run`
starts (bench.load.serve) with two Celery worker processes.

A trial: a known customer's current top-1 recommendation is rated 1 star (POST /feedback, which
answers once a worker has recorded it); then GET /recommendation for that customer is repeated until
the product is gone from the list (seen). A trial takes distinct customers, so every trial starts
from a model state its own feedback has not touched yet. Which of the two workers records and which
serves is up to the broker: both consume the same queue, and each catches up on the feedback stream
before it serves. Also counted: trials whose first GET already reflects it (no retry needed).
"""
from __future__ import annotations

import os
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from ml.config import Settings

TRIALS = 100
TOP = 10
REFLECT_TIMEOUT_S = 10.0


def _trial(client, customer: str) -> dict:
    status, body, exc = client.request("GET", f"/recommendation?customer_id={customer}&top={TOP}")
    if status != 200:
        raise RuntimeError(f"GET /recommendation answered {status}: {body or exc}")
    product = body["items"][0]["product_id"]
    started = time.perf_counter()
    status, posted, exc = client.request("POST", "/feedback", {"customer_id": customer, "product_id": product,
                                                               "rating": 1})
    recorded = time.perf_counter()
    if status != 202 or not posted.get("feedback_id"):
        raise RuntimeError(f"POST /feedback answered {status}: {posted or exc}")
    gets = 0
    while time.perf_counter() - started < REFLECT_TIMEOUT_S:
        status, body, exc = client.request("GET", f"/recommendation?customer_id={customer}&top={TOP}")
        gets += 1
        if status == 200 and product not in {x["product_id"] for x in body["items"]}:
            return {"ms": (time.perf_counter() - started) * 1000, "post_ms": (recorded - started) * 1000,
                    "gets": gets, "jobs": (posted["job_id"], body["job_id"])}
    raise RuntimeError(f"feedback of {customer} on {product} not reflected after {REFLECT_TIMEOUT_S} s")


def _served_by(log_dir: Path, workers: int) -> dict[str, int]:
    """job id -> the worker process (0..workers-1) whose log says it ran the task."""
    out = {}
    for k in range(workers):
        for job in re.findall(r"Task recsys\.\w+\[([0-9a-f-]{36})\] succeeded", (log_dir / f"worker{k}.log").read_text()):
            out[job] = k
    return out


def _pct(values: list[float]) -> dict:
    a = np.asarray(values, np.float64)
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p90_ms": round(float(np.percentile(a, 90)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2)}


def run(trials: int = TRIALS, workers: int = 2) -> dict:
    from bench.__main__ import _model_dir
    from bench.load import Client, _catalog, known_customers, serve, warm_up

    base = Settings.from_env()
    with tempfile.TemporaryDirectory(prefix="bench-feedback-") as name:
        tmp = Path(name)
        models = _model_dir(base, tmp)
        # a feedback file of its own: never the user's var/feedback
        base = Settings.from_env({**os.environ, "RECSYS_FEEDBACK_FILE": str(tmp / "feedback.jsonl")})
        with serve(models, tmp, workers, base) as (settings, url, _stack):
            customers, version = known_customers(url)
            if len(customers) < trials:
                raise RuntimeError(f"{trials} trials need {trials} customers; the model has {len(customers)}")
            warm_up(url, customers)
            client = Client(url, timeout_s=60)
            load_before = [round(x, 2) for x in os.getloadavg()]
            results = [_trial(client, c) for c in customers[:trials]]
            load_after = [round(x, 2) for x in os.getloadavg()]
            client.close()
            recorded = sum(1 for _ in (tmp / "feedback.jsonl").open()) if (tmp / "feedback.jsonl").is_file() else 0
        served = _served_by(tmp / "logs", workers)
        pairs = [(served.get(a), served.get(b)) for a, b in (r["jobs"] for r in results)]
    return {
        "post_to_reflected": _pct([r["ms"] for r in results]),
        "post_feedback": _pct([r["post_ms"] for r in results]),
        "first_get_reflected": sum(r["gets"] == 1 for r in results), "trials": trials,
        # from the workers' logs: the rating recorded by one worker, the reflecting answer from the other
        "reflected_by_the_other_worker": sum(1 for a, b in pairs if a is not None and b is not None and a != b),
        "jobs_found_in_worker_logs": sum(1 for a, b in pairs if a is not None and b is not None),
        "feedback_file_lines": recorded,
        "stack": {"celery_workers": workers, "worker_concurrency": settings.worker_concurrency,
                  "redis_appendfsync": settings.redis_appendfsync},
        "catalog": {**_catalog(models), "model_version": version},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_before": load_before, "load_avg_after": load_after},
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
    }
