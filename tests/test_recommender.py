"""The serving object: top-N unseen products, vectorised scoring, documented cold start."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.recommender import Recommender
from ml.registry import ModelRegistry
from support import assert_same_served

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
        assert set(x) == {
            "product_id",
            "score",
            "predicted_rating",
            "title",
            "image",
            "cold_start",
            "strategy",
            "path",
            "because",
        }
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


@pytest.mark.parametrize("rating_weight", [0.0, 1.0])
def test_nothing_to_rank_gives_empty_lists(rec, rating_weight):
    """No candidates, or only the customer's own products: [] for that customer, also in a two-stage
    batch beside customers who get items. The chunk's ratings: one rating-head pass for the items
    shown (weight 0), none when the ranking computed them (weight 1)."""
    from ml.ranking import RankingRule
    from ml.recommender import ServingPath

    no_candidates, only_seen, other = rec.customers(3)
    u, w, v = (_position(rec, c) for c in (no_candidates, only_seen, other))
    assert rec.recommend(no_candidates, top=3, candidates=np.array([], np.int64)) == []
    assert rec.recommend(only_seen, top=3, candidates=rec.seen(w)) == []
    unseen = np.setdiff1d(np.arange(rec.n_products), rec.seen(v))[:5]
    given = {u: np.array([], np.int64), w: rec.seen(w), v: unseen}
    # one thread: the three customers are one chunk (threads split a batch into chunks)
    staged = rec.with_serving(ServingPath(retrieval_k=5, exact_max_products=0, batch_threads=1))
    staged.ranking = RankingRule(rating_weight)
    staged.retrieve_many = lambda users, top, exclude_seen: [given[int(x)] for x in users]
    passes = []  # rows of each rating-head pass over shown items
    real_score_pairs = staged.score_pairs

    def counted(u, i, **kwargs):
        passes.append(len(u))
        return real_score_pairs(u, i, **kwargs)

    staged.score_pairs = counted
    batch = staged.recommend_many([no_candidates, only_seen, other], top=3)
    assert batch[0] == [] and batch[1] == [] and len(batch[2]) == 3
    assert passes == ([3] if rating_weight == 0 else [])
    staged.score_pairs = real_score_pairs
    expected = staged.recommend(other, top=3, candidates=unseen)
    assert [x["product_id"] for x in batch[2]] == [x["product_id"] for x in expected]
    assert [x["predicted_rating"] for x in batch[2]] == pytest.approx(
        [x["predicted_rating"] for x in expected], abs=2e-4
    )


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
    shown = {
        x["product_id"]: x["predicted_rating"]
        for x in rec.recommend(cid, top=rec.n_products, exclude_seen=False)
    }
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


# ---------------------------------------------------------------- reasons (issue 15 item 3)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def _expected_reasons(rec: Recommender, u: int, item: int) -> list[str]:
    """The customer's training products rated >= 3 most similar to `item` by cosine of the content
    vectors, computed here from the tables (not through the recommender), best two, similarity > 0."""
    t = rec.tables
    a, b = t.rated_indptr[u], t.rated_indptr[u + 1]
    rated = t.rated_indices[a:b][t.rated_rating[a:b] >= 3]
    rated = rated[rated != item]
    unit = _unit(t.prod_content.astype(np.float64))
    sims = unit[rated] @ unit[item]
    order = np.lexsort((rated, -sims))[:2]
    return [str(t.product_ids[rated[k]]) for k in order if sims[k] > 0]


def test_every_item_says_which_of_the_customers_own_products_support_it(rec):
    products = pd.Index(rec.tables.product_ids)
    checked = 0
    for cid in rec.customers(8):
        u = _position(rec, cid)
        t = rec.tables
        rated = dict(
            zip(
                t.product_ids[t.rated_indices[t.rated_indptr[u] : t.rated_indptr[u + 1]]],
                t.rated_rating[t.rated_indptr[u] : t.rated_indptr[u + 1]],
            )
        )
        for x in rec.recommend(cid, top=5):
            because = x["because"]
            assert because["method"] == "content_similarity"
            ids = [p["product_id"] for p in because["products"]]
            assert ids == _expected_reasons(rec, u, products.get_loc(x["product_id"]))
            assert set(ids) <= set(rated) and x["product_id"] not in ids  # their own, never the item
            sims = [p["similarity"] for p in because["products"]]
            assert sims == sorted(sims, reverse=True) and all(0 < s <= 1 for s in sims)
            for p in because["products"]:
                assert p["rating"] == rated[p["product_id"]] >= 3
                assert p["title"] == rec._titles[products.get_loc(p["product_id"])]
            checked += len(ids)
    assert checked >= 20  # most items do name two products: the test looked at real reasons


def test_cold_start_items_say_popular_and_reasons_can_be_left_out(rec):
    for x in rec.recommend("AUNKNOWNCUSTOMERXXXXXXXXXXXX", top=3):
        assert x["because"] == {"method": "popular", "products": []}
    cid = rec.customers(1)[0]
    on, off = rec.recommend(cid, top=5), rec.recommend(cid, top=5, reasons=False)
    assert [x["product_id"] for x in on] == [x["product_id"] for x in off]
    assert all("because" not in x for x in off)


def test_batch_items_carry_the_same_reasons(rec):
    ids = rec.customers(4) + ["nobody-at-all"]
    batch = rec.recommend_many(ids, top=4)  # scored as a matrix: scores equal to ~1e-6
    assert [[(x["product_id"], x["because"]) for x in items] for items in batch] == [
        [(x["product_id"], x["because"]) for x in rec.recommend(c, top=4)] for c in ids
    ]


# ---------------------------------------------------------------- filters (issue 15 item 4)


def _best(rec: Recommender, u: int, allowed: np.ndarray, top: int) -> list[str]:
    """The best `top` unseen products among `allowed` by the ranking score over the whole catalog."""
    scores = rec.score_customers(np.array([u]))[0]
    scores[rec.seen(u)] = -np.inf
    keep = np.zeros(rec.n_products, bool)
    keep[allowed] = True
    scores[~keep] = -np.inf
    order = np.argsort(-scores, kind="stable")
    return [str(rec.tables.product_ids[i]) for i in order[:top] if np.isfinite(scores[i])]


def _category_outside_the_top(rec: Recommender, cid: str, top: int) -> str:
    """A category prefix that holds enough unseen products but misses some of the unfiltered top."""
    from ml.catalog import Filters

    u = _position(rec, cid)
    unfiltered = {x["product_id"] for x in rec.recommend(cid, top=top)}
    for prefix, _count in sorted(rec.catalog.prefixes().items(), key=lambda kv: kv[1]):
        allowed = rec.allowed(Filters(category=prefix))
        inside = {str(p) for p in rec.tables.product_ids[allowed]}
        if len(set(allowed) - set(rec.seen(u))) >= top and unfiltered - inside:
            return prefix
    raise AssertionError("no category prefix of the test world excludes part of the top")


def test_the_session_model_has_categories_and_prices(rec):
    from ml.catalog import read_attributes

    assert rec.catalog.source == "artifact"  # products.json carries them (ml.train.product_records)
    assert len(rec.catalog.prefixes()) > 5 and np.isfinite(rec.catalog.prices).all()
    # the same as an older artifact reads from the training data's meta files
    bare = [{"product_id": str(p)} for p in rec.tables.product_ids]
    from_meta = read_attributes(bare, rec.manifest["data"])
    assert from_meta.source == "training data meta"
    np.testing.assert_array_equal(from_meta.prices, rec.catalog.prices)
    assert from_meta.prefixes() == rec.catalog.prefixes()


def test_category_filter_applies_before_the_cut(rec):
    from ml.catalog import Filters

    top = 5
    for cid in rec.customers(3):
        prefix = _category_outside_the_top(rec, cid, top)
        items = rec.recommend(cid, top=top, filters=Filters(category=prefix.upper()))
        assert len(items) == top
        paths = dict(zip(rec.tables.product_ids, rec.catalog.paths(np.arange(rec.n_products))))
        assert all((paths[x["product_id"]] + " > ").startswith(prefix + " > ") for x in items)
        assert [x["product_id"] for x in items] == _best(
            rec, _position(rec, cid), rec.allowed(Filters(category=prefix)), top
        )
        assert all(x["because"]["method"] == "content_similarity" for x in items)


def test_max_price_filter_applies_before_the_cut(rec):
    from ml.catalog import Filters

    cid = rec.customers(1)[0]
    u = _position(rec, cid)
    unfiltered = rec.recommend(cid, top=5)
    prices = dict(zip(rec.tables.product_ids, rec.catalog.prices))
    limit = float(np.median([prices[x["product_id"]] for x in unfiltered]))  # cuts part of the top
    assert any(prices[x["product_id"]] > limit for x in unfiltered)
    items = rec.recommend(cid, top=5, filters=Filters(max_price=limit))
    assert len(items) == 5 and all(prices[x["product_id"]] <= limit for x in items)
    assert [x["product_id"] for x in items] == _best(rec, u, rec.allowed(Filters(max_price=limit)), 5)
    assert rec.recommend(cid, top=5, filters=Filters(max_price=0.5)) == []  # nothing that cheap


def test_filters_for_unknown_customers_and_batches(rec):
    from ml.catalog import Filters, UnknownCategory

    prefix = _category_outside_the_top(rec, rec.customers(1)[0], 5)
    wanted = Filters(category=prefix, max_price=float(np.nanmax(rec.catalog.prices)))
    allowed = rec.allowed(wanted)
    cold = rec.recommend("nobody-at-all", top=3, filters=wanted)
    expected = [i for i in rec._popular if i in set(allowed)][:3]
    assert [x["product_id"] for x in cold] == [str(rec.tables.product_ids[i]) for i in expected]
    ids = rec.customers(3) + ["nobody-at-all"]
    assert [
        [(x["product_id"], x["because"]) for x in items]
        for items in rec.recommend_many(ids, 4, filters=wanted)
    ] == [[(x["product_id"], x["because"]) for x in rec.recommend(c, 4, filters=wanted)] for c in ids]
    with pytest.raises(UnknownCategory):
        rec.recommend(ids[0], top=3, filters=Filters(category="No Such > Category"))
    with pytest.raises(UnknownCategory):
        rec.recommend_many(ids, top=3, filters=Filters(category="No Such > Category"))


def test_filters_on_the_two_stage_path(models_dir, first_version):
    """Forced two-stage (the session's first model has a retriever), k = max(retrieval_k, top) = 4:
    a filter keeping at most k products scores them all ("exact"); one keeping m products with
    m^2 <= FILTER_SCAN_COST x k x P (here m <= 33) gets the k best allowed by the retriever's
    vectors, by a scan of theirs; a wider one asks the index. Every item passes the filter and
    `top` come back."""
    from ml.catalog import Filters
    from ml.recommender import ServingPath

    rec = Recommender.load(ModelRegistry(models_dir).path_for(first_version))
    two = rec.with_serving(ServingPath(retrieval_k=4, exact_max_products=5))
    assert two.two_stage
    cid = rec.customers(1)[0]
    u = _position(rec, cid)
    seen = set(rec.tables.product_ids[rec.seen(u)])
    counts = rec.catalog.prefixes()
    narrow = Filters(category=next(p for p, n in counts.items() if 3 <= n <= 4))
    mid = Filters(category=next(p for p, n in counts.items() if 6 <= n <= 30))
    wide = Filters(max_price=float(np.nanmax(rec.catalog.prices)))  # every product
    for wanted, path in ((narrow, "exact"), (mid, "two_stage"), (wide, "two_stage")):
        allowed = {str(p) for p in rec.tables.product_ids[rec.allowed(wanted)]}
        items = two.recommend(cid, top=3, filters=wanted)
        assert len(items) == min(3, len(allowed - seen)) and {x["path"] for x in items} == {path}
        assert {x["product_id"] for x in items} <= allowed - seen
        assert_same_served(two.recommend_many([cid], top=3, filters=wanted)[0], items)
    # the scan is the retriever's exact top-k among the allowed unseen products (no safety net at
    # k = 4: it takes k // 10 products)
    allowed, r = rec.allowed(mid), rec.retriever
    rest = np.setdiff1d(allowed, rec.seen(u))
    scores = r.product_vecs[rest] @ r.customer_vecs[u]
    assert list(r.candidates_in(u, 4, allowed, rec.seen(u))) == list(rest[np.lexsort((rest, -scores))][:4])


# ---------------------------------------------------------------- similar products (issue 15 item 2)


def test_similar_products_are_the_nearest_by_content(rec):
    from ml.recommender import UnknownProduct

    unit = _unit(rec.tables.prod_content.astype(np.float64))
    assert rec.similarity == {
        "method": "content_cosine",
        "modalities": ["image", "text"],
        "index": "exact_cosine",
    }
    for i in (0, 7, rec.n_products - 1):
        pid = str(rec.tables.product_ids[i])
        items = rec.similar(pid, top=5)
        ids = [x["product_id"] for x in items]
        assert len(ids) == 5 and pid not in ids
        sims = unit @ unit[i]
        sims[i] = -np.inf
        assert ids == [
            str(p) for p in rec.tables.product_ids[np.lexsort((np.arange(rec.n_products), -sims))[:5]]
        ]
        got = [x["similarity"] for x in items]
        assert got == sorted(got, reverse=True)
        np.testing.assert_allclose(got, np.sort(sims)[::-1][:5], atol=1e-4)
        assert {"product_id", "similarity", "title", "image"} == set(items[0])
    with pytest.raises(UnknownProduct):
        rec.similar("NO-SUCH-PRODUCT", top=3)
