"""The serving object: top-N unseen products, vectorised scoring, documented cold start."""
from __future__ import annotations

import numpy as np
import pytest

from ml.recommender import Recommender
from ml.registry import ModelRegistry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rec(models_dir) -> Recommender:
    return Recommender.load(ModelRegistry(models_dir).current_path())


def test_top_n_distinct_unseen_sorted(rec):
    cid = rec.customers(1)[0]
    u = rec._customer_index.get_loc(cid)
    seen = set(rec.tables.product_ids[rec.seen(u)])
    items = rec.recommend(cid, top=5)
    ids = [x["product_id"] for x in items]
    assert len(ids) == 5 == len(set(ids))
    assert not seen & set(ids)
    scores = [x["score"] for x in items]
    assert scores == sorted(scores, reverse=True)
    for x in items:
        assert set(x) == {"product_id", "score", "predicted_rating", "title", "image", "cold_start", "strategy"}
        assert 1.0 <= x["predicted_rating"] <= 5.0 and x["cold_start"] is False and x["strategy"] == "hybrid"
        assert x["title"]


def test_recommend_agrees_with_vectorised_scores(rec):
    cid = rec.customers(3)[2]
    u = rec._customer_index.get_loc(cid)
    scores = rec.score_customers(np.array([u]))[0]
    scores[rec.seen(u)] = -np.inf
    expected = list(rec.tables.product_ids[np.argsort(-scores, kind="stable")[:4]])
    assert [x["product_id"] for x in rec.recommend(cid, top=4)] == expected


def test_exclude_seen_false_may_return_rated_products(rec):
    cid = rec.customers(1)[0]
    items = rec.recommend(cid, top=rec.n_products, exclude_seen=False)
    assert len(items) == rec.n_products


def test_top_larger_than_catalog_returns_what_exists(rec):
    cid = rec.customers(1)[0]
    u = rec._customer_index.get_loc(cid)
    assert len(rec.recommend(cid, top=10_000)) == rec.n_products - len(rec.seen(u))


def test_unknown_customer_gets_flagged_popularity(rec):
    items = rec.recommend("AUNKNOWNCUSTOMERXXXXXXXXXXXX", top=3)
    assert len(items) == 3
    assert all(x["cold_start"] and x["strategy"] == "popularity" for x in items)
    counts = rec.tables.prod_count[[list(rec.tables.product_ids).index(x["product_id"]) for x in items]]
    assert list(counts) == sorted(counts, reverse=True) and counts[0] == rec.tables.prod_count.max()


def test_bad_top_is_an_error(rec):
    with pytest.raises(ValueError):
        rec.recommend(rec.customers(1)[0], top=0)


def test_predict_handles_unknown_ids(rec):
    pred = rec.predict(np.array([0, -1, 0]), np.array([0, 0, -1]))
    assert pred.shape == (3,) and np.all((pred >= 1) & (pred <= 5))


def test_an_artifact_of_another_format_is_refused_with_a_hint(models_dir, tmp_path):
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(ModelRegistry(models_dir).current_path(), old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))
    with pytest.raises(ValueError, match="train the model again"):
        Recommender.load(old)
