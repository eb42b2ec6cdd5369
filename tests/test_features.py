"""Leave-one-out features equal features built from the data without that rating."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from ml.features import (
    LIKED_RATING,
    Exclusion,
    FeatureLayout,
    FeatureTables,
    build_tables,
    customer_features,
    model_inputs,
    pair_features,
    product_id_input,
    product_prior,
)


def _world(seed: int = 0, n_c: int = 12, n_p: int = 9, dt: int = 5, dc: int = 4):
    rng = np.random.default_rng(seed)
    pairs = {(int(u), int(i)) for u, i in zip(rng.integers(0, n_c, 80), rng.integers(0, n_p - 1, 80))}
    pairs = sorted(pairs)
    u = np.array([p[0] for p in pairs])
    i = np.array([p[1] for p in pairs])
    rating = rng.integers(1, 6, len(u)).astype(np.float32)
    vecs = rng.normal(size=(len(u), dt)).astype(np.float32)
    has_text = rng.random(len(u)) < 0.8
    content = rng.normal(size=(n_p, dc)).astype(np.float32)
    return dict(
        customer_ids=np.array([f"C{k}" for k in range(n_c)]),
        product_ids=np.array([f"P{k}" for k in range(n_p)]),
        u=u,
        i=i,
        rating=rating,
        review_vecs=vecs,
        review_has_text=has_text,
        prod_content=content,
    )


def _tables(w, keep=None, mu=3.0, priors=(None, None), ids=None):
    keep = np.ones(len(w["u"]), bool) if keep is None else keep
    return build_tables(
        w["customer_ids"],
        w["product_ids"],
        w["u"][keep],
        w["i"][keep],
        w["rating"][keep],
        w["review_vecs"][keep],
        w["review_has_text"][keep],
        w["prod_content"],
        mu=mu,
        cust_prior=priors[0],
        prod_prior=priors[1],
        ids=ids,
    )


@pytest.mark.parametrize("row", [0, 7, 23, 41])
def test_leave_one_out_matches_tables_without_the_rating(row):
    w = _world()
    rng = np.random.default_rng(row)
    # the same bias priors on both sides, so the neighbourhood residuals (pair features) compare too
    priors = (rng.normal(0, 0.5, len(w["customer_ids"])), rng.normal(0, 0.5, len(w["product_ids"])))
    full = _tables(w, priors=priors)
    without = _tables(w, np.arange(len(w["u"])) != row, priors=priors)
    u, i = w["u"][[row]], w["i"][[row]]
    ex = Exclusion(
        np.ones(1, np.float32),
        w["rating"][[row]],
        w["review_vecs"][[row]],
        w["review_has_text"][[row]].astype(np.float32),
    )
    loo = model_inputs(full, u, i, cust_ex=ex, prod_ex=ex, cust_ex_item=i, is_rated=np.ones(1, np.float32))
    ref = model_inputs(without, u, i)
    assert (
        np.abs(ref["pair"][0, 1:]).sum() > 0 or ref["pair"][0, 0] == 0
    )  # a non-trivial residual when linked
    for key in ("customer", "product", "pair"):
        np.testing.assert_allclose(loo[key], ref[key], rtol=1e-5, atol=1e-5, err_msg=key)
    # the left-out product is no longer in the customer's history
    assert (i[0] + 1) not in set(loo["history"][0].tolist())
    assert sorted(x for x in loo["history"][0] if x) == sorted(x for x in ref["history"][0] if x)


def test_unknown_ids_get_zero_features_and_unknown_product_id():
    w = _world()
    t = _tables(w)
    x = model_inputs(t, np.array([-1, 0]), np.array([-1, 0]))
    assert not x["customer"][0].any() and not x["product"][0].any()
    assert x["product_id"][0] == 0 and x["history"][0].sum() == 0
    # the product nobody rated (last one) is "unknown" to the id embedding, but keeps its content
    never_rated = len(w["product_ids"]) - 1
    y = model_inputs(t, np.array([0]), np.array([never_rated]))
    assert y["product_id"][0] == 0
    assert np.abs(y["product"][0, : w["prod_content"].shape[1]]).sum() > 0


def test_missing_modality_is_a_zero_width_block():
    w = _world()
    w["review_vecs"] = np.zeros((len(w["u"]), 0), np.float32)
    w["review_has_text"] = np.zeros(len(w["u"]), bool)
    w["prod_content"] = np.zeros((len(w["product_ids"]), 0), np.float32)
    t = _tables(w)
    x = model_inputs(t, w["u"][:3], w["i"][:3])
    assert x["customer"].shape == (3, t.layout.customer.width) and x["product"].shape == (
        3,
        t.layout.product.width,
    )
    assert np.isfinite(x["customer"]).all() and np.isfinite(x["product"]).all()


def test_training_rows_see_biases_without_their_own_rating():
    from ml.baselines import BiasBaseline
    from ml.train import TrainConfig, build_training_rows

    w = _world()
    n_c, n_p = len(w["customer_ids"]), len(w["product_ids"])
    frame = pd.DataFrame({"u": w["u"], "i": w["i"], "rating": w["rating"]})
    prior = BiasBaseline().fit(frame, n_c, n_p)
    t = _tables(w, mu=prior.mu_, priors=(prior.b_u_, prior.b_i_))
    loo_u, loo_i = prior.leave_one_out(w["u"], w["i"], w["rating"])
    rows = build_training_rows(
        t,
        w["u"],
        w["i"],
        w["rating"],
        w["review_vecs"],
        w["review_has_text"],
        TrainConfig(negatives=2),
        np.zeros(len(w["u"]), bool),
        loo_prior=(loo_u, loo_i),
    )
    b_u, b_i = rows.customer["customer_prior"], rows.pairs["product_prior"][rows.start[:-1]]  # rated rows
    np.testing.assert_allclose(np.sort(b_u), np.sort(loo_u), rtol=1e-5)
    np.testing.assert_allclose(np.sort(b_i), np.sort(loo_i), rtol=1e-5)
    # and they differ from the in-sample biases, which contain the rating to predict
    assert not np.allclose(np.sort(b_u), np.sort(prior.b_u_[w["u"]]))


def test_training_rows_built_in_chunks_equal_one_build(monkeypatch):
    """build_training_rows builds features ROWS_CHUNK rows at a time: the rows are the same."""
    import ml.train
    from ml.train import TrainConfig, build_training_rows

    w = _world(seed=4)
    t = _tables(w)
    args = (t, w["u"], w["i"], w["rating"], w["review_vecs"], w["review_has_text"], TrainConfig(negatives=3))
    val = np.random.default_rng(1).random(len(w["u"])) < 0.3
    whole = build_training_rows(*args, val)
    monkeypatch.setattr(ml.train, "ROWS_CHUNK", 7)
    chunked = build_training_rows(*args, val)
    assert len(whole.is_val) > 7 * 7 and whole.n_rows > 7 * 20  # many chunks of groups and of rows
    for name in ("is_val", "start", "rating"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name), err_msg=name)
    for side in ("customer", "pairs"):
        a, b = getattr(chunked, side), getattr(whole, side)
        assert set(a) == set(b)
        for name in b:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_training_groups_spelled_out_are_each_rating_and_its_negatives():
    """Each group, its customer side repeated over its rows, is: first the rated row with its own review
    left out of both sides (what `model_inputs` gives with that exclusion), then products the customer
    never rated, with the same customer side; every rating once, validation groups last."""
    from ml.features import CUSTOMER_INPUTS, Exclusion
    from ml.train import TrainConfig, build_training_rows

    w = _world(seed=5)
    t = _tables(w)
    u, i, r = w["u"], w["i"], w["rating"]
    val = np.random.default_rng(2).random(len(u)) < 0.3
    rows = build_training_rows(
        t, u, i, r, w["review_vecs"], w["review_has_text"], TrainConfig(negatives=3), val
    )
    sizes = np.diff(rows.start)
    assert (sizes >= 1).all() and (sizes <= 4).all() and sizes.sum() > 3 * len(u)  # few negatives clash
    assert not rows.is_val[: rows.n_train].any() and rows.is_val.sum() == val.sum()
    owner = np.repeat(np.arange(len(sizes)), sizes)
    spelled = {**rows.pairs, **{k: rows.customer[k][owner] for k in CUSTOMER_INPUTS}}
    first = rows.start[:-1]
    ex = Exclusion(
        np.ones(len(u), np.float32), r.astype(np.float32), w["review_vecs"],
        w["review_has_text"].astype(np.float32),
    )  # fmt: skip
    own = model_inputs(t, u, i, cust_ex=ex, prod_ex=ex, cust_ex_item=i, is_rated=np.ones(len(u), np.float32))
    # which rating each group is: the one whose inputs its rated row has
    key = lambda d, at: np.concatenate([d["customer"][at], d["product"][at], d["pair"][at]], 1)  # noqa: E731
    rated = rows.rated_rows()
    dist = ((key(rated, slice(None))[:, None, :] - key(own, slice(None))[None]) ** 2).sum(-1)
    src = dist.argmin(1)
    assert sorted(src.tolist()) == list(range(len(u)))  # every rating once
    np.testing.assert_array_equal(rows.rating, r[src].astype(np.float32))
    np.testing.assert_array_equal(rows.is_val, val[src])
    for name, v in own.items():
        np.testing.assert_allclose(rated[name], v[src], rtol=1e-5, atol=1e-6, err_msg=name)
    # a negative: its group's customer side (above), the product (told by its content) as served,
    # the pair's signals as for a product the customer never rated, with the group's prior
    negative = np.ones(len(owner), bool)
    negative[first] = False
    span = t.layout.product.span("content")
    j = ((spelled["product"][negative][:, None, span] - t.prod_content[None]) ** 2).sum(-1).argmin(1)
    ug = u[src][owner[negative]]
    np.testing.assert_array_equal(spelled["product_id"][negative], product_id_input(t, j))
    np.testing.assert_allclose(spelled["product_prior"][negative], product_prior(t, j), rtol=1e-6)
    b_u = spelled["customer_prior"][negative]
    want = pair_features(t, ug, j, np.zeros(len(j), np.float32), b_u)
    np.testing.assert_allclose(spelled["pair"][negative], want, rtol=1e-5, atol=1e-6)
    ids = {int(p): k for k, p in enumerate(t.prod_id) if p > 0}  # id row -> position (rated products)
    rated = set(zip(u.tolist(), i.tolist()))
    neg_u = u[src][owner[negative]]
    neg_i = np.array([ids.get(int(p), -1) for p in rows.pairs["product_id"][negative]])
    assert not any((a, b) in rated for a, b in zip(neg_u.tolist(), neg_i.tolist()) if b >= 0)


def test_only_rated_products_get_an_id_row_and_history_reads_them():
    """The network's id embeddings have a row per rated product (and "unknown"), not per product."""
    from ml.features import customer_history, product_id_input

    w = _world()
    t = _tables(w)
    rated = np.bincount(w["i"], minlength=len(w["product_ids"])) > 0
    assert not rated[-1] and rated[:-1].all()  # the world never rates its last product
    np.testing.assert_array_equal(t.prod_id, np.where(rated, np.cumsum(rated), 0))
    assert t.n_ids == rated.sum() + 1
    np.testing.assert_array_equal(
        product_id_input(t, np.array([0, len(rated) - 1, -1])), [t.prod_id[0], 0, 0]
    )
    u = np.arange(len(w["customer_ids"]))
    hist = customer_history(t, u)
    positions = t.cust_history[u]
    np.testing.assert_array_equal(hist, np.where(positions > 0, t.prod_id[np.maximum(positions - 1, 0)], 0))
    # tables of fewer ratings keep the ids of the network they are scored with
    keep = w["i"] != w["i"][0]  # product i0 loses every rating
    fewer = _tables(w, keep, mu=None, ids=t.prod_id)
    expect = t.prod_id.copy()
    expect[w["i"][0]] = 0
    np.testing.assert_array_equal(fewer.prod_id, expect)


