import numpy as np
import pandas as pd
import pytest

from ml.baselines import (
    EASE,
    BiasBaseline,
    ContentKNN,
    GlobalMean,
    ItemKNN,
    MatrixFactorization,
    Popularity,
    Scorer,
    validation_split,
)
from ml.metrics import rmse


def synthetic(seed=0, n_users=300, n_items=200, rank=3, per_user=40, noise=0.3):
    """Low-rank ratings with user/item offsets; 20% of entries held out at random."""
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(n_users, rank))
    V = rng.normal(size=(n_items, rank))
    truth = 3.5 + rng.normal(0, 0.5, n_users)[:, None] + rng.normal(0, 0.5, n_items)[None, :] + 0.6 * U @ V.T
    u = np.repeat(np.arange(n_users), per_user)
    i = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    r = np.clip(truth[u, i] + rng.normal(0, noise, len(u)), 1, 5)
    df = pd.DataFrame({"u": u, "i": i, "rating": r})
    test = rng.random(len(df)) < 0.2
    return df[~test].reset_index(drop=True), df[test].reset_index(drop=True), n_users, n_items


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def fitted(data):
    train, _, nu, ni = data
    return {
        m.name: m.fit(train, nu, ni)
        for m in (GlobalMean(), BiasBaseline(), MatrixFactorization(), Popularity())
    }


def test_protocol(fitted):
    for m in fitted.values():
        assert isinstance(m, Scorer)
        assert isinstance(m.name, str)


def test_rmse_ordering_on_low_rank_data(data, fitted):
    _, test, _, _ = data
    u, i = test.u.to_numpy(), test.i.to_numpy()
    err = {n: rmse(test.rating, m.predict(u, i)) for n, m in fitted.items() if n != "popularity"}
    assert err["bias"] < 0.9 * err["global_mean"]
    assert err["mf"] < 0.8 * err["bias"]


def test_predict_and_score_shapes(data, fitted):
    _, test, nu, ni = data
    u, i = test.u.to_numpy()[:17], test.i.to_numpy()[:17]
    for name, m in fitted.items():
        s = m.score(u)
        assert s.shape == (17, ni)
        assert np.isfinite(s).all()
        p = m.predict(u, i)
        if name == "popularity":
            assert p is None
            continue
        assert p.shape == (17,)
        assert ((p >= 1) & (p <= 5)).all()
        # score is the (unclipped) predicted rating: same as predict where not clipped.
        raw = s[np.arange(17), i]
        assert np.allclose(np.clip(raw, 1, 5), p)


def test_popularity_scores_are_counts(data, fitted):
    train, _, _, ni = data
    counts = np.bincount(train.i, minlength=ni)
    s = fitted["popularity"].score(np.array([0, 5]))
    assert np.array_equal(s[0], counts) and np.array_equal(s[1], counts)
    order = np.argsort(-s[0], kind="stable")
    assert np.all(np.diff(counts[order]) <= 0)


def test_cold_users_and_items_fall_back():
    train = pd.DataFrame({"u": [0, 0, 1, 1, 2], "i": [0, 1, 0, 2, 1], "rating": [5.0, 4.0, 2.0, 1.0, 3.0]})
    nu, ni = 4, 4  # user 3 and item 3 have no ratings
    mu = train.rating.mean()
    for m in (BiasBaseline(), MatrixFactorization(factors=4, reg=0.5, iters=5)):
        m.fit(train, nu, ni)
        b_i = m.predict(np.array([3, 3, 3]), np.array([0, 1, 2])) - mu  # cold user: mu + b_i
        assert np.allclose(m.predict(np.array([99, -1, 3]), np.array([0, 0, 0])), mu + b_i[0])
        assert np.allclose(m.predict(np.array([3]), np.array([3])), mu)  # cold user and cold item
        assert np.allclose(m.predict(np.array([42]), np.array([1000])), mu)
        cold_item = m.predict(np.array([0, 1]), np.array([3, 77]))
        assert np.allclose(cold_item - mu, [m.b_u_[0], m.b_u_[1]])
        assert m.score(np.array([3, 50])).shape == (2, ni)
    g = GlobalMean().fit(train, nu, ni)
    assert np.allclose(g.predict(np.array([0, 99]), np.array([3, 0])), mu)


