"""One scoring path: the numpy network equals the Keras model, and every call shape agrees
(customers x candidates, aligned rows, the serving top-N, batches, candidate lists)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
from keras import ops

from ml.features import model_inputs, pair_features, pair_grid
from ml.ranking import RankingRule
from ml.recommender import Recommender
from ml.registry import ModelRegistry
from support import assert_same_served

pytestmark = pytest.mark.slow
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def rec(models_dir) -> Recommender:
    """The session's small trained world (60 customers x 40 products, tests/conftest.py)."""
    return Recommender.load(ModelRegistry(models_dir).current_path())


def _rows(rec: Recommender, n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random aligned (customer, product) rows with unknown ids (-1) and never-rated products."""
    rng = np.random.default_rng(seed)
    u = rng.integers(-1, rec.tables.n_customers, n)
    i = rng.integers(-1, rec.n_products, n)
    cold = np.flatnonzero(rec.tables.prod_count == 0)
    assert len(cold) and (u == -1).any() and (i == -1).any()
    i[: len(cold)] = cold
    return u, i


def _keras(rec: Recommender, u: np.ndarray, i: np.ndarray) -> dict[str, np.ndarray]:
    out = rec.model(model_inputs(rec.tables, u, i), training=False)
    return {k: np.asarray(ops.convert_to_numpy(v)) for k, v in out.items()}


def _dense(t) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tables' CSR arrays as dense matrices: rated X, residuals R (r - mu - b_j), co-ratings C."""
    n_c, n_p = t.n_customers, t.n_products
    rows = np.repeat(np.arange(n_c), np.diff(t.rated_indptr))
    x = np.zeros((n_c, n_p))
    x[rows, t.rated_indices] = 1.0
    resid = np.zeros((n_c, n_p))
    resid[rows, t.rated_indices] = t.rated_rating - t.mu - t.prod_prior[t.rated_indices]
    c = np.zeros((n_p, n_p))
    c[np.repeat(np.arange(n_p), np.diff(t.cooc_indptr)), t.cooc_indices] = t.cooc_data
    return x, resid, c


def _dense_links(rec: Recommender) -> tuple[np.ndarray, np.ndarray]:
    """Reference pair sums from dense matrices: links = X C, resid = R C."""
    x, resid, c = _dense(rec.tables)
    return x @ c, resid @ c


def test_numpy_equals_keras_on_aligned_rows(rec):
    u, i = _rows(rec)
    ref = _keras(rec, u, i)
    got = rec.score_pairs(u, i)
    np.testing.assert_allclose(got.rating, ref["rating"], **TOL)
    np.testing.assert_allclose(got.logit, ref["pick"], **TOL)
    assert np.ptp(ref["pick"]) > 0.1 and np.ptp(ref["rating"]) > 0.01  # a trained, non-constant model


def test_numpy_equals_keras_on_customers_x_items(rec):
    u = np.array([0, 5, -1, rec.tables.n_customers - 1])
    items = np.array([3, -1, 0, rec.n_products - 1, 3, *np.flatnonzero(rec.tables.prod_count == 0)])
    got = rec.score(u, items)
    ref = _keras(rec, np.repeat(u, len(items)), np.tile(items, len(u)))
    np.testing.assert_allclose(got.rating, ref["rating"].reshape(len(u), -1), **TOL)
    np.testing.assert_allclose(got.logit, ref["pick"].reshape(len(u), -1), **TOL)


def test_the_trained_heads_take_content_affinity_and_use_it(rec):
    """The session model is trained with affinity, so the equality tests above cover its path."""
    assert rec.model.spec.affinity_blocks == ("content_mean", "content_wmean", "content_liked")
    for head in rec.net.heads.values():
        assert head.first.w_aff.shape[0] == 3 and np.abs(head.aff_wide).max() > 0


def test_affinity_is_the_cosine_of_the_customer_content_with_the_product_content(rec):
    """Both call shapes give cos(customer content_mean / content_wmean / content_liked, product
    content); a customer or product without content gets 0."""
    from sklearn.metrics.pairwise import cosine_similarity

    from ml.features import customer_features, product_features

    t, layout = rec.tables, rec.tables.layout
    u = np.array([0, 3, -1, 9])
    items = np.array([0, 7, -1, rec.n_products - 1])
    head = rec.net.heads["pick"]
    c = rec._customer_part(u, ("pick",))["pick"]
    grid = head.affinity(c, rec._product_part(items)["pick"])
    aligned = head.affinity(
        c.take(np.repeat(np.arange(4), 4)), rec._product_part(np.tile(items, 4))["pick"].aligned()
    )
    cf, pf = customer_features(t, u), product_features(t, items)
    for k, block in enumerate(("content_mean", "content_wmean", "content_liked")):
        want = cosine_similarity(cf[:, layout.customer.span(block)], pf[:, layout.product.span("content")])
        np.testing.assert_allclose(grid[:, :, k], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(aligned[:, 0, k].reshape(4, 4), want, rtol=1e-5, atol=1e-6)
    assert (grid[2] == 0).all() and (grid[:, 2] == 0).all() and np.abs(grid).max() > 0.1


def test_the_affinity_reads_the_tables_content_without_a_copy(rec):
    """Both heads' product halves hold the tables' own content array and the similar-products
    index's inverse norms (at 10^6 products a unit-length copy was 288 MB of a worker's RSS)."""
    for part in rec._prod.values():
        assert part.a is rec.tables.prod_content
        np.testing.assert_array_equal(part.a_inv[:-1], rec.content.exact.inv_norm)
        assert part.a_inv[-1] == 0  # the unknown product
        assert len(part.q) == len(part.a) + 1


def test_a_spec_from_before_content_affinity_builds_and_scores_without_it(rec):
    """Artifacts written before affinity existed have no `affinity` in their spec: their networks
    have no affinity inputs, and the numpy path still equals Keras on them."""
    from ml.model import ModelSpec, build_model
    from ml.scoring import ScoringNet

    old = rec.model.spec.to_dict()
    old.pop("affinity")
    model = build_model(ModelSpec.from_dict(old), seed=4)
    assert model.spec.n_affinity == 0 and not [w for w in model.weights if "affinity" in w.path]
    net = ScoringNet.from_model(model)
    u, i = _rows(rec)
    x = model_inputs(rec.tables, u, i)
    want = {k: np.asarray(ops.convert_to_numpy(v)) for k, v in model(x, training=False).items()}
    c = net.customer_part(x["customer"], x["customer_prior"], x["history"])
    p = {
        h: v.aligned() for h, v in net.product_part(x["product"], x["product_id"], x["product_prior"]).items()
    }
    got = net.forward(c, p, x["pair"][:, None, :])
    np.testing.assert_allclose(got.rating[:, 0], want["rating"], **TOL)
    np.testing.assert_allclose(got.logit[:, 0], want["pick"], **TOL)
    # customers x the same products (the grid path, one customer at a time), without affinity too
    gu, gi = np.array([0, 3, -1]), np.array([1, 4, -1, rec.n_products - 1])
    gx = model_inputs(rec.tables, np.repeat(gu, len(gi)), np.tile(gi, len(gu)))
    gwant = {k: np.asarray(ops.convert_to_numpy(v)) for k, v in model(gx, training=False).items()}
    cust = {
        h: v.take(np.arange(0, len(gx["customer"]), len(gi)))
        for h, v in net.customer_part(gx["customer"], gx["customer_prior"], gx["history"]).items()
    }
    prod = {
        h: v.take(slice(0, len(gi)))
        for h, v in net.product_part(gx["product"], gx["product_id"], gx["product_prior"]).items()
    }
    grid = net.forward(cust, prod, gx["pair"].reshape(len(gu), len(gi), -1))
    np.testing.assert_allclose(grid.rating.ravel(), gwant["rating"], **TOL)
    np.testing.assert_allclose(grid.logit.ravel(), gwant["pick"], **TOL)


def test_passes_cut_into_cache_sized_blocks_still_equal_keras(rec, monkeypatch):
    """Many small blocks (of rows, of products; both BLAS thread settings) give the one-pass result."""
    import ml.scoring

    u, i = _rows(rec)
    ref = _keras(rec, u, i)
    grid_u = np.array([0, 5, -1])
    grid_ref = _keras(rec, np.repeat(grid_u, rec.n_products), np.tile(np.arange(rec.n_products), 3))
    for small in (0, 10**9):
        monkeypatch.setattr(ml.scoring, "SMALL_PASS_ROWS", small)
        monkeypatch.setattr(ml.scoring, "BLOCK_ROWS", 7)
        monkeypatch.setattr(ml.scoring, "GRID_BLOCK_PRODUCTS", 2)  # 3 customers x blocks of 2 products
        got = rec.score_pairs(u, i)
        np.testing.assert_allclose(got.rating, ref["rating"], **TOL)
        np.testing.assert_allclose(got.logit, ref["pick"], **TOL)
        grid = rec.score(grid_u)
        np.testing.assert_allclose(grid.logit.ravel(), grid_ref["pick"], **TOL)
        np.testing.assert_allclose(grid.rating.ravel(), grid_ref["rating"], **TOL)


def test_pair_features_same_on_both_shapes_and_equal_dense_reference(rec):
    t = rec.tables
    u = np.array([2, -1, 7, 2, 30])
    items = np.array([0, 5, -1, 17, t.n_products - 1, 5])
    grid = pair_grid(t, u, items)
    rows = pair_features(t, np.repeat(u, len(items)), np.tile(items, len(u)))
    np.testing.assert_allclose(grid.reshape(-1, grid.shape[-1]), rows, rtol=1e-6, atol=1e-6)
    links, resid = _dense_links(rec)
    uu, ii = np.repeat(u, len(items)), np.tile(items, len(u))
    ok = (uu >= 0) & (ii >= 0)
    ref_links = np.where(ok, links[np.maximum(uu, 0), np.maximum(ii, 0)], 0)
    np.testing.assert_allclose(rows[:, 0], np.log1p(ref_links), rtol=1e-6)
    b_u = np.where(uu >= 0, t.cust_prior[np.maximum(uu, 0)], 0)
    ref_resid = np.where(ok, resid[np.maximum(uu, 0), np.maximum(ii, 0)], 0) - b_u * ref_links
    np.testing.assert_allclose(rows[:, 1], ref_resid / (ref_links + 3.0), rtol=1e-5, atol=1e-6)
    assert (ref_links > 0).any()
    np.testing.assert_allclose(pair_grid(t, u)[:, items[2] + 1], pair_grid(t, u, items[[2]] + 1)[:, 0])


# `_hits`' ways of finding a row's co-rating entries, forced by its cost constants: scan every C
# entry of the rated products with a table of the keys, scan them with a binary search in the keys,
# or binary-search each key in the rated products' C rows
HIT_WAYS = {
    "scan_table": dict(SEARCH_CALL_COST=10**12, TABLE_SLOTS_PER_ENTRY=10**12),
    "scan_search": dict(SEARCH_CALL_COST=10**12, TABLE_SLOTS_PER_ENTRY=0),
    "search_rows": dict(SEARCH_CALL_COST=0, SEARCH_KEY_COST=0),
}


@pytest.mark.parametrize("way", sorted(HIT_WAYS))
def test_every_way_of_finding_co_ratings_gives_the_dense_sums(rec, monkeypatch, way):
    """Grid and aligned rows, links, residuals and kNN: the same sums whichever way `_hits` takes,
    the dense reference's links, and the default choice's kNN."""
    from ml import features

    t = rec.tables
    u = np.array([2, -1, 7, 2, 30, 11])
    items = np.array([0, 5, -1, 17, t.n_products - 1, 5, 3])
    default = features.pair_signals_grid(t, u, items, knn_shrink=10.0)
    for name, value in HIT_WAYS[way].items():
        monkeypatch.setattr(features, name, value)
    got = features.pair_signals_grid(t, u, items, knn_shrink=10.0)
    rows = features.pair_signals(t, np.repeat(u, len(items)), np.tile(items, len(u)), knn_shrink=10.0)
    links, _ = _dense_links(rec)
    uu, ii = np.repeat(u, len(items)), np.tile(items, len(u))
    ref = np.where((uu >= 0) & (ii >= 0), links[np.maximum(uu, 0), np.maximum(ii, 0)], 0)
    assert (ref > 0).sum() > 10
    np.testing.assert_allclose(got.features[..., 0].ravel(), np.log1p(ref), rtol=1e-6)
    np.testing.assert_allclose(got.features, default.features, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got.knn, default.knn, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        rows.features, got.features.reshape(len(rows.features), -1), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(rows.knn, got.knn.ravel(), rtol=1e-6, atol=1e-7)


def test_co_rating_rows_are_kept_sorted_for_the_binary_search(rec):
    """Tables whose C rows come unsorted (written elsewhere) are sorted on construction, the
    caller's arrays left as they were."""
    import dataclasses

    from ml import features

    t = rec.tables
    assert features._sorted_rows(t.cooc_indptr, t.cooc_indices)
    ind, data = t.cooc_indices.copy(), t.cooc_data.copy()
    row = int(np.argmax(np.diff(t.cooc_indptr)))
    a, b = t.cooc_indptr[row], t.cooc_indptr[row + 1]
    assert b - a >= 2
    ind[a:b], data[a:b] = ind[a:b][::-1], data[a:b][::-1]
    assert not features._sorted_rows(t.cooc_indptr, ind)
    shuffled = dataclasses.replace(t, cooc_indices=ind, cooc_data=data)
    np.testing.assert_array_equal(shuffled.cooc_indices, t.cooc_indices)
    np.testing.assert_array_equal(shuffled.cooc_data, t.cooc_data)
    np.testing.assert_array_equal(ind[a:b], t.cooc_indices[a:b][::-1])


def test_pair_features_leave_out_removes_the_customers_own_co_ratings(rec):
    """Training rows (leave_out 1): C is recounted without the customer, their own rating excluded."""
    t = rec.tables
    x, resid, _ = _dense(t)
    u = np.repeat(np.arange(5), 3)
    i = np.concatenate([np.flatnonzero(x[k])[:3] for k in range(5)])
    got = pair_features(t, u, i, leave_out=np.ones(len(u)))
    for row, (uu, ii) in enumerate(zip(u, i)):
        others = x.copy()
        others[uu] = 0
        c = others.T @ others
        np.fill_diagonal(c, 0)
        mine = x[uu].copy()
        mine[ii] = 0
        links = mine @ c[:, ii]
        res = (resid[uu] * mine) @ c[:, ii] - t.cust_prior[uu] * links
        assert got[row, 0] == pytest.approx(np.log1p(links), abs=1e-5)
        assert got[row, 1] == pytest.approx(res / (links + 3.0), abs=1e-5)


def test_score_is_the_same_on_both_call_shapes(rec):
    u = np.array([1, -1, 11, 40])
    items = np.array([4, 0, -1, 39, 12])
    grid = rec.score(u, items)
    pairs = rec.score_pairs(np.repeat(u, len(items)), np.tile(items, len(u)))
    np.testing.assert_allclose(grid.rating.ravel(), pairs.rating, **TOL)
    np.testing.assert_allclose(grid.logit.ravel(), pairs.logit, **TOL)
    full = rec.score(u)
    np.testing.assert_allclose(full.logit[:, items[items >= 0]], grid.logit[:, items >= 0], **TOL)


def test_predict_equals_score_at_those_pairs(rec):
    u, i = _rows(rec, 50, seed=3)
    full = rec.score(np.arange(-1, rec.tables.n_customers), np.arange(-1, rec.n_products)).rating
    np.testing.assert_allclose(rec.predict(u, i), np.clip(full[u + 1, i + 1], 1, 5), **TOL)


def test_heads_for_customers_chunks_cover_every_customer(rec):
    u = np.arange(rec.tables.n_customers)
    chunks = list(rec.heads_for_customers(u, max_rows=rec.n_products * 7))
    assert len(chunks) == -(-len(u) // 7)
    np.testing.assert_array_equal(np.concatenate([c for c, _ in chunks]), u)
    np.testing.assert_allclose(np.concatenate([h.logit for _, h in chunks]), rec.score(u).logit, **TOL)


def _ids(items: list[dict]) -> list[str]:
    return [x["product_id"] for x in items]


@pytest.mark.parametrize("threads", [1, 2])
def test_recommend_many_equals_recommend_per_customer(rec, monkeypatch, threads):
    """Chunks of at most 5 customers (MAX_ROWS), side by side in 2 threads or one after another."""
    import ml.recommender as module

    ids = rec.customers(12) + ["NOBODY_KNOWS_ME"] + rec.customers(3)
    monkeypatch.setattr(module, "MAX_ROWS", rec.n_products * 5)  # several chunks
    rec = rec.with_serving(dataclasses.replace(rec.serving, batch_threads=threads))
    many = rec.recommend_many(ids, top=6)
    assert len(many) == len(ids)
    for cid, got in zip(ids, many):
        one = rec.recommend(cid, top=6)
        assert_same_served(got, one)  # batched BLAS may round the last float bit differently
    assert many[12][0]["path"] == "popularity" and many[0][0]["path"] == "exact"


def test_candidates_equal_to_the_catalog_give_the_full_path_result(rec):
    for cid in rec.customers(5):
        full = rec.recommend(cid, top=8)
        cand = rec.recommend(cid, top=8, candidates=np.arange(rec.n_products)[::-1])
        assert [{**x, "path": None} for x in cand] == [{**x, "path": None} for x in full]
        assert {x["path"] for x in cand} == {"candidates"} and {x["path"] for x in full} == {"exact"}


def test_candidates_rank_only_the_candidates_without_seen_products(rec):
    cid = rec.customers(1)[0]
    u = rec._customer_index.get_loc(cid)
    seen = rec.seen(u)
    cand = np.unique(np.concatenate([seen[:2], np.arange(0, rec.n_products, 3)]))
    score = rec.score_customers(np.array([u]))[0]
    allowed = np.setdiff1d(cand, seen)
    expected = allowed[np.lexsort((allowed, -score[allowed]))][:5]
    got = rec.recommend(cid, top=5, candidates=cand)
    assert _ids(got) == list(rec.tables.product_ids[expected])
    assert len(rec.recommend(cid, top=500, candidates=cand)) == len(allowed)
    with pytest.raises(ValueError):
        rec.recommend(cid, candidates=np.array([rec.n_products]))


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_rating_for_the_top_n_only_equals_the_full_computation(rec, weight):
    """Weight 0 ranks by the pick head alone and computes the rating head for the shown items only."""
    r = copy.copy(rec)
    r.ranking = RankingRule(rating_weight=weight)
    cid = rec.customers(4)[3]
    u = rec._customer_index.get_loc(cid)
    full = rec.score(np.array([u]))
    score = r.score_customers(np.array([u]))[0]
    score[rec.seen(u)] = -np.inf
    expected = np.lexsort((np.arange(len(score)), -score))[:7]
    got = r.recommend(cid, top=7)
    assert _ids(got) == list(rec.tables.product_ids[expected])
    for x, i in zip(got, expected):
        assert x["predicted_rating"] == pytest.approx(float(np.clip(full.rating[0, i], 1, 5)), abs=2e-4)
        assert x["score"] == pytest.approx(float(score[i]), abs=2e-6)


def _two_stage(rec: Recommender, k: int, threads: int = 0) -> Recommender:
    from ml.recommender import ServingPath

    staged = rec.with_serving(ServingPath(retrieval_k=k, exact_max_products=0, batch_threads=threads))
    assert staged.two_stage and not rec.two_stage  # the small catalog is below the default threshold
    return staged


def test_two_stage_with_every_candidate_equals_exact(rec):
    staged = _two_stage(rec, rec.n_products)
    for cid in rec.customers(8):
        got, ref = staged.recommend(cid, top=5), rec.recommend(cid, top=5)
        assert {it["path"] for it in got} == {"two_stage"} and {it["path"] for it in ref} == {"exact"}
        assert [it["product_id"] for it in got] == [it["product_id"] for it in ref]
        np.testing.assert_allclose([it["score"] for it in got], [it["score"] for it in ref], atol=2e-6)


def test_two_stage_ranks_the_retrievers_candidates_without_seen_products(rec):
    k = 8
    staged = _two_stage(rec, k)
    staged.ranking = RankingRule(rec.ranking.rating_weight)  # no kNN term: the retriever's k alone
    for cid in rec.customers(8):
        u = int(rec._customer_index.get_loc(cid))
        cand = {str(rec.tables.product_ids[i]) for i in staged.retrieve(u, 5)}
        got = [it["product_id"] for it in staged.recommend(cid, top=5)]
        seen = {str(rec.tables.product_ids[i]) for i in rec.seen(u)}
        assert len(got) == 5 and set(got) <= cand and not set(got) & seen
        assert len(staged.retrieve(u, 5)) == k


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("knn", [False, True], ids=["pick", "pick+knn"])
def test_two_stage_batch_equals_single_requests(rec, monkeypatch, knn, threads):
    """A batch job's customers get their single requests' answers: the index is asked once for the
    chunk, and each customer's candidates are ranked as its single request ranks them (the same
    products, order and reasons); the customer halves and pair signals (the kNN term's too) are
    computed once for the chunk and the items shown get their predicted ratings in one pass for it,
    where batched BLAS may round the last float bit differently (scores to 2e-6, ratings to the 4th
    decimal at most). Chunks of 3 customers: 10 customers make 4 of them, one after another; in 2
    threads, chunks of 1 side by side (their rows together within MAX_ROWS)."""
    import ml.recommender

    monkeypatch.setattr(ml.recommender, "MAX_ROWS", 3 * 12)
    staged = _two_stage(rec, 12, threads)
    if knn:
        staged.ranking = RankingRule(rec.ranking.rating_weight, knn_weight=1.0, knn_shrink=10.0)
    ids = rec.customers(10) + ["nobody-knows-me"]
    batch = staged.recommend_many(ids, top=4)
    single = [staged.recommend(cid, top=4) for cid in ids]
    assert len(batch) == len(single) == len(ids)
    for got, want in zip(batch, single):
        assert_same_served(got, want, rating_abs=2e-4)
    assert {it["path"] for items in batch[:10] for it in items} == {"two_stage"}


def test_a_spec_from_before_the_liked_block_takes_the_two_older_affinity_blocks(rec):
    """Session-11 artifacts: affinity on, a customer layout without "content_liked"."""
    from ml.model import ModelSpec, build_model
    from ml.scoring import ScoringNet

    old = rec.model.spec.to_dict()
    old["layout"]["customer"] = [b for b in old["layout"]["customer"] if b[0] != "content_liked"]
    spec = ModelSpec.from_dict(old)
    assert spec.affinity_blocks == ("content_mean", "content_wmean")
    net = ScoringNet.from_model(build_model(spec, seed=4))
    assert all(head.first.w_aff.shape[0] == 2 for head in net.heads.values())


def test_chunk_pair_signals_are_each_customers_own(rec):
    """`_pairs_each`: one aligned pass gives each customer row the pair signals (features and kNN
    score) its own grid call gives, exactly; a row with more items than the chunk was sized for
    gets None (computed alone by `_rank`), and an empty row an empty grid."""
    r = copy.copy(rec)
    r.ranking = RankingRule(rec.ranking.rating_weight, knn_weight=1.0, knn_shrink=10.0)
    rng = np.random.default_rng(0)
    u = np.array([rec._customer_index.get_loc(c) for c in rec.customers(4)], np.int64)
    items = [np.sort(rng.choice(rec.n_products, n, replace=False)) for n in (3, 10, 0, 5)]
    got = r._pairs_each(u, items, most=5)
    assert got[1] is None
    for row in (0, 2, 3):
        want = r.pairs(u[row : row + 1], items[row])
        assert got[row].features.shape == want.features.shape == (1, len(items[row]), want.features.shape[2])
        np.testing.assert_array_equal(got[row].features, want.features)
        np.testing.assert_array_equal(got[row].knn, want.knn)
