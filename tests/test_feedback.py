"""ml/feedback.py: a rating folded into loaded tables counts exactly as training would have counted it
(customer side), a new customer becomes known, the product is seen, a customer rebuilt from feedback
is ranked like the trained customer they copy, and the feedback file joins the next training's data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ml.features import build_tables
from ml.feedback import FeedbackFile, Rating, check_rating, fold_in, merge_into
from ml.recommender import Recommender
from ml.registry import ModelRegistry

CUSTOMER_SIDE = (
    "cust_count",
    "cust_content_sum",
    "cust_content_wsum",
    "cust_history",
    "cust_liked_sum",
    "cust_liked_count",
)


LIKED = ("cust_liked_sum", "cust_liked_count")


def _tables(u, i, r, n_c=3, n_p=5, seed=0):
    rng = np.random.default_rng(seed)
    content = rng.normal(size=(n_p, 4)).astype(np.float32)
    return build_tables(
        np.array([f"c{k}" for k in range(n_c)]),
        np.array([f"p{k}" for k in range(n_p)]),
        np.array(u),
        np.array(i),
        np.array(r, np.float32),
        np.zeros((len(u), 0), np.float32),
        np.zeros(len(u), bool),
        content,
        mu=3.0,
        history_len=3,
    )


def test_a_folded_rating_counts_as_training_would_have():
    u, i, r = [0, 0, 1, 2], [0, 1, 1, 3], [5.0, 2.0, 4.0, 1.0]
    folded = _tables(u, i, r)
    assert fold_in(folded, 0, 4, 3.0) is True  # a new pair
    built = _tables(u + [0], i + [4], r + [3.0])  # recency = row order: the new rating is the latest
    for name in CUSTOMER_SIDE:
        np.testing.assert_allclose(getattr(folded, name), getattr(built, name), rtol=1e-6, err_msg=name)
    for name in ("rated_indptr", "rated_indices", "rated_rating"):
        np.testing.assert_array_equal(getattr(folded, name), getattr(built, name), err_msg=name)


def test_a_second_rating_of_the_same_product_replaces_the_first():
    t = _tables([0, 0], [0, 1], [5.0, 2.0])
    assert fold_in(t, 0, 1, 4.0) is False
    built = _tables([0, 0], [0, 1], [5.0, 4.0])
    for name in ("cust_count", "cust_content_sum", "cust_content_wsum", "rated_rating", *LIKED):
        np.testing.assert_allclose(getattr(t, name), getattr(built, name), rtol=1e-6, err_msg=name)


@pytest.mark.parametrize(("old", "new"), [(5.0, 2.0), (4.0, 5.0), (1.0, 3.0)])
def test_a_replaced_rating_moves_the_product_in_or_out_of_the_liked_sums(old, new):
    t = _tables([0, 0], [0, 1], [5.0, old])
    fold_in(t, 0, 1, new)
    built = _tables([0, 0], [0, 1], [5.0, new])
    for name in LIKED:
        np.testing.assert_allclose(getattr(t, name), getattr(built, name), rtol=1e-6, err_msg=name)


def test_the_customer_bias_is_the_ridge_fixed_point_for_the_new_ratings():
    t = _tables([0], [0], [5.0])
    t.prod_prior[:] = [0.5, -0.25, 0, 0, 0]
    fold_in(t, 0, 1, 2.0)
    # b_u = sum(r - mu - b_i) / (reg_u + n), reg_u = 3 (ml.baselines.BiasBaseline)
    assert t.cust_prior[0] == pytest.approx(((5 - 3 - 0.5) + (2 - 3 + 0.25)) / (3 + 2))


@pytest.mark.parametrize("bad", [0, 5.5, "5", True, float("nan"), None])
def test_ratings_outside_1_to_5_are_refused(bad):
    with pytest.raises(ValueError, match="rating"):
        check_rating(bad)


@pytest.fixture
def fresh(models_dir) -> Recommender:
    """A model of its own (feedback mutates it)."""
    return Recommender.load(ModelRegistry(models_dir).current_path())


def test_an_unknown_customer_becomes_known_and_the_product_is_seen(fresh):
    rec = fresh
    pid = str(rec.tables.product_ids[7])
    assert not rec.has_customer("fb-new") and rec.recommend("fb-new", top=5)[0]["strategy"] == "popularity"
    n = rec.tables.n_customers
    assert rec.add_ratings([Rating("fb-new", pid, 5.0), Rating("fb-new", "no-such-product", 5.0)]) == 1
    assert rec.has_customer("fb-new") and rec.tables.n_customers == n + 1
    items = rec.recommend("fb-new", top=rec.n_products)
    assert {x["strategy"] for x in items} == {"hybrid"} and pid not in {x["product_id"] for x in items}
    assert len(items) == rec.n_products - 1
    assert list(rec.seen(n)) == [7]


def test_rated_lists_training_ratings_then_feedback_first(fresh, world_dir):
    """`rated` (the page's "their ratings"): every product the customer rated in the data, with the
    rating the data gives, and a product rated by feedback comes first at once."""
    rec = fresh
    cid = rec.customers(1)[0]
    reviews = pd.read_json(world_dir / "Amazon_Fashion.jsonl", lines=True)
    mine = reviews[reviews["user_id"] == cid].groupby("parent_asin")["rating"].last()
    listed = rec.rated(cid, limit=1000)
    assert {x["product_id"]: x["rating"] for x in listed} == {str(k): float(v) for k, v in mine.items()}
    assert set(listed[0]) == {"product_id", "rating", "title", "image"}
    new = next(str(p) for p in rec.tables.product_ids if str(p) not in mine.index)
    rec.add_ratings([Rating(cid, new, 2.0)])
    assert rec.rated(cid, limit=1)[0] == {**rec.rated(cid, limit=1)[0], "product_id": new, "rating": 2.0}
    assert rec.rated("nobody-at-all") == [] and len(rec.rated(cid, limit=3)) == 3


def test_a_new_customer_replaying_a_trained_customers_ratings_gets_their_ranking(fresh):
    """Feedback counts as training would have: a new customer who rates what a trained customer rated
    (oldest first) ends with that customer's feature rows, bias and (nearly) ranking, instead of the
    cold-start popularity list they had before (what ignoring the feedback would leave)."""
    rec = fresh
    t = rec.tables
    for cid in rec.customers(3):
        u = int(pd.Index(t.customer_ids).get_loc(cid))
        a, b = t.rated_indptr[u], t.rated_indptr[u + 1]
        rating = dict(zip(t.rated_indices[a:b].tolist(), t.rated_rating[a:b].tolist()))
        latest = [h - 1 for h in t.cust_history[u] if h > 0]
        order = [i for i in rating if i not in latest] + latest  # the history's order last
        twin = f"twin-{cid}"
        cold = [x["product_id"] for x in rec.recommend(twin, top=10)]
        assert rec.add_ratings([Rating(twin, str(t.product_ids[i]), rating[i]) for i in order]) == len(order)
        x = int(pd.Index(rec.tables.customer_ids).get_loc(twin))
        for name in (*CUSTOMER_SIDE, "cust_prior"):
            np.testing.assert_allclose(
                getattr(rec.tables, name)[x], getattr(rec.tables, name)[u], rtol=1e-5, atol=1e-5, err_msg=name
            )
        mine, theirs = rec.score_customers(np.array([x, u]))
        assert np.corrcoef(mine, theirs)[0, 1] > 0.99
        own = [item["product_id"] for item in rec.recommend(twin, top=10)]
        assert len(set(own) & {item["product_id"] for item in rec.recommend(cid, top=10)}) >= 8
        assert own != cold


def test_the_feedback_file_joins_the_next_training_data(tmp_path):
    f = FeedbackFile(tmp_path / "fb" / "feedback.jsonl")
    f.append(
        [
            Rating("c9", "p1", 4.0, "nice", 1000, "1-0"),
            Rating("c0", "p0", 1.0, "", 2000, "2-0"),
            Rating("c9", "gone", 5.0, "", 3000, "3-0"),
        ]
    )
    with open(f.path, "a", encoding="utf-8") as fh:
        fh.write('{"user_id": "torn')  # a crash mid-line: skipped, not fatal
    records = f.read()
    assert [r["feedback_id"] for r in records] == ["1-0", "2-0", "3-0"]
    assert json.loads(f.path.read_text().splitlines()[0])["parent_asin"] == "p1"
    reviews = pd.DataFrame(
        {
            "customer_id": ["c0", "c1"],
            "product_id": ["p0", "p1"],
            "rating": [5.0, 3.0],
            "title": "",
            "text": "",
            "timestamp": [1.0, 2.0],
            "order": [0, 1],
        }
    )
    merged, report = merge_into(reviews, pd.Index(["p0", "p1"]), records)
    assert report == {"records": 3, "used": 2, "last_id": "2-0"}
    rows = {(c, p): r for c, p, r in merged[["customer_id", "product_id", "rating"]].itertuples(index=False)}
    assert rows == {("c0", "p0"): 1.0, ("c1", "p1"): 3.0, ("c9", "p1"): 4.0}  # c0's latest word wins
    assert list(merged["order"]) == list(range(len(merged)))
