"""The serving object: top-N unseen products, vectorised scoring, documented cold start."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.recommender import Recommender
from ml.registry import ModelRegistry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rec(models_dir) -> Recommender:
    return Recommender.load(ModelRegistry(models_dir).current_path())


def _position(rec: Recommender, customer_id: str) -> int:
    """The customer's row in the model's tables (what predict / score_customers take)."""
    return int(pd.Index(rec.tables.customer_ids).get_loc(customer_id))


def test_top_n_distinct_unseen_sorted(rec):
    cid = rec.customers(1)[0]
    u = _position(rec, cid)
    seen = set(rec.tables.product_ids[rec.seen(u)])
    items = rec.recommend(cid, top=5)
    ids = [x["product_id"] for x in items]
    assert len(ids) == 5 == len(set(ids))
    assert not seen & set(ids)
    scores = [x["score"] for x in items]
    assert scores == sorted(scores, reverse=True)
    positions = pd.Index(rec.tables.product_ids).get_indexer(ids)
    expected_rating = rec.predict(np.full(len(ids), u), positions)
    for x, rating in zip(items, expected_rating):
        assert set(x) == {"product_id", "score", "predicted_rating", "title", "image", "cold_start", "strategy",
                          "path"}
        assert x["cold_start"] is False and x["strategy"] == "hybrid" and x["path"] == "exact"
        assert x["predicted_rating"] == pytest.approx(float(rating), abs=1e-4)  # the pair path agrees
        assert x["title"]


def test_recommend_agrees_with_vectorised_scores(rec):
    cid = rec.customers(3)[2]
    u = _position(rec, cid)
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
    u = _position(rec, cid)
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


def test_predict_agrees_with_the_ratings_shown_in_recommendations(rec):
    """predict() on every product of a customer gives the predicted_rating recommend() shows (a
    second code path, the customer x catalog grid) and is not pinned to a clip bound."""
    cid = rec.customers(2)[1]
    u = _position(rec, cid)
    shown = {x["product_id"]: x["predicted_rating"] for x in rec.recommend(cid, top=rec.n_products,
                                                                          exclude_seen=False)}
    assert len(shown) == rec.n_products
    pred = rec.predict(np.full(rec.n_products, u), np.arange(rec.n_products))
    assert pred.shape == (rec.n_products,) and pred.dtype.kind == "f"
    np.testing.assert_allclose(pred, [shown[str(p)] for p in rec.tables.product_ids], atol=1e-4)
    inside = (pred > 1.0) & (pred < 5.0)
    assert inside.mean() > 0.5 and np.ptp(pred[inside]) > 0.01  # a real rating, not a constant or a bound


def test_predict_handles_unknown_ids_row_by_row(rec):
    """-1 (unknown customer or product) is scored, and never changes the other rows of the batch."""
    pred = rec.predict(np.array([0, -1, 0, 1]), np.array([0, 0, -1, 2]))
    assert pred.shape == (4,) and np.isfinite(pred).all() and np.all((pred >= 1) & (pred <= 5))
    alone = [rec.predict(np.array([u]), np.array([i]))[0] for u, i in ((0, 0), (-1, 0), (0, -1), (1, 2))]
    np.testing.assert_allclose(pred, alone, rtol=1e-5, atol=1e-5)


def test_an_artifact_of_another_format_is_refused_with_a_hint(models_dir, tmp_path):
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(ModelRegistry(models_dir).current_path(), old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))
    with pytest.raises(ValueError, match="train the model again"):
        Recommender.load(old)