# ---------------------------------------------------------------- the named feature layout (issue 11)


def test_the_layout_names_every_column_of_both_rows():
    w = _world()
    t = _tables(w)
    layout = t.layout
    u, i = w["u"][:4], w["i"][:4]
    x = model_inputs(t, u, i)
    assert x["customer"].shape[1] == layout.customer.width and x["product"].shape[1] == layout.product.width
    prod = x["product"]
    np.testing.assert_allclose(prod[:, layout.product.span("content")], t.prod_content[i])
    np.testing.assert_allclose(prod[:, layout.product.span("log_count")][:, 0], np.log1p(t.prod_count[i]))
    cust = x["customer"]
    np.testing.assert_allclose(cust[:, layout.customer.span("log_count")][:, 0], np.log1p(t.cust_count[u]))
    keep = layout.product.mask_without("review_text")
    assert (
        keep[layout.product.span("review_text")].sum() == 0
        and keep.sum() == layout.product.width - (t.prod_review_sum.shape[1])
    )
    assert FeatureLayout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout


def test_the_liked_block_is_the_mean_content_of_liked_products_or_of_all_when_none():
    w = _world()
    w["rating"][w["u"] == 0] = 2.0  # customer 0 liked nothing: the mean of all theirs
    t, layout = _tables(w), _tables(w).layout
    us = np.arange(len(w["customer_ids"]))
    liked = layout.customer.span("content_liked")
    got = customer_features(t, us)[:, liked]
    for u in us:
        mine = w["u"] == u
        good = mine & (w["rating"] >= LIKED_RATING)
        want = w["prod_content"][w["i"][good if good.any() else mine]].mean(axis=0)
        np.testing.assert_allclose(got[u], want, rtol=1e-5, atol=1e-6, err_msg=str(u))


