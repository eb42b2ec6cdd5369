import numpy as np
import pandas as pd
import pytest

from ml.baselines import BiasBaseline, GlobalMean, MatrixFactorization, Popularity, Scorer
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
    return {m.name: m.fit(train, nu, ni) for m in (GlobalMean(), BiasBaseline(), MatrixFactorization(), Popularity())}


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