def test_bias_shrinks_sparse_users():
    # A single 5-star rating is only partly trusted.
    train = pd.DataFrame({"u": [0, 1, 1, 2], "i": [0, 0, 1, 1], "rating": [5.0, 3.0, 3.0, 3.0]})
    mu = train.rating.mean()
    b = BiasBaseline().fit(train, 3, 2)
    b0 = BiasBaseline(reg_u=1e-9, reg_i=1e-9, iters=200).fit(train, 3, 2)
    one = (np.array([0]), np.array([0]))
    assert b0.predict(*one)[0] == pytest.approx(5.0, abs=1e-3)  # unregularised: fits exactly
    assert mu < b.predict(*one)[0] < 5.0 - 0.2  # regularised: shrunk towards mu


def test_mf_deterministic_and_fit_returns_self(data):
    train, test, nu, ni = data
    a = MatrixFactorization(factors=8, iters=3, seed=1)
    assert a.fit(train, nu, ni) is a
    b = MatrixFactorization(factors=8, iters=3, seed=1).fit(train, nu, ni)
    u, i = test.u.to_numpy(), test.i.to_numpy()
    assert np.array_equal(a.predict(u, i), b.predict(u, i))


def test_bad_input_rejected():
    bad = pd.DataFrame({"u": [0, 5], "i": [0, 1], "rating": [4.0, 3.0]})
    for m in (GlobalMean(), BiasBaseline(), MatrixFactorization(), Popularity()):
        with pytest.raises(ValueError):
            m.fit(bad, 2, 2)
        with pytest.raises(ValueError):
            m.fit(bad.drop(columns="rating"), 10, 10)


def test_bias_leave_one_out_matches_a_refit_without_the_rating(data):
    train, _, nu, ni = data
    full = BiasBaseline(iters=60).fit(train, nu, ni)
    rows = np.random.default_rng(0).choice(len(train), 8, replace=False)
    u, i, r = (train[c].to_numpy()[rows] for c in ("u", "i", "rating"))
    loo_u, loo_i = full.leave_one_out(u, i, r)
    for k, row in enumerate(rows):
        refit = BiasBaseline(iters=60).fit(train.drop(index=row), nu, ni)
        in_sample = full.b_u_[u[k]] + full.b_i_[i[k]]
        truth = refit.b_u_[u[k]] + refit.b_i_[i[k]]
        # the one-step correction removes nearly all of the rating's own pull on its biases
        assert abs(loo_u[k] + loo_i[k] - truth) < 0.1 * abs(in_sample - truth) + 1e-4


def test_bias_leave_one_out_takes_fitted_ratings_only():
    train = pd.DataFrame({"u": [0, 1], "i": [0, 0], "rating": [5.0, 3.0]})
    b = BiasBaseline().fit(train, 3, 2)
    with pytest.raises(ValueError):
        b.leave_one_out(np.array([2]), np.array([0]), np.array([4.0]))


# ---------------------------------------------------------------- EASE, item-kNN, content-kNN


def _implicit(seed=0, n_users=40, n_items=12, per_user=4):
    """A tiny implicit-feedback frame (item 11 never rated) with ratings 1-5 and recency t."""
    rng = np.random.default_rng(seed)
    u = np.repeat(np.arange(n_users), per_user)
    i = np.concatenate([rng.choice(n_items - 1, per_user, replace=False) for _ in range(n_users)])
    r = rng.integers(1, 6, len(u)).astype(float)
    return pd.DataFrame({"u": u, "i": i, "rating": r, "t": rng.permutation(len(u))}), n_users, n_items


def _dense(frame, n_users, n_items):
    x = np.zeros((n_users, n_items))
    x[frame.u, frame.i] = 1.0
    return x


def test_ease_equals_per_item_ridge_regressions_with_zero_diagonal():
    """EASE's closed form is, column by column, ridge regression of item j on all other items."""
    frame, nu, ni = _implicit()
    lam = 3.0
    m = EASE(lambdas=(lam,)).fit(frame, nu, ni)
    x = _dense(frame, nu, ni)
    b = np.zeros((ni, ni))
    for j in range(ni):
        others = [k for k in range(ni) if k != j]
        xo = x[:, others]
        b[others, j] = np.linalg.solve(xo.T @ xo + lam * np.eye(ni - 1), xo.T @ x[:, j])
    users = np.array([0, 5, 39])
    np.testing.assert_allclose(m.score(users), x[users] @ b, atol=1e-5)
    assert np.all(m.score(users)[:, 11] == 0)  # never-rated item
    assert np.all(m.score(np.array([-1, 40])) == 0)  # unknown customers
    assert m.predict(users, users) is None


