"""Rating and top-k ranking metrics (numpy only, vectorised).

Rating metrics: RMSE and MAE. Ranking metrics: Recall@k and NDCG@k with binary relevance, computed
over *all* items for each customer, with the customer's training items excluded. Scores are
evaluated in chunks of customers so the dense (chunk, n_items) score matrix stays small.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "rmse",
    "mae",
    "squared_errors",
    "Csr",
    "csr_from_pairs",
    "top_k",
    "ranking_metrics",
    "paired_bootstrap",
]


def _errors(y_true, y_pred) -> np.ndarray:
    """Prediction errors as float64, after checking the shapes agree."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch: {y_true.shape} vs {y_pred.shape}")
    return y_true - y_pred


def squared_errors(y_true, y_pred) -> np.ndarray:
    """Per-rating squared errors (the units RMSE averages; see paired_bootstrap)."""
    return _errors(y_true, y_pred) ** 2


def rmse(y_true, y_pred) -> float:
    """Root mean squared error."""
    sq = squared_errors(y_true, y_pred)
    return float(np.sqrt(np.mean(sq))) if sq.size else float("nan")


def mae(y_true, y_pred) -> float:
    """Mean absolute error."""
    err = _errors(y_true, y_pred)
    return float(np.mean(np.abs(err))) if err.size else float("nan")


class Csr(NamedTuple):
    """Minimal CSR row index (no scipy): row r holds ``indices[indptr[r]:indptr[r + 1]]``."""

    indptr: np.ndarray
    indices: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def row(self, r: int) -> np.ndarray:
        return self.indices[self.indptr[r] : self.indptr[r + 1]]


def csr_from_pairs(rows, cols, n_rows: int) -> Csr:
    """Group ``cols`` by ``rows`` (e.g. customer -> rated items) into a :class:`Csr`."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    order = np.lexsort((cols, rows))
    counts = np.bincount(rows, minlength=n_rows)[:n_rows]
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return Csr(indptr, cols[order])


def _chunk_pairs(sets, positions: np.ndarray, customers: np.ndarray):
    """(row-in-chunk, item) pairs for one chunk.

    ``sets`` is either CSR-like (``indptr``/``indices``; rows are *customer indices*) or a
    sequence of int arrays aligned with the evaluated customers (looked up by *position*).
    """
    if sets is None:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if hasattr(sets, "indptr") and hasattr(sets, "indices"):
        indptr = np.asarray(sets.indptr)
        indices = np.asarray(sets.indices)
        n_rows = len(indptr) - 1
        ok = (customers >= 0) & (customers < n_rows)
        c = np.where(ok, customers, 0)
        starts = np.where(ok, indptr[c], 0)
        lens = np.where(ok, indptr[c + 1] - indptr[c], 0)
        rows = np.repeat(np.arange(len(customers)), lens)
        offs = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        return rows, indices[np.repeat(starts, lens) + offs].astype(np.int64)
    arrays = [np.asarray(sets[p], dtype=np.int64).ravel() for p in positions]
    lens = np.array([a.size for a in arrays], dtype=np.int64)
    rows = np.repeat(np.arange(len(arrays)), lens)
    cols = np.concatenate(arrays) if arrays else np.empty(0, np.int64)
    return rows, cols


def _nan_as_lowest(scores: np.ndarray) -> np.ndarray:
    """`scores` with NaN as -inf (a copy only when there is a NaN): how rankings order a NaN."""
    return np.where(np.isnan(scores), -np.inf, scores) if np.isnan(scores).any() else scores


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first.

    Ties are broken deterministically by the lower item index (the result does not depend on
    argpartition's internal order). NaN counts as -inf.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_rows, n_items = scores.shape
    k = min(int(k), n_items)
    if k <= 0 or n_rows == 0:
        return np.empty((n_rows, 0), dtype=np.int64)
    s = _nan_as_lowest(scores)
    # k-th best value per row (argpartition), then take everything strictly better plus the
    # lowest-index items equal to it until k are chosen.
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    thresh = np.take_along_axis(s, part, axis=1).min(axis=1)[:, None]
    gt = s > thresh
    eq = s == thresh
    need = k - gt.sum(axis=1, keepdims=True)
    chosen = gt | (eq & (np.cumsum(eq, axis=1) <= need))
    idx = np.nonzero(chosen)[1].reshape(n_rows, k)  # ascending item index within each row
    vals = np.take_along_axis(s, idx, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")  # stable: equal scores keep index order
    return np.take_along_axis(idx, order, axis=1)


# `ranking_metrics` counts the positions of the relevant items instead of sorting when a chunk's
# customers have at most this many relevant items on average (each costs one pass over the row)
RANK_PATH_MAX_RELEVANT = 4


def relevant_ranks(scores: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The position (0 = best) of item cols[j] in row rows[j] of `scores` in `top_k`'s order: the
    items scoring higher plus the equal ones with a lower index (NaN counts as -inf, as there)."""
    s = _nan_as_lowest(scores)
    if len(rows) == len(s) and np.array_equal(rows, np.arange(len(s))):
        row_s = s  # one item per row (the common case): no copy of the rows
    else:
        row_s = s[rows]
    target = row_s[np.arange(len(rows)), cols][:, None]
    lower_index = np.arange(s.shape[1])[None, :] < cols[:, None]
    return (row_s > target).sum(axis=1) + ((row_s == target) & lower_index).sum(axis=1)


