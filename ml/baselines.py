"""Non-neural recommender baselines (numpy only, vectorised).

Every model implements :class:`Scorer`: ``fit`` on a ratings frame with integer ``u``/``i`` and
float ``rating`` columns, ``predict`` ratings for (u, i) pairs, ``score`` all items for customers.

- :class:`GlobalMean` — the mean training rating.
- :class:`BiasBaseline` — mu + b_u + b_i, ridge-regularised, fitted by alternating least squares.
- :class:`MatrixFactorization` — *biased* matrix factorisation mu + b_u + b_i + p_u·q_i on explicit
  ratings, fitted by alternating least squares (each step is an exact ridge solve for all users,
  then all items, done as batched ``np.linalg.solve``), initialised from the bias baseline.
- :class:`Popularity` — number of training ratings per item; ranks only, predicts no ratings.
- :class:`EASE` — Steck's closed-form item-item linear model on the 0/1 "rated" matrix (WWW 2019);
  its ridge λ is chosen on a validation split carved from the training ratings. Ranks only.
- :class:`ItemKNN` — item-item cosine similarity of the 0/1 matrix, shrunk towards 0 when few
  customers back it; its shrinkage is chosen on the same kind of validation split. Ranks only.
- :class:`ContentKNN` — cosine between a product's content vector (image/text embedding) and the
  mean content of the customer's well-rated training products. Needs no ratings of the product,
  so it ranks never-rated products too. Ranks only.

Predictions are clipped to [1, 5]. Unknown customers/items (index outside the fitted range, or no
training ratings) fall back to mu plus whichever bias is known. ``score`` returns the *unclipped*
predicted rating, so the order matches the predictions without artificial ties at 5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
from scipy import sparse

from ml.features import LIKED_RATING
from ml.metrics import csr_from_pairs, ranking_metrics

__all__ = [
    "Scorer",
    "GlobalMean",
    "BiasBaseline",
    "MatrixFactorization",
    "Popularity",
    "EASE",
    "ItemKNN",
    "ContentKNN",
    "validation_split",
    "RATING_MIN",
    "RATING_MAX",
]

RATING_MIN, RATING_MAX = 1.0, 5.0


@runtime_checkable
class Scorer(Protocol):
    """Common protocol of all baselines (and of anything evaluated next to them)."""

    name: str

    def fit(self, train: pd.DataFrame, n_customers: int, n_items: int) -> Scorer: ...

    def predict(self, u: np.ndarray, i: np.ndarray) -> np.ndarray | None: ...

    def score(self, u: np.ndarray) -> np.ndarray: ...


def _train_arrays(train: pd.DataFrame, n_customers: int, n_items: int):
    missing = {"u", "i", "rating"} - set(train.columns)
    if missing:
        raise ValueError(f"train is missing columns {sorted(missing)}")
    u = train["u"].to_numpy(dtype=np.int64)
    i = train["i"].to_numpy(dtype=np.int64)
    r = train["rating"].to_numpy(dtype=np.float64)
    if len(u) == 0:
        raise ValueError("train is empty")
    if u.min() < 0 or u.max() >= n_customers:
        raise ValueError("train.u out of range [0, n_customers)")
    if i.min() < 0 or i.max() >= n_items:
        raise ValueError("train.i out of range [0, n_items)")
    if not np.isfinite(r).all():
        raise ValueError("train.rating has non-finite values")
    return u, i, r


def _take(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``values[idx]`` along axis 0, with zeros for indices outside ``[0, len(values))``."""
    idx = np.asarray(idx, dtype=np.int64)
    ok = (idx >= 0) & (idx < len(values))
    out = values[np.where(ok, idx, 0)]
    if out.ndim == 1:
        return np.where(ok, out, 0.0)
    return np.where(ok[:, None], out, 0.0)


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(x, RATING_MIN, RATING_MAX)


def _fit_biases(u, i, r, mu, n_customers, n_items, reg_u, reg_i, iters):
    """Ridge fit of r - mu ≈ b_u + b_i by alternating exact (closed-form) updates."""
    n_u = np.bincount(u, minlength=n_customers).astype(np.float64)
    n_i = np.bincount(i, minlength=n_items).astype(np.float64)
    b_u = np.zeros(n_customers)
    b_i = np.zeros(n_items)
    for _ in range(max(1, iters)):
        b_i = np.bincount(i, weights=r - mu - b_u[u], minlength=n_items) / (reg_i + n_i)
        b_u = np.bincount(u, weights=r - mu - b_i[i], minlength=n_customers) / (reg_u + n_u)
    return b_u, b_i


