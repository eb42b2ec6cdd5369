"""Live feedback: ratings that arrive after training, folded into a loaded model without retraining,
and kept for the next training run.

What a rating changes at once (`fold_in`, on the customer's side of the feature tables, exactly as
`ml.features.build_tables` would have counted it): the customer's rating count and sum, the sums of
their rated products' content (plain and weighted by rating - mu), their recent-history ids, their
row of the rated-products CSR (so pair features and `because` see it, and the product is excluded as
seen) and their ridge bias b_u (the fixed point of ml.baselines.BiasBaseline for the new ratings). An
unknown customer gets a new row and is served as a known one from then on.

What waits for the next training (argued, not forgotten): the product side (counts, mean review text,
b_i, the pick head's product offsets) is precomputed over the whole catalog at load, and one rating
moves it little; co-occurrence counts between products likewise; a review's text is stored but not
embedded here (its PCA projection is fitted at training and is not part of the artifact); and on
two-stage catalogs the retriever's customer vectors are distilled at training, so a new customer's
candidates come from the product bias part of the index (its vector is [0, ..., 0, 1]) and are then
reranked by the heads with the new features.

The feedback file (`FeedbackFile`, JSON lines in the Amazon 2023 review format plus the stream id)
is what the next training reads with its data (`merge_into`)."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ml.baselines import BiasBaseline
from ml.features import LIKED_RATING, FeatureTables

MIN_RATING, MAX_RATING = 1.0, 5.0


@dataclass(frozen=True)
class Rating:
    """One piece of feedback. `feedback_id`: its id in the service's stream (ordering, replay)."""

    customer_id: str
    product_id: str
    rating: float
    text: str = ""
    timestamp_ms: int = 0
    feedback_id: str = ""

    def to_review(self) -> dict:
        """The Amazon 2023 review record the next training reads (ml.data.amazon2023)."""
        return {
            "user_id": self.customer_id,
            "parent_asin": self.product_id,
            "asin": self.product_id,
            "rating": self.rating,
            "title": "",
            "text": self.text,
            "timestamp": self.timestamp_ms,
            "feedback_id": self.feedback_id,
        }

    @classmethod
    def from_fields(cls, fields: dict, feedback_id: str = "") -> Rating:
        return cls(
            str(fields["customer_id"]),
            str(fields["product_id"]),
            float(fields["rating"]),
            str(fields.get("text", "")),
            int(fields.get("timestamp_ms", 0)),
            feedback_id,
        )


def check_rating(value) -> float:
    """A rating from a client: a number from 1 to 5 (ValueError otherwise)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not np.isfinite(value)
        or not MIN_RATING <= value <= MAX_RATING
    ):
        raise ValueError(f"rating must be a number from {MIN_RATING:g} to {MAX_RATING:g}")
    return float(value)


def add_customer(t: FeatureTables, customer_id: str) -> int:
    """Append an empty customer row to every customer-indexed table; its position."""
    t.customer_ids = np.append(t.customer_ids, customer_id)
    for name in (
        "cust_review_sum",
        "cust_content_sum",
        "cust_content_wsum",
        "cust_history",
        "cust_liked_sum",
    ):
        table = getattr(t, name)
        if table is not None:  # None: tables from before the liked sums
            setattr(t, name, np.concatenate([table, np.zeros((1,) + table.shape[1:], table.dtype)]))
    for name in ("cust_text_count", "cust_count", "cust_prior", "cust_liked_count"):
        if getattr(t, name) is not None:
            setattr(t, name, np.append(getattr(t, name), np.float32(0)))
    t.rated_indptr = np.append(t.rated_indptr, t.rated_indptr[-1])
    return t.n_customers - 1


def _set_rated(t: FeatureTables, u: int, i: int, rating: float) -> float | None:
    """Put (i, rating) into customer u's CSR row (kept sorted); the rating it replaced, if any."""
    a, b = int(t.rated_indptr[u]), int(t.rated_indptr[u + 1])
    at = a + int(np.searchsorted(t.rated_indices[a:b], i))
    if at < b and t.rated_indices[at] == i:
        old = float(t.rated_rating[at])
        t.rated_rating[at] = rating
        return old
    t.rated_indices = np.insert(t.rated_indices, at, np.int32(i))
    t.rated_rating = np.insert(t.rated_rating, at, np.float32(rating))
    t.rated_indptr[u + 1 :] += 1
    return None


