"""Data ingestion: every supported format is read into one in-memory `Dataset`.

`load_dataset(path)` detects the format (see `ml.data.detect`):
- a folder of Amazon Reviews 2023 JSONL files (reviews + `meta*` files, plain or .gz, optional
  `images/<product_id>.{jpg,jpeg,png}`); only top-level files are read;
- an Amazon Review Data 2018 JSON-lines file (or a folder of them);
- a ratings CSV (user_id, item_id, rating[, timestamp]) or a folder of such CSVs (name order).
Anything else raises `DataFormatError` (a ValueError). Image downloading: `ml.data.images`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import amazon2018, amazon2023, ratings_csv
from .detect import detect
from .schema import PRODUCT_COLUMNS, REVIEW_COLUMNS, DataFormatError, Dataset, LoadReport, describe

__all__ = [
    "load_dataset",
    "Dataset",
    "LoadReport",
    "DataFormatError",
    "describe",
    "REVIEW_COLUMNS",
    "PRODUCT_COLUMNS",
]

log = logging.getLogger("ml.data")

_LOADERS = {"amazon2023": amazon2023.load, "amazon2018": amazon2018.load, "ratings_csv": ratings_csv.load}


def load_dataset(path: str | Path) -> Dataset:
    """Read `path` (file or folder) into a `Dataset`; raises DataFormatError if it cannot."""
    source, files = detect(path)
    p = Path(path).expanduser()
    ds = _LOADERS[source](p, files)
    log.info(
        "loaded %s from %s: %d reviews, %d customers, %d products "
        "(%d malformed lines, %d duplicates dropped)",
        source,
        ds.path,
        len(ds.reviews),
        ds.n_customers,
        len(ds.products),
        ds.report.total_malformed,
        ds.report.duplicates_dropped,
    )
    return ds