def ranking_metrics(
    score_fn: Callable[[np.ndarray], np.ndarray],
    customer_idx: np.ndarray,
    exclude,
    relevant: Sequence[np.ndarray] | Csr,
    n_items: int,
    k: int = 10,
    chunk: int = 512,
    per_customer: bool = False,
) -> dict:
    """Mean Recall@k and NDCG@k over customers, ranking all items except excluded ones.

    - ``score_fn(customers) -> (len(customers), n_items)`` scores, higher is better.
    - ``exclude`` / ``relevant``: per-customer item indices, either a list aligned with
      ``customer_idx`` (entry j belongs to ``customer_idx[j]``) or a CSR-like object with
      ``indptr``/``indices`` whose rows are customer indices (see :func:`csr_from_pairs`).
      ``exclude`` may be None. Excluded items get score -inf and never count as hits.
    - Recall@k = |top-k ∩ relevant| / |relevant| (standard definition, not capped at k).
    - NDCG@k: binary gains, DCG = sum over hits of 1/log2(rank+1) (rank from 1); ideal DCG uses
      min(k, |relevant|) hits.
    - Ties in scores are broken by lower item index (deterministic); customers with no relevant
      items are skipped (NaN results if none is left). Keys are ``f"recall@{k}"``, ``f"ndcg@{k}"``.
    - ``per_customer``: the values are arrays, one entry per evaluated customer in ``customer_idx``
      order (for paired comparisons of two models, see :func:`paired_bootstrap`).
    """
    customer_idx = np.asarray(customer_idx, dtype=np.int64).ravel()
    n_items = int(n_items)
    k = int(k)
    if k <= 0:
        raise ValueError("k must be positive")
    chunk = max(1, int(chunk))
    if not (hasattr(relevant, "indptr") and hasattr(relevant, "indices")) and len(relevant) != len(
        customer_idx
    ):
        raise ValueError("relevant must be aligned with customer_idx")
    if (
        exclude is not None
        and not (hasattr(exclude, "indptr") and hasattr(exclude, "indices"))
        and len(exclude) != len(customer_idx)
    ):
        raise ValueError("exclude must be aligned with customer_idx (or be CSR-like by customer index)")

    kk = min(k, n_items)
    discounts = 1.0 / np.log2(np.arange(2, kk + 2, dtype=np.float64))
    ideal_cum = np.concatenate([[0.0], np.cumsum(discounts)])
    recalls: list[np.ndarray] = []
    ndcgs: list[np.ndarray] = []

    for start in range(0, len(customer_idx), chunk):
        pos = np.arange(start, min(start + chunk, len(customer_idx)))
        cust = customer_idx[pos]
        rel = np.zeros((len(pos), n_items), dtype=bool)
        r_rows, r_cols = _chunk_pairs(relevant, pos, cust)
        ok = (r_cols >= 0) & (r_cols < n_items)
        rel[r_rows[ok], r_cols[ok]] = True
        n_rel = rel.sum(axis=1)
        keep = n_rel > 0
        if not keep.any():
            continue
        raw = np.asarray(score_fn(cust))
        # float32 scores stay float32 (orders and ties are those of their float64 values; half the
        # memory traffic); anything else is compared as float64
        scores = np.array(raw, dtype=np.float32 if raw.dtype == np.float32 else np.float64, copy=True)
        if scores.shape != (len(pos), n_items):
            raise ValueError(f"score_fn returned shape {scores.shape}, expected {(len(pos), n_items)}")
        e_rows, e_cols = _chunk_pairs(exclude, pos, cust)
        ok = (e_cols >= 0) & (e_cols < n_items)
        scores[e_rows[ok], e_cols[ok]] = -np.inf
        excluded = np.zeros_like(rel)
        excluded[e_rows[ok], e_cols[ok]] = True

        scores, rel, excluded, n_rel = scores[keep], rel[keep], excluded[keep], n_rel[keep]
        if n_rel.sum() <= RANK_PATH_MAX_RELEVANT * len(n_rel):
            # few relevant items per customer (leave-last-out: one): their positions in top_k's order
            # are counted directly, which gives the same hits as sorting (and is ~10x cheaper)
            rows, cols = np.nonzero(rel)
            rank = relevant_ranks(scores, rows, cols)
            hit = (rank < kk) & ~excluded[rows, cols]
            gain = np.where(hit, discounts[np.minimum(rank, kk - 1)], 0.0)
            recalls.append(np.bincount(rows, hit, len(n_rel)) / n_rel)
            ndcgs.append(np.bincount(rows, gain, len(n_rel)) / ideal_cum[np.minimum(n_rel, kk)])
            continue
        top = top_k(scores, kk)
        hits = np.take_along_axis(rel, top, axis=1) & ~np.take_along_axis(excluded, top, axis=1)
        recalls.append(hits.sum(axis=1) / n_rel)
        ndcgs.append((hits @ discounts) / ideal_cum[np.minimum(n_rel, kk)])

    recall = np.concatenate(recalls) if recalls else np.empty(0)
    ndcg = np.concatenate(ndcgs) if ndcgs else np.empty(0)
    if per_customer:
        return {f"recall@{k}": recall, f"ndcg@{k}": ndcg}
    if len(recall) == 0:
        return {f"recall@{k}": float("nan"), f"ndcg@{k}": float("nan")}
    return {f"recall@{k}": float(recall.mean()), f"ndcg@{k}": float(ndcg.mean())}


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    stat: Callable[[np.ndarray], np.ndarray] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """stat(a) - stat(b) for two models' per-unit values on the same units (test ratings or
    customers), with a 95% percentile interval from resampling the units with replacement.

    ``stat`` maps a (n_boot, n) array to (n_boot,) (default: the row mean); for RMSE pass the
    squared errors and ``lambda x: np.sqrt(x.mean(axis=-1))``. An interval that contains 0 means
    the two models are not told apart by this test set."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("a and b must be 1-d and aligned")
    if len(a) == 0:
        return {"diff": None, "ci95": None, "n": 0}
    stat = stat or (lambda x: x.mean(axis=-1))
    diff = float(stat(a[None])[0] - stat(b[None])[0])
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for lo in range(0, n_boot, 100):  # 100 resamples at a time bounds memory
        idx = rng.integers(0, len(a), size=(min(100, n_boot - lo), len(a)))
        boots[lo : lo + len(idx)] = stat(a[idx]) - stat(b[idx])
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"diff": diff, "ci95": [float(low), float(high)], "n": int(len(a))}
