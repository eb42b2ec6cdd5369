import math

import numpy as np
import pytest

from ml.metrics import csr_from_pairs, mae, paired_bootstrap, ranking_metrics, rmse, top_k

LOG3 = math.log2(3)


def scorer(matrix):
    matrix = np.asarray(matrix, dtype=float)
    return lambda c: matrix[np.asarray(c)]


def test_rmse_mae():
    assert rmse([1, 2, 3], [1, 2, 3]) == 0.0
    assert rmse([1, 3], [2, 5]) == pytest.approx(math.sqrt((1 + 4) / 2))
    assert mae([1, 3], [2, 5]) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        rmse([1, 2], [1])


def test_hand_computed_recall_ndcg():
    s = scorer([[0.9, 0.8, 0.7, 0.6, 0.5]])
    # top-2 = items 0, 1; relevant {1, 4}: one hit at rank 2.
    m = ranking_metrics(s, np.array([0]), None, [np.array([1, 4])], n_items=5, k=2)
    assert set(m) == {"recall@2", "ndcg@2"}
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx((1 / LOG3) / (1 + 1 / LOG3))
    # k=3 with 2 relevant: still one hit; ideal DCG over min(3, 2) = 2 positions.
    m = ranking_metrics(s, np.array([0]), None, [np.array([1, 4])], n_items=5, k=3)
    assert m["recall@3"] == pytest.approx(0.5)
    assert m["ndcg@3"] == pytest.approx((1 / LOG3) / (1 + 1 / LOG3))
    # Recall is |hits| / |relevant| (not capped at k): 3 relevant, k=1, one hit -> 1/3.
    m = ranking_metrics(s, np.array([0]), None, [np.array([0, 1, 2])], n_items=5, k=1)
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["ndcg@1"] == pytest.approx(1.0)


def test_exclusion_removes_items_from_ranking():
    s = scorer([[0.9, 0.8, 0.7, 0.6, 0.5]])
    # Excluding item 0 moves item 1 to rank 1.
    m = ranking_metrics(s, np.array([0]), [np.array([0])], [np.array([1, 4])], n_items=5, k=2)
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx(1 / (1 + 1 / LOG3))
    # An excluded item never counts as a hit, even when it is relevant.
    m = ranking_metrics(s, np.array([0]), [np.array([0, 1, 2, 3])], [np.array([0])], n_items=5, k=2)
    assert m["recall@2"] == 0.0


def test_average_over_customers_and_skip_empty():
    s = scorer([[3, 2, 1], [1, 2, 3], [5, 5, 5]])
    rel = [np.array([0]), np.array([0]), np.array([], dtype=int)]
    m = ranking_metrics(s, np.array([0, 1, 2]), None, rel, n_items=3, k=1)
    # Customer 0 hits at rank 1, customer 1 misses, customer 2 is skipped.
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["ndcg@1"] == pytest.approx(0.5)
    empty = ranking_metrics(s, np.array([2]), None, [np.array([], dtype=int)], n_items=3, k=1)
    assert math.isnan(empty["recall@1"])


def test_ties_broken_by_item_index():
    flat = np.zeros((3, 1000))
    assert top_k(flat, 10).tolist() == [list(range(10))] * 3
    s = np.array([[1.0, 2.0, 2.0, 0.0, 2.0, 2.0]])
    assert top_k(s, 3).tolist() == [[1, 2, 4]]
    assert top_k(s, 6).tolist() == [[1, 2, 4, 5, 0, 3]]
    m = ranking_metrics(scorer(s), np.array([0]), None, [np.array([5])], n_items=6, k=3)
    assert m["recall@3"] == 0.0
    m = ranking_metrics(scorer(s), np.array([0]), None, [np.array([4])], n_items=6, k=3)
    assert m["ndcg@3"] == pytest.approx(0.5)  # rank 3 -> 1/log2(4)


def test_top_k_matches_full_stable_sort():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, size=(40, 60)).astype(float)
    s[s == 0] = -np.inf
    expected = np.argsort(-s, axis=1, kind="stable")[:, :7]
    assert np.array_equal(top_k(s, 7), expected)
    assert top_k(s, 100).shape == (40, 60)


def test_chunking_and_csr_give_same_result():
    rng = np.random.default_rng(0)
    n_c, n_i = 37, 50
    S = np.round(rng.normal(size=(n_c, n_i)), 1)  # rounding creates ties
    customers = rng.permutation(n_c)[:30]
    tu = rng.integers(0, n_c, 300)
    ti = rng.integers(0, n_i, 300)
    excl_csr = csr_from_pairs(tu, ti, n_c)
    excl_list = [np.unique(ti[tu == c]) for c in customers]
    rel = [rng.choice(n_i, size=rng.integers(0, 4), replace=False) for _ in customers]
    calls = []

    def fn(c):
        calls.append(len(c))
        return S[c]

    ref = ranking_metrics(fn, customers, excl_list, rel, n_items=n_i, k=5, chunk=10_000)
    for chunk in (1, 4, 7):
        calls.clear()
        got = ranking_metrics(fn, customers, excl_list, rel, n_items=n_i, k=5, chunk=chunk)
        assert got == pytest.approx(ref, abs=1e-12)
        assert max(calls) <= chunk
    assert ranking_metrics(fn, customers, excl_csr, rel, n_items=n_i, k=5, chunk=4) == pytest.approx(
        ref, abs=1e-12
    )
    rel_csr = csr_from_pairs(np.repeat(customers, [len(r) for r in rel]), np.concatenate(rel), n_c)
    assert ranking_metrics(fn, customers, excl_csr, rel_csr, n_items=n_i, k=5) == pytest.approx(
        ref, abs=1e-12
    )