def test_tables_from_before_the_liked_sums_keep_their_layout(tmp_path):
    """Artifacts written before the liked block: their tables load without it, and their feature
    rows (and so their models' inputs) keep the layout they were trained on."""
    w = _world()
    t = _tables(w)
    t.cust_liked_sum = t.cust_liked_count = None
    t.save(tmp_path / "tables.npz")
    old = FeatureTables.load(tmp_path / "tables.npz")
    assert old.cust_liked_sum is None
    names = [b.name for b in old.layout.customer.blocks]
    assert "content_liked" not in names and "content_wmean" in names
    x = model_inputs(old, w["u"][:3], w["i"][:3])
    assert x["customer"].shape[1] == old.layout.customer.width == _tables(w).layout.customer.width - 4  # dc


def test_a_block_that_does_not_fit_the_layout_fails_loudly():
    row = FeatureLayout.of(content=3, customer_text=2, product_text=2).product
    ok = {"content": np.zeros((2, 3)), "review_text": np.zeros((2, 2)), "log_count": np.zeros((2, 1))}
    ok["has_text"] = np.ones((2, 1))
    assert row.assemble(**ok).shape == (2, 7)
    with pytest.raises(ValueError, match="do not match"):
        row.assemble(**{k: v for k, v in ok.items() if k != "has_text"})
    with pytest.raises(ValueError, match="do not match"):
        row.assemble(**ok, extra=np.zeros((2, 1)))
    with pytest.raises(ValueError, match="'content'"):
        row.assemble(**{**ok, "content": np.zeros((2, 4))})
    with pytest.raises(KeyError, match="no feature block"):
        row.span("price")


