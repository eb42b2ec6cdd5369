"""Against a peer: our synchronous GET /recommendation next to Cornac's BPR under `cornac.serving`.

`python -m bench peer` (part of `make bench`). On the REAL 2023 ratings (train + test files: the whole
data, as a shop would serve it; 7,642 products):
- ours: the hybrid trained by `python -m ml train` (once, into var/bench/peer/models; reused), served
  as `make run` serves it: Redis, one Celery worker (the default pool and concurrency), the web app
  under gunicorn gthread (`RECSYS_WEB_WORKERS` x `RECSYS_WEB_THREADS`);
- Cornac: BPR (its defaults) trained on the same ratings and saved with its train set, served by
  `cornac.serving.app` under gunicorn gthread with the same workers and threads. Cornac lives in a
  throwaway venv (var/bench/peer/cornac-venv, pip install cornac flask gunicorn), never in ours.
- the same 100 known customers, top 10, seen products removed on both sides (`remove_seen=true`),
  one request at a time, interleaved (each customer asks both servers back to back, in a rotating
  order), after 20 warm-up requests each.
Reports p50/p99 of each and the ratio of the p50s (issue 10 asks ours <= 2 x Cornac's). Cornac answers
in its web process; ours crosses Redis to a Celery worker and back (the service's design: the web
process holds no model). JSON to var/bench/peer.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np

from ml.config import REPO_ROOT, Settings

DATA = REPO_ROOT.parent / "shared" / "data" / "amazon-fashion-2023-ratings-blair"
WORK = REPO_ROOT / "var" / "bench" / "peer"
CORNAC_PACKAGES = ("cornac", "flask", "gunicorn")
N_CUSTOMERS, WARMUP, TOP = 100, 20, 10

CORNAC_TRAIN = """
import csv, sys, cornac
from cornac.data import Dataset
with open(sys.argv[1], newline="") as f:
    rows = [(r["customer_id"], r["product_id"], float(r["rating"])) for r in csv.DictReader(f)]
train = Dataset.from_uir(rows, seed=0)
model = cornac.models.BPR(seed=0)
model.fit(train)
model.save(sys.argv[2], save_trainset=True)
"""


def _venv_python() -> Path:
    """The throwaway venv's python, created and filled on first use."""
    venv = WORK / "cornac-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *CORNAC_PACKAGES], check=True)
    return python


def _our_models(settings: Settings) -> Path:
    """A published model of the whole 2023 data (trained here once, then reused)."""
    from ml.registry import ModelRegistry

    models = WORK / "models"
    if ModelRegistry(models).current_path() is None:
        env = dict(os.environ, RECSYS_MODELS_DIR=str(models), TF_CPP_MIN_LOG_LEVEL="2")
        subprocess.run(
            [sys.executable, "-m", "ml", "train", "--data", str(DATA)], cwd=REPO_ROOT, env=env, check=True
        )
    return models


def _cornac_model(python: Path, ratings, tmp: Path) -> Path:
    """BPR saved under `tmp` with its train set; the file `cornac.serving` loads."""
    csv = tmp / "ratings.csv"
    ratings[["customer_id", "product_id", "rating"]].to_csv(csv, index=False)
    save_dir = tmp / "cornac"
    subprocess.run([str(python), "-c", CORNAC_TRAIN, str(csv), str(save_dir)], check=True)
    saved = sorted(p for p in save_dir.rglob("*.pkl"))
    if not saved:
        raise RuntimeError(f"Cornac saved no model under {save_dir}")
    return saved[-1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}")
        return json.loads(r.read())


def run() -> dict:
    from bench.__main__ import _interleaved, _pct, service
    from ml.data import load_dataset
    from scripts.procs import free_port, wait_until
    from scripts.run_stack import web_command

    WORK.mkdir(parents=True, exist_ok=True)
    python = _venv_python()
    base = Settings.from_env()
    models = _our_models(base)
    ratings = load_dataset(DATA).reviews
    counts = ratings["customer_id"].value_counts()
    rng = np.random.default_rng(0)
    customers = sorted(rng.choice(counts.index.to_numpy(str), N_CUSTOMERS, replace=False).tolist())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cornac_file = _cornac_model(python, ratings, tmp)
        with service(models, tmp, "peer@%h") as (settings, stack, _):
            cornac = replace(settings, web_port=free_port())
            cornac_env = dict(
                os.environ, MODEL_PATH=str(cornac_file), MODEL_CLASS="cornac.models.BPR", PYTHONPATH=""
            )
            stack.spawn("cornac", web_command(cornac, "cornac.serving.app:app", str(python)), cornac_env)
            ours = f"http://127.0.0.1:{settings.web_port}/recommendation?top={TOP}&customer_id="
            theirs = f"http://127.0.0.1:{cornac.web_port}/recommend?k={TOP}&remove_seen=true&uid="
            paths = {
                "ours_sync_get": lambda c: _check(_get_json(ours + c)["items"], c),
                "cornac_bpr": lambda c: _check(_get_json(theirs + c)["recommendations"], c),
            }
            for url in (ours, theirs):
                wait_until(lambda url=url: _reachable(url + customers[0]), 300, interval_s=0.5, what=url)
            for c in customers[:WARMUP]:
                for fn in paths.values():
                    fn(c)
            samples = _interleaved(paths, customers)
    p50 = {name: float(np.percentile(s, 50) * 1000) for name, s in samples.items()}
    return {
        "data": "amazon-fashion-2023-ratings-blair (REAL), train + test files",
        "products": int(ratings["product_id"].nunique()),
        "customers_asked": N_CUSTOMERS,
        "top": TOP,
        **{name: _pct(s) for name, s in samples.items()},
        "ratio_p50_ours_over_cornac": round(p50["ours_sync_get"] / p50["cornac_bpr"], 2),
        "target_ratio": 2.0,
        "web": f"gunicorn gthread -w {settings.web_workers} --threads {settings.web_threads}, both servers",
        "ours": "GET /recommendation: web -> Redis -> one Celery worker (prefork) -> Redis -> web",
        "cornac": "GET /recommend?remove_seen=true: BPR scored in the web process (cornac.serving.app)",
        "cpu_count": os.cpu_count(),
    }


def _check(items: list, customer: str) -> None:
    if len(items) != TOP:
        raise RuntimeError(f"{len(items)} items for {customer}, expected {TOP}")


def _reachable(url: str) -> bool:
    """Whether `url` answers 200 (ours answers 202 until the worker has loaded the model)."""
    try:
        _get_json(url)
        return True
    except (OSError, RuntimeError):
        return False
