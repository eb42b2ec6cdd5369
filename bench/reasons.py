"""What reasons and filters cost a recommendation (`python -m bench reasons`; issue 15 items 3, 4).

In process (`Recommender.recommend`, the worker's call), top 10, the variants run back to back for
each customer in a rotating order (as `bench serving` does), so load from other processes falls on
all of them alike: plain (reasons off, no filter), reasons, filters, reasons + filters. Reported:
p50/p99 of each and the p50 of the per-customer difference to plain, with the load average.

Catalogs: the SYNTHETIC demo world's model (the published one, or one trained now), filtered by a
category prefix and the median price from its meta; and, when `python -m bench catalog` left it in
var/bench/catalog/, its 100,000-product two-stage artifact, whose synthetic products have no
category or price: they get one here (`Recommender.with_catalog`): 8 category groups of 5 styles
(about 12,500 products: at most exact_max_products, so scored exactly) and log-normal prices
(max_price = the median: 50,000 products, served through the retriever's candidates).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from ml.config import REPO_ROOT, Settings

ARTIFACT_100K = REPO_ROOT / "var" / "bench" / "catalog" / "artifact-100000"


def _pct(ms: np.ndarray) -> dict:
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def measure(rec, filters: dict, n: int = 400, top: int = 10) -> dict:
    """Interleaved in-process latency of the variants (name -> kwargs of `recommend`)."""
    from bench.__main__ import _interleaved

    customers = rec.customers(min(n, 500))
    customers = (customers * (n // len(customers) + 1))[:n]
    variants = {"plain": {"reasons": False}, "reasons": {}}
    for name, f in filters.items():
        variants[f"filters_{name}"] = {"reasons": False, "filters": f}
        variants[f"reasons+filters_{name}"] = {"filters": f}
    paths = {name: (lambda c, kw=kw: rec.recommend(c, top, **kw)) for name, kw in variants.items()}
    for name in paths:  # warm-up, and every variant gives `top` items
        assert len(paths[name](customers[0])) == top, name
    samples = {k: np.asarray(v) * 1000 for k, v in _interleaved(paths, customers).items()}
    return {
        "requests": n,
        "top": top,
        "products": rec.n_products,
        "two_stage": rec.two_stage,
        "filters": {k: f.to_dict() for k, f in filters.items()},
        "allowed_products": {k: int(len(rec.allowed(f))) for k, f in filters.items()},
        **{name: _pct(ms) for name, ms in samples.items()},
        "p50_minus_plain_ms": {
            name: round(float(np.percentile(ms - samples["plain"], 50)), 3)
            for name, ms in samples.items()
            if name != "plain"
        },
    }


def demo(n: int) -> dict:
    from bench.__main__ import _model_dir
    from ml.catalog import Filters
    from ml.recommender import Recommender
    from ml.registry import ModelRegistry

    with tempfile.TemporaryDirectory() as tmp:
        rec = Recommender.load(ModelRegistry(_model_dir(Settings.from_env(), Path(tmp))).current_path())
    prefixes = rec.catalog.prefixes()
    second = {p: c for p, c in prefixes.items() if p.count(" > ") == 1}
    category = max(second, key=second.get)  # the largest second-level category
    price = float(np.nanmedian(rec.catalog.prices))
    out = measure(
        rec,
        {
            "category": Filters(category=category),
            "max_price": Filters(max_price=price),
            "both": Filters(category=category, max_price=price),
        },
        n,
    )
    return {
        "catalog": "SYNTHETIC demo world",
        "model_version": rec.version,
        "catalog_attributes_from": rec.catalog.source,
        **out,
    }


def catalog_100k(n: int) -> dict | None:
    from ml.catalog import Catalog, Filters
    from ml.recommender import Recommender

    if not (ARTIFACT_100K / "manifest.json").is_file():
        return None
    rec = Recommender.load(ARTIFACT_100K)
    styles = [int(re.search(r"style (\d+)", t).group(1)) for t in rec._titles]
    rng = np.random.default_rng(0)
    prices = np.round(np.exp(rng.normal(3.5, 0.6, rec.n_products)), 2)
    rec = rec.with_catalog(Catalog([f"Group {s // 5} > Style {s}" for s in styles], prices, "bench"))
    out = measure(
        rec,
        {"category": Filters(category="Group 3"), "max_price": Filters(max_price=float(np.median(prices)))},
        n,
    )
    return {"catalog": "SYNTHETIC 100k catalog of bench catalog, attributes made up here", **out}


def bench_reasons(n: int = 400) -> dict:
    before = os.getloadavg()
    out = {"demo": demo(n), "catalog_100k": catalog_100k(n // 2)}
    out["load_average_before_after"] = [round(before[0], 2), round(os.getloadavg()[0], 2)]
    out["cpu_count"] = os.cpu_count()
    return out