def _push_history(t: FeatureTables, u: int, i: int) -> None:
    """Product i becomes customer u's most recent (last) history id."""
    row = [x for x in t.cust_history[u] if x != i + 1 and x != 0]
    row = (row + [i + 1])[-t.cust_history.shape[1] :]
    t.cust_history[u] = 0
    t.cust_history[u, len(t.cust_history[u]) - len(row) :] = row


def _refit_bias(t: FeatureTables, u: int, reg_u: float = BiasBaseline().reg_u) -> None:
    """b_u at BiasBaseline's fixed point for the customer's ratings, the product biases held."""
    a, b = int(t.rated_indptr[u]), int(t.rated_indptr[u + 1])
    i, r = t.rated_indices[a:b], t.rated_rating[a:b].astype(np.float64)
    t.cust_prior[u] = np.float32(np.sum(r - t.mu - t.prod_prior[i]) / (reg_u + len(i)))


def fold_in(t: FeatureTables, u: int, i: int, rating: float) -> bool:
    """Count customer u's rating of product i into the tables; True when it is a new (customer,
    product) pair, False when it replaced an earlier rating of the same product."""
    content = t.prod_content[i]
    old = _set_rated(t, u, i, rating)
    if old is None:  # a new pair: counted, its content summed, weighted by rating - mu
        t.cust_count[u] += 1
        t.cust_content_sum[u] += content
        t.cust_content_wsum[u] += content * np.float32(rating - t.mu)
    else:  # a replaced rating: only the rating moves
        t.cust_content_wsum[u] += content * np.float32(rating - old)
    if t.cust_liked_sum is not None:  # in or out of the liked set: +1 joins, -1 leaves, 0 stays
        move = float(rating >= LIKED_RATING) - float(old is not None and old >= LIKED_RATING)
        t.cust_liked_sum[u] += content * np.float32(move)
        t.cust_liked_count[u] += np.float32(move)
    _push_history(t, u, i)
    _refit_bias(t, u)
    return old is None


class FeedbackFile:
    """Append-only JSON lines, one review per line; several worker processes append to it (each
    line is one write under an exclusive lock, so lines never interleave)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, ratings: Iterable[Rating]) -> None:
        lines = "".join(json.dumps(r.to_review(), ensure_ascii=False) + "\n" for r in ratings)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, lines.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a torn last line after a crash: skip it
                    continue
        return out


def merge_into(reviews: pd.DataFrame, products: pd.Index, records: list[dict]) -> tuple[pd.DataFrame, dict]:
    """`reviews` (ml.data schema) with the feedback records appended: only those naming a product of
    the catalog; a later record for the same (customer, product) replaces earlier ones, feedback
    included (it is the customer's latest word). Returns (reviews, report for the manifest)."""
    rows = [r for r in records if str(r.get("parent_asin")) in products]
    report = {
        "records": len(records),
        "used": len(rows),
        "last_id": rows[-1].get("feedback_id") if rows else None,
    }
    if not rows:
        return reviews, report
    extra = pd.DataFrame(
        {
            "customer_id": [str(r["user_id"]) for r in rows],
            "product_id": [str(r["parent_asin"]) for r in rows],
            "rating": [float(r["rating"]) for r in rows],
            "title": "",
            "text": [str(r.get("text", "")) for r in rows],
            "timestamp": [float(r.get("timestamp", 0)) for r in rows],
        }
    )
    merged = pd.concat([reviews, extra], ignore_index=True)
    merged = merged.drop_duplicates(["customer_id", "product_id"], keep="last").reset_index(drop=True)
    if "order" in merged:
        merged["order"] = np.arange(len(merged))
    return merged, report
