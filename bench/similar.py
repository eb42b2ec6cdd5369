"""Similar products on REAL photos: does the service's content similarity put products of the same
kind next to each other? (`python -m bench similar`; issue 15 item 2.)

Data: `../shared/data/fashion-product-images-small-subset`: 1,000 real product photos (Kaggle
"Fashion Product Images", Myntra), each labelled in `styles_for_images.csv` (articleType,
subCategory, masterCategory, productDisplayName); 207 of them also have a row in `styles_subset.csv`
(the "207 labelled photos" of the issue). The photos are embedded by the service's image encoder
(`ml.encoders.ImageEncoder`, EfficientNet-Lite0 ImageNet), reduced like the model's content block
(`ml.features.product_content`, PCA to TrainConfig.pca_dim + mask), and their neighbours found by
the class the service uses (`ml.retrieval.ContentIndex`, cosine, never the product itself). Every
query's top-5 is searched among all 1,000 photos.

Reported: the share of top-5 neighbours with the query's articleType, over all 1,000 photos and over
the 207, with a 95% bootstrap interval over queries, next to what random neighbours give in
expectation ((n_type - 1) / (N - 1) per query) and the share of queries of the most common type
(what always answering that type would score). Also the raw 1280-d embedding without PCA, and image
+ product-name text (the names usually contain the articleType word: an upper bound, not a claim).
Then the cost of a query against catalog size (random content vectors, exact and HNSW).
"""

from __future__ import annotations

import csv
import os
import time

import numpy as np

from ml.config import REPO_ROOT

DATA = REPO_ROOT.parent / "shared" / "data" / "fashion-product-images-small-subset"
K = 5


def _labels() -> tuple[list[dict], set[str]]:
    rows = list(csv.DictReader(open(DATA / "styles_for_images.csv", newline="")))
    rows = [r for r in rows if (DATA / "images" / f"{r['id']}.jpg").is_file()]
    subset = {r["id"] for r in csv.DictReader(open(DATA / "styles_subset.csv", newline=""))}
    return rows, subset & {r["id"] for r in rows}


def neighbour_share(
    content: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int = K, seed: int = 0
) -> dict:
    """Share of the top-k content neighbours (ml.retrieval.ContentIndex) with the query's label,
    over `queries` (positions), with a 95% bootstrap interval over queries."""
    from ml.retrieval import ContentIndex

    index = ContentIndex(content)
    per_query = np.array([np.mean(labels[index.neighbours(int(q), k)[0]] == labels[q]) for q in queries])
    rng = np.random.default_rng(seed)
    boot = [per_query[rng.integers(0, len(per_query), len(per_query))].mean() for _ in range(2000)]
    return {
        "share": round(float(per_query.mean()), 4),
        "ci95": [round(float(np.percentile(boot, 2.5)), 4), round(float(np.percentile(boot, 97.5)), 4)],
    }


def baselines(labels: np.ndarray, queries: np.ndarray) -> dict:
    """What neighbours that ignore content score: random ones (expectation), and always the most
    common label (the share of queries that have it)."""
    values, counts = np.unique(labels, return_counts=True)
    n_of = dict(zip(values, counts))
    random_share = np.mean([(n_of[labels[q]] - 1) / (len(labels) - 1) for q in queries])
    majority = values[np.argmax(counts)]
    return {
        "random_neighbours": round(float(random_share), 4),
        "always_majority_type": round(float(np.mean(labels[queries] == majority)), 4),
        "majority_type": str(majority),
    }


def _embed(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, dict]:
    from ml.encoders import ImageEncoder, TextEncoder

    t = time.perf_counter()
    images = ImageEncoder()  # the settings' precision, as training's
    image = images.encode([DATA / "images" / f"{r['id']}.jpg" for r in rows])
    image_s = time.perf_counter() - t
    t = time.perf_counter()
    text = TextEncoder().encode([r["productDisplayName"] for r in rows])
    return (
        image,
        text,
        {
            "image_s": round(image_s, 1),
            "text_s": round(time.perf_counter() - t, 1),
            "image_encoder": f"{images.name}-{images.version}",
        },
    )


def quality() -> dict:
    """Same-articleType share of the top-5 neighbours on the real photos, against baselines."""
    from ml.features import product_content
    from ml.train import TrainConfig

    rows, subset = _labels()
    image, text, seconds = _embed(rows)
    n = len(rows)
    dim = TrainConfig().pca_dim
    ones = np.ones(n, bool)
    variants = {
        "image (service: PCA + mask)": product_content(image, ones, None, np.zeros(n, bool), dim),
        "image raw 1280-d": image,
        "image + name text (service content; names hold the type word)": product_content(
            image, ones, text, ones, dim
        ),
    }
    everyone = np.arange(n)
    in_subset = np.array([i for i, r in enumerate(rows) if r["id"] in subset])
    out = {
        "data": str(DATA.relative_to(REPO_ROOT.parent)),
        "photos": n,
        "labelled_photos": n,
        "in_styles_subset": len(in_subset),
        "k": K,
        "pca_dim": dim,
        "embed_seconds": seconds,
        "neighbours_searched_among": "all photos",
        "by_label": {},
    }
    for label in ("articleType", "subCategory", "masterCategory"):
        labels = np.array([r[label] for r in rows])
        entry = {"n_types": int(len(np.unique(labels)))}
        for name, queries in (
            ("all_1000" if n == 1000 else f"all_{n}", everyone),
            ("styles_subset_207", in_subset),
        ):
            entry[name] = {
                "queries": int(len(queries)),
                **baselines(labels, queries),
                **{v: neighbour_share(c, labels, queries) for v, c in variants.items()},
            }
        out["by_label"][label] = entry
    return out


def latency(
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000), dim: int = 130, queries: int = 200
) -> list[dict]:
    """ContentIndex.neighbours(i, 10) against catalog size on synthetic vectors of the content width
    (2 x 64 PCA + 2 masks) clustered like products of a few hundred kinds (uniform Gaussian vectors
    in 130-d have no near neighbours to find): exact cosine at every size, HNSW (build, p50,
    recall@10 against exact) at 100k."""
    from ml.retrieval import ContentIndex

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(300, dim)).astype(np.float32)
    out = []
    for size in sizes:
        x = centres[rng.integers(0, len(centres), size)] + 0.5 * rng.normal(size=(size, dim)).astype(
            np.float32
        )
        q = rng.integers(0, size, queries)
        exact = ContentIndex(x)
        row = {"products": size, "exact": _p50(lambda i: exact.neighbours(int(i), 10), q)}
        if size == 100_000:
            t = time.perf_counter()
            graph = ContentIndex(x, hnsw_min=0)
            row["hnsw_build_s"] = round(time.perf_counter() - t, 1)
            row["hnsw"] = _p50(lambda i: graph.neighbours(int(i), 10), q)
            row["hnsw_recall@10"] = round(
                float(
                    np.mean(
                        [
                            len(set(graph.neighbours(int(i), 10)[0]) & set(exact.neighbours(int(i), 10)[0]))
                            / 10
                            for i in q
                        ]
                    )
                ),
                4,
            )
        out.append(row)
    return out


def _p50(fn, args) -> dict:
    fn(args[0])
    times = []
    for a in args:
        t = time.perf_counter()
        fn(a)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def bench_similar() -> dict:
    load_before = os.getloadavg()
    out = quality()
    out["query_latency"] = latency()
    out["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    out["cpu_count"] = os.cpu_count()
    return out
