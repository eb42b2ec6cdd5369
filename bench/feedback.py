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
from ml.registry import ModelRegistry

TRIALS = 100
TOP = 10
REFLECT_TIMEOUT_S = 10.0


def _trial(client, customer: str) -> dict:
    status, body, exc = client.request("GET", f"/recommendation?customer_id={customer}&top={TOP}")
    if status != 200:
        raise RuntimeError(f"GET /recommendation answered {status}: {body or exc}")
    product = body["items"][0]["product_id"]
    started = time.perf_counter()
    status, posted, exc = client.request(
        "POST", "/feedback", {"customer_id": customer, "product_id": product, "rating": 1}
    )
    recorded = time.perf_counter()
    if status != 202 or not posted.get("feedback_id"):
        raise RuntimeError(f"POST /feedback answered {status}: {posted or exc}")
    gets = 0
    while time.perf_counter() - started < REFLECT_TIMEOUT_S:
        status, body, exc = client.request("GET", f"/recommendation?customer_id={customer}&top={TOP}")
        gets += 1
        if status == 200 and product not in {x["product_id"] for x in body["items"]}:
            return {
                "ms": (time.perf_counter() - started) * 1000,
                "post_ms": (recorded - started) * 1000,
                "gets": gets,
                "jobs": (posted["job_id"], body["job_id"]),
            }
    raise RuntimeError(f"feedback of {customer} on {product} not reflected after {REFLECT_TIMEOUT_S} s")


def _served_by(log_dir: Path, workers: int) -> dict[str, int]:
    """job id -> the worker process (0..workers-1) whose log says it ran the task."""
    out = {}
    for k in range(workers):
        for job in re.findall(
            r"Task recsys\.\w+\[([0-9a-f-]{36})\] succeeded", (log_dir / f"worker{k}.log").read_text()
        ):
            out[job] = k
    return out


def _pct(values: list[float]) -> dict:
    a = np.asarray(values, np.float64)
    return {
        "n": len(a),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p90_ms": round(float(np.percentile(a, 90)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 2),
    }


def _ranks(rec, u: int) -> np.ndarray:
    order = np.argsort(-rec.score_customers(np.array([u]))[0], kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def category_response(artifact: Path, n_trained: int = 200) -> dict:
    """In process: how far the model moves a category for a customer who rated it, next to how far it
    does for trained customers (their most-rated leaf category, ranked for them vs for the others)."""
    import itertools

    import pandas as pd

    from ml.catalog import Filters
    from ml.feedback import Rating
    from ml.recommender import Recommender

    rec = Recommender.load(artifact)
    found = rec.catalog.prefixes()
    leaves = [p for p in found if not any(q != p and q.startswith(p + " >") for q in found)]
    kinds = {p: rec.allowed(Filters(category=p)) for p in leaves}
    kinds = {p: pos for p, pos in kinds.items() if len(pos) >= 5}
    kind_of = np.empty(rec.n_products, object)
    for p, pos in kinds.items():
        kind_of[pos] = p
    users = np.arange(min(n_trained, rec.tables.n_customers))
    ranks = np.argsort(np.argsort(-rec.score_customers(users), axis=1), axis=1)
    trained = []
    for u in users:
        seen = rec.seen(u)
        top = pd.Series(kind_of[seen]).dropna().value_counts()
        pos = np.setdiff1d(kinds[top.index[0]], seen) if len(top) else []
        if len(pos):
            trained.append(ranks[np.setdiff1d(users, [u])][:, pos].mean() - ranks[u, pos].mean())
    for k, pos in kinds.items():
        rec.add_ratings([Rating(f"bench-{k}", str(rec.tables.product_ids[i]), 5.0) for i in pos[:3]])
    index = pd.Index(rec.tables.customer_ids)
    rated = []
    for k, j in itertools.permutations(sorted(kinds), 2):
        rest = kinds[k][3:]
        rated.append(
            _ranks(rec, index.get_loc(f"bench-{j}"))[rest].mean()
            - _ranks(rec, index.get_loc(f"bench-{k}"))[rest].mean()
        )
    return {
        "products": rec.n_products,
        "leaf_categories": len(kinds),
        "trained_customers": {
            "n": len(trained),
            "mean_places_higher": round(float(np.mean(trained)), 2),
            "higher_for_them": int(sum(g > 0 for g in trained)),
        },
        "new_customers_rating_3": {
            "pairs": len(rated),
            "mean_places_higher": round(float(np.mean(rated)), 2),
            "higher_for_them": int(sum(g > 0 for g in rated)),
        },
    }


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
            recorded = (
                sum(1 for _ in (tmp / "feedback.jsonl").open()) if (tmp / "feedback.jsonl").is_file() else 0
            )
        served = _served_by(tmp / "logs", workers)
        response = category_response(ModelRegistry(models).current_path())
        pairs = [(served.get(a), served.get(b)) for a, b in (r["jobs"] for r in results)]
    return {
        "post_to_reflected": _pct([r["ms"] for r in results]),
        "post_feedback": _pct([r["post_ms"] for r in results]),
        "first_get_reflected": sum(r["gets"] == 1 for r in results),
        "trials": trials,
        # from the workers' logs: the rating recorded by one worker, the reflecting answer from the other
        "reflected_by_the_other_worker": sum(
            1 for a, b in pairs if a is not None and b is not None and a != b
        ),
        "jobs_found_in_worker_logs": sum(1 for a, b in pairs if a is not None and b is not None),
        "feedback_file_lines": recorded,
        "stack": {
            "celery_workers": workers,
            "worker_concurrency": settings.worker_concurrency,
            "redis_appendfsync": settings.redis_appendfsync,
        },
        "catalog": {**_catalog(models), "model_version": version},
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_before": load_before,
            "load_avg_after": load_after,
        },
        "category_response": response,
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
    }