def test_item_knn_equals_brute_force_shrunk_cosine():
    frame, nu, ni = _implicit(seed=1)
    shrink = 2.0
    m = ItemKNN(shrinks=(shrink,)).fit(frame, nu, ni)
    x = _dense(frame, nu, ni)
    sim = np.zeros((ni, ni))
    for a in range(ni):
        for b in range(ni):
            if a != b and x[:, a].sum() and x[:, b].sum():
                sim[a, b] = (x[:, a] * x[:, b]).sum() / (np.sqrt(x[:, a].sum() * x[:, b].sum()) + shrink)
    users = np.arange(nu)
    np.testing.assert_allclose(m.score(users), x @ sim, atol=1e-12)
    assert np.all(m.score(np.array([-3, 99])) == 0)


def test_content_knn_cosine_to_well_rated_products():
    content = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])  # product 3 has no content
    train = pd.DataFrame({"u": [0, 0, 1, 1], "i": [0, 1, 1, 2], "rating": [5.0, 2.0, 1.0, 3.0]})
    m = ContentKNN(content).fit(train, 3, 4)
    s = m.score(np.array([0, 1, 2]))
    # customer 0: only product 0 is well rated (>= 4), so the profile is (1, 0)
    np.testing.assert_allclose(s[0], [1.0, 0.0, np.sqrt(0.5), -2.0])
    # customer 1 rated nothing well: the mean of all their products, (0.5, 1)
    prof = np.array([0.5, 1.0]) / np.linalg.norm([0.5, 1.0])
    np.testing.assert_allclose(s[1, :3], _unit_rows(content[:3]) @ prof)
    assert np.all(s[2, :3] == 0)  # no ratings, no profile
    with pytest.raises(ValueError):
        ContentKNN(np.zeros((4, 0))).fit(train, 3, 4)


def _unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_validation_split_holds_out_each_customers_latest_rating_by_t():
    frame = pd.DataFrame(
        {"u": [0, 0, 0, 1, 2, 2], "i": [0, 1, 2, 0, 3, 4], "rating": [5.0] * 6, "t": [5, 9, 1, 0, 3, 2]}
    )
    fit, val = validation_split(frame)
    assert sorted(zip(val.u, val.i)) == [(0, 1), (2, 3)]  # customer 1 has one rating: kept for fitting
    assert len(fit) + len(val) == len(frame)
    _, by_row_order = validation_split(frame.drop(columns="t"))
    assert sorted(zip(by_row_order.u, by_row_order.i)) == [(0, 2), (2, 4)]


def test_hyper_parameters_are_chosen_on_the_validation_split_only():
    """The chosen λ / shrinkage is the grid value with the best validation NDCG, and a different test
    set (rows never passed to fit) cannot change it."""
    frame, nu, ni = _implicit(seed=2, n_users=60)
    for model in (EASE(lambdas=(0.5, 5.0, 500.0)), ItemKNN(shrinks=(0.0, 3.0, 300.0))):
        model.fit(frame, nu, ni)
        chosen = model.lambda_ if isinstance(model, EASE) else model.shrink_
        assert set(model.validation_) == set(model.lambdas if isinstance(model, EASE) else model.shrinks)
        assert model.validation_[chosen] == max(model.validation_.values())
        assert len(set(np.round(list(model.validation_.values()), 12))) > 1  # the grid matters here


def test_ranking_only_baselines_follow_the_protocol_and_reject_bad_input():
    bad = pd.DataFrame({"u": [0, 5], "i": [0, 1], "rating": [4.0, 3.0]})
    for m in (EASE(), ItemKNN(), ContentKNN(np.ones((2, 3)))):
        assert isinstance(m, Scorer)
        with pytest.raises(ValueError):
            m.fit(bad, 2, 2)
