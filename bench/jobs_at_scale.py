"""Jobs through the service at catalog size: `python -m bench.jobs_at_scale [--products 100000]`.

Issue 10 asks two things of the whole path at 100k products that `bench catalog` (in-process only)
cannot show: a job's p50 through HTTP against the in-process p50, and the customers/s of one batch
job against the same customers as sequential single jobs. This serves the SYNTHETIC artifact that
`python -m bench.catalog --sizes N` built (var/bench/catalog/artifact-N; two-stage above
`RECSYS_EXACT_MAX_PRODUCTS`) as `make run` serves it (`bench.__main__.service`: Redis, one Celery
worker with the default pool and concurrency, the web app under gunicorn) and measures, after a
warm-up:

- per customer, the paths interleaved (`bench.__main__._interleaved`): `recommend` in this process
  (the same artifact loaded here), a RECOMMEND task through Celery (send + result), the synchronous
  `GET /recommendation`, and `POST /jobs` then polling `GET /jobs/<id>` every 5 ms;
- batch: the same customers as sequential single RECOMMEND tasks, then as one RECOMMEND_BATCH task,
  alternated BATCH_ROUNDS times (medians), with `recommend_many` in this process for reference.

JSON to var/bench/jobs_at_scale.json. Timings are this machine's, with the worker, Redis and the web
app sharing its CPUs with this client: compare figures of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ml.config import REPO_ROOT

OUT = REPO_ROOT / "var" / "bench" / "jobs_at_scale.json"
BATCH_ROUNDS = 3


def artifact_of(products: int) -> Path | None:
    """The `bench catalog` artifact of `products` products, None when it has not been built."""
    from bench.catalog import artifact_path

    path = artifact_path(products)
    return path if (path / "manifest.json").is_file() else None


def missing(products: int) -> str:
    """What to do when `artifact_of(products)` is None."""
    build = f"python -m bench.catalog --sizes {products}"
    return f"no catalog artifact of {products} products: build it with `{build}`"


MODEL_VERSION = "bench-catalog"


def _registry_of(artifact: Path, tmp: Path) -> Path:
    """A models directory whose live version is `artifact` (linked, not copied)."""
    from ml.registry import ModelRegistry

    models = tmp / "models"
    models.mkdir()
    (models / MODEL_VERSION).symlink_to(artifact.resolve(), target_is_directory=True)
    ModelRegistry(models).publish(MODEL_VERSION)
    return models


def _ranked(lists: list[list[dict]]) -> list[list[str]]:
    return [[item["product_id"] for item in items] for items in lists]


def _time_into(fn, rounds: list[float]) -> None:
    """Run `fn` once and append its seconds to `rounds`."""
    t = time.perf_counter()
    fn()
    rounds.append(time.perf_counter() - t)


def run(artifact: Path, n_customers: int = 200, top: int = 10) -> dict:
    """The figures above for the model artifact at `artifact` (a models directory is made for it)."""
    from bench.__main__ import _get, _http_post_and_poll, _http_sync_get, _interleaved, _pct, service
    from ml.config import Settings
    from ml.recommender import Recommender
    from scripts.procs import wait_until
    from tasks import names

    max_batch = Settings.from_env().max_batch
    if not 1 <= n_customers <= max_batch:
        raise ValueError(f"customers must be 1..RECSYS_MAX_BATCH ({max_batch})")
    rec = Recommender.load(artifact)
    ids = [
        str(c) for c in rec.tables.customer_ids[np.random.default_rng(0).permutation(rec.tables.n_customers)]
    ]
    if len(ids) <= n_customers:
        raise ValueError(f"the artifact has {len(ids)} customers: measure fewer than that")
    customers, warm = ids[:n_customers], ids[n_customers : n_customers + 20]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with service(_registry_of(artifact, tmp), tmp, "jobs@%h") as (settings, _, celery):

            def task(name: str, *args):
                got = celery.send_task(name, args=list(args)).get(timeout=300, interval=0.005)
                assert got["model_version"] == MODEL_VERSION, got.get("model_version")
                return got

            def single_jobs(cs: list[str]) -> list[list[dict]]:
                return [task(names.RECOMMEND, c, top)["items"] for c in cs]

            def batch_job(cs: list[str]) -> list[list[dict]]:
                got = task(names.RECOMMEND_BATCH, cs, top)
                assert got["count"] == len(cs), got
                return [r["items"] for r in got["results"]]

            path = task(names.RECOMMEND, warm[0], top)["items"][0]["path"]  # the worker loads the model
            url = f"http://127.0.0.1:{settings.web_port}"
            wait_until(lambda: _get(url + "/healthz")[0] == 200, 60, interval_s=0.5, what="web")
            paths = {
                "in_process": lambda c: rec.recommend(c, top),
                "celery": lambda c: task(names.RECOMMEND, c, top),
                "http_sync": lambda c: _http_sync_get(url, c, top),
                "http_poll": lambda c: _http_post_and_poll(url, c, top),
            }
            for c in warm:
                for fn in paths.values():
                    fn(c)
            # a batch ranks what single jobs rank (two-stage: exactly; exact serving scores a chunk
            # as one matrix, whose last float bits may differ)
            assert _ranked(batch_job(warm)) == _ranked(single_jobs(warm))
            rec.recommend_many(warm, top)
            samples = _interleaved(paths, customers)
            rounds: dict[str, list[float]] = {"single_jobs": [], "batch_job": [], "in_process_many": []}
            runs = {
                "single_jobs": lambda: single_jobs(customers),
                "batch_job": lambda: batch_job(customers),
                "in_process_many": lambda: rec.recommend_many(customers, top),
            }
            order = list(runs)
            for r in range(BATCH_ROUNDS):  # the order rotates, as _interleaved's does
                for name in order[r % 3 :] + order[: r % 3]:
                    _time_into(runs[name], rounds[name])
            stack_sizes = {
                "web": f"gunicorn gthread -w {settings.web_workers} --threads {settings.web_threads}",
                "worker": f"celery prefork, concurrency {settings.worker_concurrency}",
            }
    per_s = {name: round(len(customers) / float(np.median(r)), 1) for name, r in rounds.items()}
    return {
        "synthetic": True,
        "products": rec.n_products,
        "serving_path": path,
        "customers": n_customers,
        "top": top,
        **{name: _pct(s) for name, s in samples.items()},
        # the median over customers of (path - in-process), not a difference of p50s
        "minus_in_process_p50_ms": {
            name: round(float(np.percentile(np.subtract(s, samples["in_process"]), 50) * 1000), 2)
            for name, s in samples.items()
            if name != "in_process"
        },
        "customers_per_s": per_s,
        "batch_over_single_jobs": round(per_s["batch_job"] / per_s["single_jobs"], 2),
        "batch_rounds": BATCH_ROUNDS,
        "stack": stack_sizes,
        "cpu_count": os.cpu_count(),
        "notes": {
            "celery": "send_task + result get (5 ms poll of the Redis backend's pub/sub)",
            "http_sync": "GET /recommendation",
            "http_poll": "POST /jobs, then GET /jobs/<id> every 5 ms until succeeded",
            "batch": f"{n_customers} sequential RECOMMEND tasks vs one RECOMMEND_BATCH task, medians of "
            f"{BATCH_ROUNDS} alternated rounds",
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--products", type=int, default=100_000)
    p.add_argument("--customers", type=int, default=200)
    args = p.parse_args(argv)
    artifact = artifact_of(args.products)
    if artifact is None:
        raise SystemExit(missing(args.products))
    result = run(artifact, args.customers)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