@pytest.mark.parametrize("max_relevant", [1, 3, 6])
def test_counted_ranks_equal_the_sorted_top_k(monkeypatch, max_relevant):
    """The rank-counting path gives every customer exactly what sorting gives: ties by index, NaN
    scores, -inf scores, excluded relevant items, k past the catalog, customers without relevance."""
    import ml.metrics as metrics

    rng = np.random.default_rng(max_relevant)
    n_c, n_i = 300, 40
    s = rng.integers(0, 6, size=(n_c, n_i)).astype(float)  # few values: many ties
    s[rng.random(s.shape) < 0.05] = np.nan
    s[rng.random(s.shape) < 0.05] = -np.inf
    customers = np.arange(n_c)
    rel = [rng.choice(n_i, size=rng.integers(0, max_relevant + 1), replace=False) for _ in customers]
    excl = [
        np.union1d(rng.choice(n_i, 5), r[:1] if c % 7 == 0 else []).astype(int) for c, r in enumerate(rel)
    ]
    for k in (1, 5, 10, 60):
        monkeypatch.setattr(metrics, "RANK_PATH_MAX_RELEVANT", 0)  # always sort
        ref = ranking_metrics(scorer(s), customers, excl, rel, n_items=n_i, k=k, chunk=64, per_customer=True)
        monkeypatch.setattr(metrics, "RANK_PATH_MAX_RELEVANT", 10**6)  # always count
        got = ranking_metrics(scorer(s), customers, excl, rel, n_items=n_i, k=k, chunk=64, per_customer=True)
        f32 = s.astype(np.float32)  # float32 scores are ranked as float32 (the same order and ties)
        got32 = ranking_metrics(lambda c: f32[c], customers, excl, rel, n_items=n_i, k=k, per_customer=True)
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-12)
            np.testing.assert_allclose(got32[key], ref[key], rtol=0, atol=1e-12)
        assert ref[f"ndcg@{k}"].max() > 0 and ref[f"ndcg@{k}"].min() == 0  # hits and misses both seen


def test_relevant_ranks_are_positions_in_top_k():
    from ml.metrics import relevant_ranks

    s = np.array([[1.0, 2.0, 2.0, np.nan, 2.0, -np.inf], [0.0, 0.0, 0.0, 1.0, np.nan, 0.0]])
    order = top_k(s, 6)
    rows, cols = np.repeat([0, 1], 6), np.tile(np.arange(6), 2)
    expected = np.array([np.flatnonzero(order[r] == c)[0] for r, c in zip(rows, cols)])
    assert relevant_ranks(s, rows, cols).tolist() == expected.tolist()
    assert relevant_ranks(s, np.array([0, 1]), np.array([4, 3])).tolist() == [2, 0]


def test_misaligned_lists_rejected():
    with pytest.raises(ValueError):
        ranking_metrics(scorer([[1, 2]]), np.array([0]), None, [], n_items=2)
    with pytest.raises(ValueError):
        ranking_metrics(
            scorer([[1, 2]]), np.array([0]), None, [np.array([0])], n_items=3
        )  # wrong score shape


def test_per_customer_values_average_to_the_means():
    rng = np.random.default_rng(0)
    scores = rng.random((6, 20))
    relevant = [rng.choice(20, 2, replace=False) for _ in range(6)]
    kw = dict(customer_idx=np.arange(6), exclude=None, relevant=relevant, n_items=20, k=5)
    means = ranking_metrics(lambda c: scores[c], **kw)
    per = ranking_metrics(lambda c: scores[c], per_customer=True, **kw)
    assert per["ndcg@5"].shape == (6,)
    assert per["ndcg@5"].mean() == pytest.approx(means["ndcg@5"])
    assert per["recall@5"].mean() == pytest.approx(means["recall@5"])


def test_paired_bootstrap_tells_a_margin_from_noise():
    rng = np.random.default_rng(1)
    base = rng.normal(size=2000) ** 2
    same = paired_bootstrap(base, base)
    assert same["diff"] == 0 and same["ci95"] == [0.0, 0.0]
    worse = paired_bootstrap(base + 0.5, base)  # every unit 0.5 worse
    assert worse["ci95"][0] > 0.4
    noisy = paired_bootstrap(base + rng.normal(0, 0.01, 2000), base)
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1]
    sq_a, sq_b = base, base * 1.21  # RMSE of b is 1.1 x RMSE of a
    r = paired_bootstrap(sq_a, sq_b, lambda x: np.sqrt(x.mean(axis=-1)))
    assert r["diff"] == pytest.approx(rmse(np.zeros(2000), np.sqrt(sq_a)) * (1 - 1.1))
    with pytest.raises(ValueError):
        paired_bootstrap(base, base[:10])
