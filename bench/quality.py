"""The README's quality claims on the REAL data sets, each checked against its paired-bootstrap interval.

`python -m bench quality` (part of `make bench`). These runs train on thousands of ratings (the 2023
set alone takes minutes on 2 cores), so they live here rather than in `make test`, which checks the
same machinery on small data. A claim holds only when its 95% interval excludes 0 in the claimed
direction; a bare `hybrid > baseline` would flip with the machine whenever the two are tied.
Exit status 1 when a claim fails; every figure is written to var/bench/quality.json.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ml.config import REPO_ROOT, Settings

SHARED = REPO_ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Claim:
    """`hybrid − baseline` on `metric` is below 0 (lower is better) or above 0 (higher is better)."""

    data: str
    baseline: str
    metric: str
    lower_is_better: bool

    def check(self, hybrid_minus: dict) -> dict:
        margin = hybrid_minus[self.baseline][self.metric]
        low, high = margin["ci95"]
        holds = high < 0 if self.lower_is_better else low > 0
        return {
            "data": self.data,
            "claim": f"hybrid {self.metric} {'below' if self.lower_is_better else 'above'} {self.baseline}",
            "diff": round(margin["diff"], 5),
            "ci95": [round(low, 5), round(high, 5)],
            "holds": bool(holds),
        }


CLAIMS = (
    Claim("amazon-fashion-2018-5core", "bias", "rmse", True),
    Claim("amazon-fashion-2018-5core", "mf", "rmse", True),
    Claim("amazon-fashion-2023-ratings-blair", "popularity", "recall@10", False),
    Claim("amazon-fashion-2023-ratings-blair", "popularity", "ndcg@10", False),
    Claim("amazon-fashion-2023-ratings-blair", "mf", "ndcg@10", False),
    Claim("amazon-fashion-2023-ratings-blair", "bias", "rmse", True),
)


def bench_quality() -> dict:
    """Evaluate the hybrid on each real data set (leave-last-out) and check every claim."""
    from ml.evaluate import evaluate

    settings = Settings.from_env()
    results, checks = {}, []
    for data in dict.fromkeys(c.data for c in CLAIMS):
        path = SHARED / data
        if not path.exists():
            checks.append(
                {"data": data, "claim": "data present", "holds": False, "why": f"{path} is missing"}
            )
            continue
        with tempfile.TemporaryDirectory() as report:
            metrics = evaluate(path, Path(report), splits=("last",), settings=settings)
        results[data] = {"models": metrics["models"], "hybrid_minus": metrics["hybrid_minus"]}
        checks += [c.check(metrics["hybrid_minus"]) for c in CLAIMS if c.data == data]
    for c in checks:
        print(
            f"{'PASS' if c['holds'] else 'FAIL'}  {c['data']}: {c['claim']}  "
            f"{c.get('diff', '')} {c.get('ci95', c.get('why', ''))}",
            flush=True,
        )
    return {"claims": checks, "all_hold": all(c["holds"] for c in checks), "results": results}