@pytest.mark.parametrize("shrink", [0.0, 10.0])
def test_held_out_knn_is_knn_from_every_rating_but_the_customers_held_out_one(shrink):
    """The ranking choice's kNN scores (ml.ranking): for a customer whose latest rating is held
    out, the item-kNN of tables holding every other rating (other customers' held-out ones too)."""
    from ml.features import held_out_knn_grid, knn_grid

    w = _world(seed=5, n_c=10, n_p=8)
    # customer 0 rates its last product twice (duplicates count once in the co-ratings)
    dup = int(np.flatnonzero(w["u"] == 0)[-1])
    w = {
        k: (
            np.insert(v, dup, v[dup], axis=0)
            if k not in ("customer_ids", "product_ids", "prod_content")
            else v
        )
        for k, v in w.items()
    }
    last = np.r_[w["u"][1:] != w["u"][:-1], True] & (np.bincount(w["u"])[w["u"]] >= 2)
    full, fit = _tables(w), _tables(w, keep=~last)
    users, held = w["u"][last], w["i"][last]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 on the way (a held product with a single rater)
        got = held_out_knn_grid(full, fit, users, held, shrink)
    for k, row in enumerate(np.flatnonzero(last)):
        keep = np.ones(len(w["u"]), bool)
        keep[row] = False
        want = knn_grid(_tables(w, keep=keep), users[k : k + 1], shrink)[0]
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-7)
    assert (got[np.arange(len(users)), held] > 0).any(), "some held-out product is a neighbour"
    # the fit tables alone lose the other customers' held-out co-ratings: a different score
    assert not np.allclose(got, knn_grid(fit, users, shrink))


def test_group_rows_put_each_rating_first_then_its_negatives_even_none():
    from ml.train import _group_rows

    # 3 ratings; negatives (positions 3, 4, 5) from ratings 0, 0 and 2; rating 1 has none
    rows, start = _group_rows(np.array([2, 1, 0]), 3, np.array([0, 0, 2]))
    assert rows.tolist() == [2, 5, 1, 0, 3, 4] and start.tolist() == [0, 2, 3, 6]
    rows, start = _group_rows(np.array([1, 0]), 2, np.array([], np.int64))  # no negatives at all
    assert rows.tolist() == [1, 0] and start.tolist() == [0, 1, 2]
