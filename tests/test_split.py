import numpy as np
import pandas as pd
import pytest

from ml.split import split_reviews


def _reviews():
    return pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b", "b", "c"],
            "product_id": ["p1", "p2", "p3", "p1", "p3", "p2"],
            "rating": [5, 4, 3, 2, 1, 5],
            "timestamp": [30.0, 10.0, 20.0, np.nan, np.nan, 5.0],
            "order": [0, 1, 2, 3, 4, 5],
        }
    )


def test_leave_last_out_uses_time_then_file_order():
    train, test = split_reviews(_reviews(), "last")
    assert set(map(tuple, test[["customer_id", "product_id"]].values)) == {("a", "p1"), ("b", "p3")}
    assert len(train) == 4 and "c" in set(train.customer_id)  # single-rating customers stay in train


def test_time_split_and_none():
    train, test = split_reviews(_reviews(), "time", time_quantile=0.5)
    assert set(test.timestamp) == {30.0, 20.0}
    train, test = split_reviews(_reviews(), "none")
    assert len(train) == 6 and test.empty


def test_bad_split_names_and_missing_timestamps():
    with pytest.raises(ValueError, match="unknown split"):
        split_reviews(_reviews(), "random")
    with pytest.raises(ValueError, match="timestamps"):
        split_reviews(_reviews().assign(timestamp=np.nan), "time")
