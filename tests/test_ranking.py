"""The ranking rule: the item-kNN term computed at serving equals the item-kNN baseline, every call
shape ranks by the same rule, and the rule is what the artifact says."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from ml.baselines import ItemKNN
from ml.features import knn_grid, knn_top, pair_features, pair_signals, pair_signals_grid
from ml.ranking import RankingRule, ranking_score
from ml.recommender import Recommender, ServingPath
from ml.registry import ModelRegistry
from ml.scoring import Heads

pytestmark = pytest.mark.slow
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def rec(models_dir) -> Recommender:
    """The session's small trained world (tests/conftest.py)."""
    return Recommender.load(ModelRegistry(models_dir).current_path())


@pytest.fixture
def knn_rec(rec) -> Recommender:
    """The same model ranked with a strong kNN term and the rating factor."""
    r = copy.copy(rec)
    r.ranking = RankingRule(rating_weight=0.5, knn_weight=3.0, knn_shrink=10.0)
    return r


def _frame(t) -> pd.DataFrame:
    rows = np.repeat(np.arange(t.n_customers), np.diff(t.rated_indptr))
    return pd.DataFrame({"u": rows, "i": t.rated_indices, "rating": t.rated_rating})


@pytest.mark.parametrize("shrink", [0.0, 10.0, 50.0])
def test_knn_term_equals_the_item_knn_baseline(rec, shrink):
    t = rec.tables
    users = np.arange(-1, t.n_customers)
    baseline = ItemKNN((shrink,)).fit(_frame(t), t.n_customers, t.n_products).score(users)
    got = knn_grid(t, users, shrink)
    assert np.ptp(got) > 0.1 and (got[0] == 0).all()  # real scores; the unknown customer none
    np.testing.assert_allclose(got, baseline, **TOL)


def test_every_call_shape_gives_the_same_knn_and_features(rec):
    t = rec.tables
    rng = np.random.default_rng(1)
    u, i = rng.integers(-1, t.n_customers, 400), rng.integers(-1, t.n_products, 400)
    items = np.arange(-1, t.n_products)
    grid = pair_signals_grid(t, np.arange(-1, t.n_customers), items, 10.0)
    aligned = pair_signals(t, u, i, 10.0)
    np.testing.assert_allclose(aligned.knn, grid.knn[u + 1, i + 1], **TOL)
    np.testing.assert_allclose(aligned.features, grid.features[u + 1, i + 1], **TOL)
    np.testing.assert_allclose(aligned.features, pair_features(t, u, i), **TOL)
    assert (aligned.knn[i < 0] == 0).all() and (aligned.knn[u < 0] == 0).all()
    assert pair_signals(t, u, i).knn is None


def test_the_rule_adds_knn_at_the_logit_scale():
    logit, knn, rating = (
        np.array([[0.0, 1.0, -2.0]]),
        np.array([[0.5, 0.0, 1.0]]),
        np.array([[5.0, 3.0, 1.0]]),
    )
    heads = Heads(rating, logit, knn)
    expected = 1 / (1 + np.exp(-(logit + 2.0 * knn))) * ((rating - 0.5) / 4.5) ** 0.5
    np.testing.assert_allclose(RankingRule(0.5, 2.0, 10.0).score(heads), expected)
    np.testing.assert_allclose(RankingRule().score(Heads(None, logit, None)), 1 / (1 + np.exp(-logit)))
    assert RankingRule(0.0, 2.0, 10.0).heads == ("pick",) and RankingRule(1.0).shrink is None
    np.testing.assert_allclose(ranking_score(rating, logit, 0.0, knn, 0.0), 1 / (1 + np.exp(-logit)))