class GlobalMean:
    """Predicts the mean training rating for everything (the floor any model must beat)."""

    name = "global_mean"

    def fit(self, train: pd.DataFrame, n_customers: int, n_items: int) -> GlobalMean:
        _, _, r = _train_arrays(train, n_customers, n_items)
        self.mu_ = float(r.mean())
        self.n_items_ = int(n_items)
        return self

    def predict(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        return _clip(np.full(np.shape(u), self.mu_, dtype=np.float64))

    def score(self, u: np.ndarray) -> np.ndarray:
        return np.full((len(u), self.n_items_), self.mu_, dtype=np.float64)


class BiasBaseline:
    """mu + b_u + b_i with ridge penalties, by alternating least squares.

    Regularised by default because most customers have only a few ratings: a bias is shrunk
    towards 0 by about ``n / (n + reg)``. Defaults (3, 6) were chosen on a leave-last-out validation
    split of Amazon Fashion 2023 (~4 ratings per customer). Ranking by predicted rating amounts to
    ranking by b_i.
    """

    name = "bias"

    def __init__(self, reg_u: float = 3.0, reg_i: float = 6.0, iters: int = 15):
        self.reg_u = float(reg_u)
        self.reg_i = float(reg_i)
        self.iters = int(iters)

    def fit(self, train: pd.DataFrame, n_customers: int, n_items: int) -> BiasBaseline:
        u, i, r = _train_arrays(train, n_customers, n_items)
        self.mu_ = float(r.mean())
        self.b_u_, self.b_i_ = _fit_biases(
            u, i, r, self.mu_, n_customers, n_items, self.reg_u, self.reg_i, self.iters
        )
        self.n_u_ = np.bincount(u, minlength=n_customers).astype(np.float64)
        self.n_i_ = np.bincount(i, minlength=n_items).astype(np.float64)
        return self

    def leave_one_out(self, u: np.ndarray, i: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(b_u, b_i) for each *fitted* rating (u, i, r) as if that rating had been left out of the fit.

        At the fixed point b_u = Σ(r - mu - b_i) / (reg_u + n_u), so removing one rating is one
        exact step on each side (its second-order effect on other biases is ignored). A model that
        learns on top of these sees training priors distributed like the priors of a rating it has
        to predict; in-sample biases already contain part of the answer."""
        u, i = np.asarray(u, np.int64), np.asarray(i, np.int64)
        r = np.asarray(r, np.float64)
        n_u, n_i = self.n_u_[u], self.n_i_[i]
        if (n_u < 1).any() or (n_i < 1).any():
            raise ValueError("leave_one_out takes fitted ratings only")
        b_u, b_i = self.b_u_[u], self.b_i_[i]
        loo_u = (b_u * (self.reg_u + n_u) - (r - self.mu_ - b_i)) / (self.reg_u + n_u - 1.0)
        loo_i = (b_i * (self.reg_i + n_i) - (r - self.mu_ - b_u)) / (self.reg_i + n_i - 1.0)
        return loo_u, loo_i

    def _raw(self, u, i):
        return self.mu_ + _take(self.b_u_, u) + _take(self.b_i_, i)

    def predict(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        return _clip(self._raw(u, i))

    def score(self, u: np.ndarray) -> np.ndarray:
        return self.mu_ + _take(self.b_u_, u)[:, None] + self.b_i_[None, :]


def _ridge_by_group(g, n_groups, X, y, lam, budget=16384):
    """Solve min_w ||X_g w - y_g||² + Σ lam·w² independently for every group g (batched).

    Groups are bucketed by their number of rows c, so each bucket is one dense (G, c, d) tensor:
    normal equations by batched matmul, then one batched ``np.linalg.solve``. Buckets are cut into
    pieces of about ``budget`` rows to bound memory. Groups with no rows get w = 0.
    """
    d = X.shape[1]
    W = np.zeros((n_groups, d))
    order = np.argsort(g, kind="stable")
    X, y = X[order], y[order]
    counts = np.bincount(g, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    Lam = np.diag(lam)
    for c in np.unique(counts[counts > 0]):
        groups = np.nonzero(counts == c)[0]
        step = max(1, budget // int(c))
        for lo in range(0, len(groups), step):
            sel = groups[lo : lo + step]
            rows = starts[sel][:, None] + np.arange(c)  # (G, c)
            Xg = X[rows]  # (G, c, d)
            Xt = Xg.transpose(0, 2, 1)
            A = Xt @ Xg + Lam
            rhs = Xt @ y[rows][:, :, None]
            W[sel] = np.linalg.solve(A, rhs)[:, :, 0]
    return W


class MatrixFactorization:
    """Biased MF (mu + b_u + b_i + p_u·q_i) on explicit ratings, by alternating least squares.

    Each half-step solves, for every customer (then every item) at once, the ridge problem for
    its factor vector and bias jointly, given the other side: penalty ``reg`` on factors and
    ``reg_bias_u`` / ``reg_bias_i`` on the biases. Item biases start from the bias baseline, item
    factors from N(0, init_std²); a very large ``reg`` reduces the model to :class:`BiasBaseline`.
    Default ``reg`` was tuned on Amazon Fashion 2023 (~4 ratings per customer): lower values
    overfit there, so on such sparse data the factors stay near zero and MF ≈ the bias baseline,
    while with denser data (tens of ratings per customer) they still learn.
    """

    name = "mf"

    def __init__(
        self,
        factors: int = 32,
        reg: float = 10.0,
        reg_bias_u: float = 3.0,
        reg_bias_i: float = 6.0,
        iters: int = 15,
        seed: int = 0,
        init_std: float = 0.1,
    ):
        self.factors = int(factors)
        self.reg = float(reg)
        self.reg_bias_u = float(reg_bias_u)
        self.reg_bias_i = float(reg_bias_i)
        self.iters = int(iters)
        self.seed = seed
        self.init_std = float(init_std)

    def fit(self, train: pd.DataFrame, n_customers: int, n_items: int) -> MatrixFactorization:
        u, i, r = _train_arrays(train, n_customers, n_items)
        f = self.factors
        self.mu_ = mu = float(r.mean())
        b_u, b_i = _fit_biases(u, i, r, mu, n_customers, n_items, self.reg_bias_u, self.reg_bias_i, 15)
        rng = np.random.default_rng(self.seed)
        P = np.zeros((n_customers, f))
        Q = rng.normal(0.0, self.init_std, size=(n_items, f))
        lam_u = np.concatenate([np.full(f, self.reg), [self.reg_bias_u]])
        lam_i = np.concatenate([np.full(f, self.reg), [self.reg_bias_i]])
        ones = np.ones((len(r), 1))
        for _ in range(max(1, self.iters)):
            W = _ridge_by_group(u, n_customers, np.hstack([Q[i], ones]), r - mu - b_i[i], lam_u)
            P, b_u = W[:, :f], W[:, f].copy()
            W = _ridge_by_group(i, n_items, np.hstack([P[u], ones]), r - mu - b_u[u], lam_i)
            Q, b_i = W[:, :f], W[:, f].copy()
        self.P_, self.Q_, self.b_u_, self.b_i_ = P, Q, b_u, b_i
        return self

    def _raw(self, u, i):
        u = np.asarray(u, dtype=np.int64)
        i = np.asarray(i, dtype=np.int64)
        dot = np.einsum("nf,nf->n", _take(self.P_, u.ravel()), _take(self.Q_, i.ravel())).reshape(u.shape)
        return self.mu_ + _take(self.b_u_, u) + _take(self.b_i_, i) + dot

    def predict(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        return _clip(self._raw(u, i))

    def score(self, u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, dtype=np.int64)
        return self.mu_ + _take(self.b_u_, u)[:, None] + self.b_i_[None, :] + _take(self.P_, u) @ self.Q_.T


class Popularity:
    """Ranks items by their number of training ratings (ties: lower item index, via the metric).

    A ranking-only baseline: ``predict`` returns None.
    """

    name = "popularity"

    def fit(self, train: pd.DataFrame, n_customers: int, n_items: int) -> Popularity:
        _, i, _ = _train_arrays(train, n_customers, n_items)
        self.counts_ = np.bincount(i, minlength=n_items).astype(np.float64)
        return self

    def predict(self, u: np.ndarray, i: np.ndarray) -> None:
        return None

    def score(self, u: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts_, (len(u), len(self.counts_))).copy()


# ---------------------------------------------------------------- ranking-only neighbourhood models


def _rated_matrix(u: np.ndarray, i: np.ndarray, n_customers: int, n_items: int) -> sparse.csr_matrix:
    """The 0/1 customer x item "rated" matrix (float64); a pair rated twice counts once."""
    x = sparse.csr_matrix((np.ones(len(u)), (u, i)), shape=(n_customers, n_items))
    x.data[:] = 1.0
    return x


def _rows(x: sparse.csr_matrix, u: np.ndarray) -> sparse.csr_matrix:
    """Rows `u` of `x`; customers outside [0, n_rows) get an empty row."""
    u = np.asarray(u, dtype=np.int64)
    ok = (u >= 0) & (u < x.shape[0])
    return sparse.diags(ok.astype(np.float64)) @ x[np.where(ok, u, 0)]


def validation_split(train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit, validation) rows of a training frame, shaped like the leave-last-out test split: the
    latest rating of every customer with at least two, by column ``t`` (recency, larger = later)
    when present, else row order. Hyper-parameters chosen on it never see a test rating."""
    t = train["t"].to_numpy() if "t" in train else np.arange(len(train))
    u = train["u"].to_numpy(dtype=np.int64)
    order = np.lexsort((t, u))
    last = np.zeros(len(train), bool)
    is_last = np.append(u[order][1:] != u[order][:-1], True)
    counts = np.bincount(u)
    rows = order[is_last]
    last[rows[counts[u[rows]] >= 2]] = True
    return train[~last], train[last]


def _choose(
    train: pd.DataFrame,
    n_customers: int,
    n_items: int,
    make: Callable[[float], Scorer],
    grid: Sequence[float],
    k: int = 10,
) -> tuple[float, dict]:
    """The value of `grid` whose model, fitted on `validation_split`'s fit rows, ranks the held-out
    rows best (mean NDCG@k over all items the customer had not rated); ties go to the first."""
    fit, val = validation_split(train)
    if fit.empty or val.empty:
        return float(grid[0]), {}
    users = np.unique(val["u"].to_numpy())
    exclude = csr_from_pairs(fit["u"], fit["i"], n_customers)
    relevant = csr_from_pairs(val["u"], val["i"], n_customers)
    scores = {}
    for value in grid:
        model = make(value).fit(fit, n_customers, n_items)
        scores[float(value)] = ranking_metrics(model.score, users, exclude, relevant, n_items, k=k)[
            f"ndcg@{k}"
        ]
    best = max(scores, key=lambda v: (scores[v], -list(scores).index(v)))
    return best, scores


class EASE:
    """Embarrassingly Shallow Autoencoder (Steck, WWW 2019): B = argmin ||X - XB||² + λ||B||²,
    diag(B) = 0, in closed form P = (XᵀX + λI)⁻¹, B = -P / diag(P); score(u) = x_u B.

    The strongest simple top-N baseline on sparse implicit data in published comparisons. Rated
    items are treated as implicit feedback (0/1), as the ranking test counts any rated item a hit.
    Items without training ratings get a zero column, so the dense solve is over rated items only
    (7,396 on the 2023 Amazon Fashion split: 20–40 s per λ on 2 shared cores). With more than one λ the best
    by NDCG@10 on `validation_split` is refitted on all training rows (`lambda_`, `validation_`).
    """

    name = "ease"

    def __init__(self, lambdas: Sequence[float] = (50.0, 200.0, 500.0, 2000.0)):
        self.lambdas = tuple(float(v) for v in lambdas)

    def fit(self, train: pd.DataFrame, n_customers: int, n_items: int) -> EASE:
        u, i, _ = _train_arrays(train, n_customers, n_items)
        self.validation_: dict = {}
        self.lambda_ = self.lambdas[0]
        if len(self.lambdas) > 1:
            self.lambda_, self.validation_ = _choose(
                train, n_customers, n_items, lambda v: EASE((v,)), self.lambdas
            )
        self.x_ = _rated_matrix(u, i, n_customers, n_items)
        self.items_ = np.flatnonzero(np.asarray(self.x_.sum(axis=0)).ravel() > 0)
        xa = self.x_[:, self.items_]
        gram = (xa.T @ xa).toarray()
        gram[np.diag_indices_from(gram)] += self.lambda_
        p = np.linalg.inv(gram)
        b = -p / np.diag(p)[None, :]
        np.fill_diagonal(b, 0.0)
        self.b_ = b.astype(np.float32)
        self.n_items_ = int(n_items)
        return self

    def predict(self, u: np.ndarray, i: np.ndarray) -> None:
        return None

    def score(self, u: np.ndarray) -> np.ndarray:
        out = np.zeros((len(u), self.n_items_), np.float32)
        out[:, self.items_] = _rows(self.x_, u)[:, self.items_].astype(np.float32) @ self.b_
        return out


class ItemKNN:
    """Item-based collaborative filtering: s(i, j) = |U_i ∩ U_j| / (sqrt(|U_i|·|U_j|) + shrink),
    the cosine of the items' 0/1 rater vectors shrunk towards 0 when few customers back it (so a
    pair of items each rated once does not look like a perfect match); score(u, j) = Σ_{i rated by
    u} s(i, j). With more than one shrinkage the best on `validation_split` is kept (`shrink_`)."""

    name = "item_knn"

    def __init__(self, shrinks: Sequence[float] = (0.0, 10.0, 50.0, 200.0, 1000.0)):
        self.shrinks = tuple(float(v) for v in shrinks)

    def fit(self, train: pd.DataFrame, n_customers: int, n_items: int) -> ItemKNN:
        u, i, _ = _train_arrays(train, n_customers, n_items)
        self.validation_: dict = {}
        self.shrink_ = self.shrinks[0]
        if len(self.shrinks) > 1:
            self.shrink_, self.validation_ = _choose(
                train, n_customers, n_items, lambda v: ItemKNN((v,)), self.shrinks
            )
        self.x_ = _rated_matrix(u, i, n_customers, n_items)
        co = (self.x_.T @ self.x_).tocoo()
        norm = np.sqrt(np.asarray(self.x_.sum(axis=0)).ravel())
        keep = co.row != co.col
        r, c = co.row[keep], co.col[keep]
        sim = co.data[keep] / (norm[r] * norm[c] + self.shrink_)
        self.sim_ = sparse.csr_matrix((sim, (r, c)), shape=(n_items, n_items))
        return self

    def predict(self, u: np.ndarray, i: np.ndarray) -> None:
        return None

    def score(self, u: np.ndarray) -> np.ndarray:
        return np.asarray((_rows(self.x_, u) @ self.sim_).todense())


class ContentKNN:
    """Content-based neighbour: score(u, j) = cos(c_j, mean of c_i over u's training products
    rated at least `min_rating`), or over all u's products when none is; c = `content`, the
    product vectors the hybrid itself is given (image/text embeddings). It needs no ratings of j,
    which makes it the natural baseline for never-rated products. Products with an all-zero
    content vector score -2 (below any cosine); customers with no profile score 0 everywhere."""

    name = "content_knn"

    def __init__(self, content: np.ndarray, min_rating: float = LIKED_RATING):
        self.content = np.asarray(content, dtype=np.float64)
        self.min_rating = float(min_rating)

    def fit(self, train: pd.DataFrame, n_customers: int, n_items: int) -> ContentKNN:
        u, i, r = _train_arrays(train, n_customers, n_items)
        if self.content.shape[0] != n_items or self.content.shape[1] == 0:
            raise ValueError("content must be (n_items, d) with d > 0")
        good = r >= self.min_rating
        has_good = np.bincount(u[good], minlength=n_customers) > 0
        use = good | ~has_good[u]  # a customer without a well-rated product: all of theirs
        profile = np.zeros((n_customers, self.content.shape[1]))
        np.add.at(profile, u[use], self.content[i[use]])
        self.profile_ = _unit(profile)
        self.unit_ = _unit(self.content)
        self.no_content_ = ~self.unit_.any(axis=1)
        return self

    def predict(self, u: np.ndarray, i: np.ndarray) -> None:
        return None

    def score(self, u: np.ndarray) -> np.ndarray:
        out = _take(self.profile_, u) @ self.unit_.T
        out[:, self.no_content_] = -2.0
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; zero rows stay zero."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)
