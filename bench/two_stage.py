"""Two-stage serving against exact serving on REAL data: does retrieval + rerank lose quality?

`python -m bench two_stage` (part of `make bench`). For each real data set present under
../shared/data: the hybrid is trained on the leave-last-out training part WITH the retriever
(`TrainConfig(retriever="always")`; the retriever is distilled from the pick head as in production),
then every ranked test customer is ranked twice by the same loaded model:
- exact: the whole catalog scored by the heads (what serving does below `exact_max_products`);
- two-stage: the heads' scores kept only on the retriever's `retrieval_k` candidates (seen products
  removed before the cut, exactly `Recommender.retrieve`), everything else ranked last — what
  serving returns above the threshold.
Recall@10 and NDCG@10 per customer for both, and the paired-bootstrap interval of two-stage − exact.
The claim holds when that interval contains 0 (or lies above it). JSON to var/bench/two_stage.json.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ml.config import REPO_ROOT, Settings

SHARED = REPO_ROOT.parent / "shared" / "data"
DATA_SETS = ("amazon-fashion-2018-5core", "amazon-fashion-2023-ratings-blair")
OUT = REPO_ROOT / "var" / "bench"


def two_stage_scores(rec, staged):
    """score_fn for ranking_metrics: exact scores on the retriever's candidates, -inf elsewhere."""

    def score(users: np.ndarray) -> np.ndarray:
        exact = rec.score_customers(users)
        out = np.full_like(exact, -np.inf)
        for row, u in enumerate(users):
            candidates = staged.retrieve(int(u), top=10, exclude_seen=True)
            out[row, candidates] = exact[row, candidates]
        return out

    return score


def compare_paths(data: Path, work: Path, settings: Settings, k: int = 10) -> dict:
    """Train with the retriever on the 'last' split of `data`; exact vs two-stage metrics + intervals."""
    from ml.data import load_dataset
    from ml.metrics import csr_from_pairs, paired_bootstrap, ranking_metrics
    from ml.recommender import Recommender, ServingPath
    from ml.split import split_reviews
    from ml.train import TrainConfig, fit_artifact

    dataset = load_dataset(data)
    train, test = split_reviews(dataset.reviews, "last")
    artifact = work / "hybrid-last"
    fit_artifact(dataset, train, artifact, TrainConfig(retriever="always", verbose=0), "last", settings)
    rec = Recommender.load(artifact)
    staged = rec.with_serving(ServingPath(settings.retrieval_k, exact_max_products=0))
    cust, prod = pd.Index(rec.tables.customer_ids), pd.Index(rec.tables.product_ids)
    tu, ti = (
        cust.get_indexer(train["customer_id"].astype(str)),
        prod.get_indexer(train["product_id"].astype(str)),
    )
    su, si = (
        cust.get_indexer(test["customer_id"].astype(str)),
        prod.get_indexer(test["product_id"].astype(str)),
    )
    known = su >= 0
    users = np.unique(su[known])
    n_c, n_p = rec.tables.n_customers, rec.tables.n_products
    exclude, relevant = csr_from_pairs(tu, ti, n_c), csr_from_pairs(su[known], si[known], n_c)
    runs = {
        name: ranking_metrics(fn, users, exclude, relevant, n_p, k=k, per_customer=True)
        for name, fn in (("exact", rec.score_customers), ("two_stage", two_stage_scores(rec, staged)))
    }
    out = {
        "data": data.name,
        "products": n_p,
        "ranked_customers": int(len(users)),
        "retrieval_k": settings.retrieval_k,
        "distill": rec.manifest["retrieval"].get("heldout"),
    }
    for metric in (f"recall@{k}", f"ndcg@{k}"):
        a, b = runs["two_stage"][metric], runs["exact"][metric]
        margin = paired_bootstrap(a, b)
        low, high = margin["ci95"]
        out[metric] = {
            "exact": round(float(b.mean()), 5),
            "two_stage": round(float(a.mean()), 5),
            "two_stage_minus_exact": round(margin["diff"], 5),
            "ci95": [round(low, 5), round(high, 5)],
            "holds": bool(low <= 0 <= high or low > 0),
        }
    return out


def bench_two_stage() -> dict:
    settings = Settings.from_env()
    rows = []
    for name in DATA_SETS:
        path = SHARED / name
        if not path.exists():
            rows.append({"data": name, "missing": str(path)})
            continue
        with tempfile.TemporaryDirectory(prefix="two-stage-") as work:
            rows.append(compare_paths(path, Path(work), settings))
        print(json.dumps(rows[-1]), flush=True)
    result = {"real_data": True, "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "two_stage.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    bench_two_stage()