def _formula(rating, pick_logit, rating_weight, knn, knn_weight):
    """`ranking_score` as its docstring writes it, one temporary array per step."""
    logit = pick_logit if knn is None or knn_weight == 0 else pick_logit + knn_weight * knn
    return (
        1.0
        / (1.0 + np.exp(-np.clip(logit, -30, 30)))
        * ((np.clip(rating, 1.0, 5.0) - 0.5) / 4.5) ** rating_weight
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ranking_scores_equal_the_formula_bit_for_bit(dtype):
    """The in-place evaluation gives the formula's values and dtype exactly: ties (saturated
    sigmoids past +-17 in float32) and orders are those the ranking choice measured."""
    rng = np.random.default_rng(3)
    logit = (rng.standard_normal((40, 300)) * 12).astype(dtype)  # many saturate
    knn = np.abs(rng.standard_normal((40, 300))).astype(np.float32) * 0.3
    rating = rng.uniform(0.0, 6.0, (40, 300)).astype(np.float32)
    ones = np.ones((40, 1), np.float32)
    for r, w, k, kw in [
        (ones, 0.0, None, 0.0),
        (ones, 0.0, knn, 64.0),
        (rating, 0.5, knn, 2.0),
        (rating, 2.0, None, 0.0),
        (rating.astype(np.float64), 0.0, knn, 0.0),
    ]:
        got, want = ranking_score(r, logit, w, k, kw), _formula(r, logit, w, k, kw)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    before = logit.copy()
    ranking_score(ones, logit, 0.0, knn, 64.0)
    np.testing.assert_array_equal(logit, before)  # the caller's logits are left alone


def test_an_artifact_without_knn_weights_ranks_as_before():
    assert RankingRule.from_manifest({"ranking": {"rating_weight": 0.25}}) == RankingRule(0.25, 0.0)
    assert RankingRule.from_manifest({}) == RankingRule()


def test_serving_ranks_by_the_rule_on_every_path(rec, knn_rec):
    """recommend (whole catalog), recommend over candidates and recommend_many order products by
    the rule's score over the catalog; the kNN term changes the order."""
    customers = rec.customers(12)[:8]
    us = np.array([rec._customer_index.get_loc(c) for c in customers])
    full = knn_rec.score(us)
    knn = knn_grid(rec.tables, us, 10.0)
    np.testing.assert_allclose(full.knn, knn, **TOL)
    score = knn_rec.score_customers(us)
    np.testing.assert_allclose(
        score, RankingRule(0.5, 3.0, 10.0).score(Heads(full.rating, full.logit, knn)), **TOL
    )
    changed = 0
    many = knn_rec.recommend_many(customers, top=6)
    for row, (cid, u) in enumerate(zip(customers, us)):
        s = score[row].copy()
        s[rec.seen(int(u))] = -np.inf
        expected = list(rec.tables.product_ids[np.lexsort((np.arange(len(s)), -s))[:6]])
        got = knn_rec.recommend(cid, top=6)
        assert [x["product_id"] for x in got] == expected
        assert [x["product_id"] for x in many[row]] == expected
        cand = np.arange(rec.n_products)
        assert [x["product_id"] for x in knn_rec.recommend(cid, top=6, candidates=cand)] == expected
        changed += [x["product_id"] for x in rec.recommend(cid, top=6)] != expected
    assert changed > 0  # the term is not a no-op on this world


def test_knn_top_is_the_top_of_the_knn_grid(rec):
    t = rec.tables
    for u in range(0, t.n_customers, 7):
        seen = rec.seen(u)
        row = knn_grid(t, np.array([u]), 10.0)[0].astype(np.float64)
        row[seen] = -np.inf
        ranked = [int(i) for i in np.lexsort((np.arange(len(row)), -row)) if row[i] > 0]
        got = knn_top(t, u, 6, 10.0, seen)
        assert list(got) == ranked[:6]
        assert len(knn_top(t, u, 10**6, 10.0)) == int((knn_grid(t, np.array([u]), 10.0) > 0).sum())


def test_two_stage_candidates_add_the_knn_best_when_the_rule_uses_it(rec, knn_rec):
    """The retriever learns the pick head only: with a kNN term the customer's kNN best join its
    candidates (seen products never), so the rerank can reach them."""
    k = 2  # few candidates, so that the kNN best is often not among them
    staged = knn_rec.with_serving(ServingPath(retrieval_k=k, exact_max_products=0))
    plain = rec.with_serving(ServingPath(retrieval_k=k, exact_max_products=0))
    plain.ranking = RankingRule()
    added = 0
    for u in range(rec.tables.n_customers):
        base = plain.retrieve(u, 1)
        got = staged.retrieve(u, 1)
        extra = knn_top(rec.tables, u, 1, 10.0, rec.seen(u))
        assert list(got[: len(base)]) == list(base) and set(got) == set(base) | set(extra)
        assert not set(got) & set(rec.seen(u).tolist())
        added += len(set(extra) - set(base))
    assert added > 0


def test_filtered_two_stage_candidates_add_the_knn_best_within_the_filter(rec, knn_rec):
    staged = knn_rec.with_serving(ServingPath(retrieval_k=2, exact_max_products=0))
    allowed = np.arange(0, rec.n_products, 2)
    added = 0
    for u in range(rec.tables.n_customers):
        got, path = staged._filtered_candidates(u, allowed, 1, True)
        seen = rec.seen(u)
        best = [int(i) for i in knn_top(rec.tables, u, rec.n_products, 10.0, seen) if i % 2 == 0][:1]
        assert (
            path == "two_stage"
            and set(best) <= set(got.tolist())
            and set(got.tolist()) <= set(allowed.tolist())
        )
        assert not set(got.tolist()) & set(seen.tolist())
        added += len(got) > 2
    assert added > 0
