"""Train/test splits of a reviews frame (columns customer_id, product_id, rating, timestamp, order)."""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("none", "last", "time")


def _chronological(reviews: pd.DataFrame) -> pd.DataFrame:
    """Sorted by time; rows without a timestamp keep their file order (`order`)."""
    ts = reviews["timestamp"].fillna(-np.inf) if "timestamp" in reviews else 0
    return reviews.assign(_ts=ts).sort_values(["_ts", "order"], kind="stable").drop(columns="_ts")


def split_reviews(
    reviews: pd.DataFrame, how: str = "last", time_quantile: float = 0.8
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split into (train, test).

    - `none`: everything is training data;
    - `last` (leave-last-out): each customer's latest rating (by timestamp, else file order) is the
      test row, for customers with at least two ratings;
    - `time`: ratings after the `time_quantile` timestamp are test rows (needs timestamps).
    """
    if how not in SPLITS:
        raise ValueError(f"unknown split {how!r}; choose one of {', '.join(SPLITS)}")
    if how == "none":
        return reviews.copy(), reviews.iloc[0:0].copy()
    if how == "last":
        ordered = _chronological(reviews)
        pos_from_end = ordered.groupby("customer_id").cumcount(ascending=False)
        size = ordered.groupby("customer_id")["customer_id"].transform("size")
        test_mask = (pos_from_end == 0) & (size >= 2)
        return ordered[~test_mask].copy(), ordered[test_mask].copy()
    ts = reviews["timestamp"]
    if ts.isna().all():
        raise ValueError("the time split needs timestamps, and this data has none")
    cutoff = float(ts.quantile(time_quantile))
    test_mask = ts > cutoff
    return reviews[~test_mask].copy(), reviews[test_mask].copy()


def has_timestamps(reviews: pd.DataFrame) -> bool:
    return "timestamp" in reviews and reviews["timestamp"].notna().any()
