"""The one in-memory form every loader produces: `Dataset`, its `LoadReport`, and shared helpers.

See docs/ARCHITECTURE.md, section "ml/data". Loaders collect raw review rows into a `ReviewRows`
buffer (column lists, cheap for millions of rows), then `build_reviews` applies the shared rules:
dtypes, duplicate (customer, product) pairs keep the earliest (timestamp, then source order).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

log = logging.getLogger("ml.data")

REVIEW_COLUMNS = ["customer_id", "product_id", "rating", "title", "text", "timestamp", "order"]
PRODUCT_COLUMNS = ["product_id", "title", "text", "image", "store", "categories", "price"]

# Timestamps at or above this are taken as milliseconds (1e11 s is the year 5138).
_MS_THRESHOLD = 1e11
# How many example problems per file a report keeps (the counts are always complete).
_MAX_EXAMPLES = 5


class DataFormatError(ValueError):
    """The path does not exist, holds no data, or holds data of no known format."""


@dataclass
class LoadReport:
    """What a loader read and what it had to skip.

    `lines`: non-empty data lines (CSV: data rows) read per file; `malformed`: per file, the lines
    that were skipped (bad JSON, missing ids, rating not a number in 1..5); `duplicates_dropped`:
    review rows dropped because an earlier row had the same (customer, product) pair.
    """

    files: list[str] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)
    malformed: dict[str, int] = field(default_factory=dict)
    duplicates_dropped: int = 0
    # First few problems per file, "line N: reason" (for logs and the CLI; counts are above).
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total_lines(self) -> int:
        return int(sum(self.lines.values()))

    @property
    def total_malformed(self) -> int:
        return int(sum(self.malformed.values()))

    def add_file(self, name: str) -> None:
        if name not in self.lines:
            self.files.append(name)
            self.lines[name] = 0
            self.malformed[name] = 0

    def bad(self, name: str, line_no: int, reason: str) -> None:
        self.malformed[name] = self.malformed.get(name, 0) + 1
        ex = self.examples.setdefault(name, [])
        if len(ex) < _MAX_EXAMPLES:
            ex.append(f"line {line_no}: {reason}")

    def warn_malformed(self) -> None:
        for name, n in self.malformed.items():
            if n:
                log.warning(
                    "%s: skipped %d malformed line(s) of %d (e.g. %s)",
                    name,
                    n,
                    self.lines.get(name, 0),
                    "; ".join(self.examples.get(name, [])[:3]),
                )

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": list(self.files),
            "lines": dict(self.lines),
            "malformed": dict(self.malformed),
            "duplicates_dropped": int(self.duplicates_dropped),
            "examples": {k: list(v) for k, v in self.examples.items()},
        }


@dataclass
class Dataset:
    """Reviews (one row per customer/product pair) and products (every product seen), plus provenance."""

    reviews: pd.DataFrame
    products: pd.DataFrame
    source: str
    path: str
    report: LoadReport = field(default_factory=LoadReport)

    def fingerprint(self) -> str:
        """Short hash (16 hex chars) of the ratings: the set of (customer_id, product_id, rating).

        Independent of row order, titles, texts and products, so the same ratings loaded from any
        file layout give the same fingerprint.
        """
        r = self.reviews
        h = hashlib.sha256()
        h.update(f"n={len(r)}\n".encode())
        if len(r):
            ordered = r.sort_values(["customer_id", "product_id"], kind="stable")
            ratings = ordered["rating"].astype("float64").map(lambda x: f"{x:.4g}")
            lines = (
                ordered["customer_id"].astype(str) + "\t" + ordered["product_id"].astype(str) + "\t" + ratings
            )
            h.update("\n".join(lines.tolist()).encode("utf-8"))
        return h.hexdigest()[:16]

    @property
    def n_customers(self) -> int:
        return int(self.reviews["customer_id"].nunique())

    @property
    def n_products(self) -> int:
        return int(len(self.products))


def describe(dataset: Dataset) -> dict[str, Any]:
    """Counts for the CLI / logs: sizes, image coverage, rating histogram, what was skipped."""
    r, p = dataset.reviews, dataset.products
    ratings = r["rating"].astype("float64").to_numpy()
    binned = np.clip(np.rint(ratings), 1, 5).astype(int) if len(ratings) else np.array([], dtype=int)
    hist = {str(k): int((binned == k).sum()) for k in range(1, 6)}
    ts = r["timestamp"].astype("float64")
    return {
        "source": dataset.source,
        "path": dataset.path,
        "fingerprint": dataset.fingerprint(),
        "reviews": int(len(r)),
        "customers": int(r["customer_id"].nunique()),
        "products": int(len(p)),
        "products_rated": int(r["product_id"].nunique()),
        "products_with_image": int((p["image"].astype(str) != "").sum()) if len(p) else 0,
        "rating_histogram": hist,
        "rating_mean": float(ratings.mean()) if len(ratings) else float("nan"),
        "with_timestamp": int(ts.notna().sum()),
        "lines": dataset.report.total_lines,
        "malformed": dataset.report.total_malformed,
        "malformed_per_file": {k: v for k, v in dataset.report.malformed.items() if v},
        "duplicates": int(dataset.report.duplicates_dropped),
    }


# --------------------------------------------------------------------------------------- helpers


def open_text(path: Path) -> IO[str]:
    """Open a text file, transparently gunzipping (detected by magic bytes, not the name)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace", newline="")


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for each non-blank line."""
    with open_text(path) as fh:
        for i, line in enumerate(fh, start=1):
            s = line.strip()
            if s:
                yield i, s


def iter_json_records(path: Path, report: LoadReport) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each JSON-object line of a JSON-lines file.

    Registers the file with `report`, counts every non-blank line and reports (then skips) lines
    that are not valid JSON or not a JSON object.
    """
    name = path.name
    report.add_file(name)
    for line_no, line in iter_lines(path):  # iter_lines strips each line
        report.lines[name] += 1
        try:
            rec = json.loads(line)
        except ValueError as exc:
            report.bad(name, line_no, f"bad JSON ({exc.msg})")
            continue
        if not isinstance(rec, dict):
            report.bad(name, line_no, "not a JSON object")
            continue
        yield line_no, rec


def check_review(
    report: LoadReport,
    name: str,
    line_no: int,
    customer: str,
    product: str,
    rating: Any,
    *,
    customer_field: str,
    product_field: str,
    rating_field: str,
) -> float | None:
    """The parsed rating of a raw review row, or None (reported as malformed) when an id is
    missing or the rating is not a number in 1..5; the `*_field` names go into the messages."""
    if not customer or not product:
        report.bad(name, line_no, f"missing {customer_field}" if not customer else f"missing {product_field}")
        return None
    parsed = parse_rating(rating)
    if parsed is None:
        report.bad(name, line_no, f"{rating_field} not a number in 1..5: {rating!r}")
    return parsed


def clean_id(value: Any) -> str:
    """An id as a stripped string; "" when missing."""
    if value is None or isinstance(value, (bool, dict, list)):
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            value = int(value)
    return str(value).strip()


def parse_rating(value: Any) -> float | None:
    """A rating as float in [1, 5], or None when it is not a number in that range."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x) or x < 1.0 or x > 5.0:
        return None
    return x


def parse_timestamp(value: Any, *, milliseconds: bool | None = None) -> float:
    """Unix seconds as float (NaN if unknown).

    `milliseconds=True` divides by 1000; `None` guesses (values >= 1e11 are milliseconds).
    Non-numeric strings are tried as dates (ISO etc.).
    """
    if value is None or isinstance(value, bool):
        return math.nan
    x: float
    if isinstance(value, (int, float)):
        x = float(value)
    else:
        s = str(value).strip()
        if not s:
            return math.nan
        try:
            x = float(s)
        except ValueError:
            t = pd.to_datetime(s, errors="coerce", utc=True)
            if t is pd.NaT or pd.isna(t):
                return math.nan
            return float(t.value) / 1e9
    if not math.isfinite(x):
        return math.nan
    if milliseconds is None:
        milliseconds = abs(x) >= _MS_THRESHOLD
    return x / 1000.0 if milliseconds else x


def as_text(value: Any) -> str:
    """A text field as str ("" if none); lists are joined with spaces."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(t for t in (as_text(v) for v in value) if t)
    return str(value).strip()


class ReviewRows:
    """Column buffers for raw review rows, in source order (across files)."""

    __slots__ = ("customer_id", "product_id", "rating", "title", "text", "timestamp")

    def __init__(self) -> None:
        self.customer_id: list[str] = []
        self.product_id: list[str] = []
        self.rating: list[float] = []
        self.title: list[str] = []
        self.text: list[str] = []
        self.timestamp: list[float] = []

    def add(
        self, customer_id: str, product_id: str, rating: float, title: str, text: str, timestamp: float
    ) -> None:
        self.customer_id.append(customer_id)
        self.product_id.append(product_id)
        self.rating.append(rating)
        self.title.append(title)
        self.text.append(text)
        self.timestamp.append(timestamp)

    def __len__(self) -> int:
        return len(self.customer_id)


def build_reviews(rows: ReviewRows, report: LoadReport) -> pd.DataFrame:
    """The reviews frame: contract dtypes, one row per pair (earliest by timestamp, then order).

    `order` is the row's position among the valid rows of the source (files in read order), so it
    keeps gaps where duplicates were dropped; rows come back sorted by it.
    """
    n = len(rows)
    df = pd.DataFrame(
        {
            "customer_id": pd.Series(rows.customer_id, dtype="str"),
            "product_id": pd.Series(rows.product_id, dtype="str"),
            "rating": pd.Series(rows.rating, dtype="float32"),
            "title": pd.Series(rows.title, dtype="str"),
            "text": pd.Series(rows.text, dtype="str"),
            "timestamp": pd.Series(rows.timestamp, dtype="float64"),
            "order": pd.Series(np.arange(n, dtype=np.int64)),
        }
    )
    dup = df.duplicated(["customer_id", "product_id"], keep=False)
    if dup.any():
        earliest = df.sort_values(["timestamp", "order"], na_position="last", kind="stable")
        earliest = earliest.drop_duplicates(["customer_id", "product_id"], keep="first")
        report.duplicates_dropped += n - len(earliest)
        df = earliest.sort_values("order", kind="stable")
    return df.reset_index(drop=True)[REVIEW_COLUMNS]


def empty_products() -> pd.DataFrame:
    return build_products([])


def build_products(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The products frame from dicts with (a subset of) PRODUCT_COLUMNS; one row per product_id
    (first wins)."""
    cols: dict[str, list[Any]] = {c: [] for c in PRODUCT_COLUMNS}
    seen: set[str] = set()
    for rec in records:
        pid = rec["product_id"]
        if pid in seen:
            continue
        seen.add(pid)
        for c in PRODUCT_COLUMNS:
            v = rec.get(c)
            if c == "price":
                cols[c].append(math.nan if v is None else float(v))
            else:
                cols[c].append("" if v is None else str(v))
    frame = {c: pd.Series(cols[c], dtype="str") for c in PRODUCT_COLUMNS if c != "price"}
    frame["price"] = pd.Series(cols["price"], dtype="float64")
    return pd.DataFrame(frame)[PRODUCT_COLUMNS]


def products_from_reviews(reviews: pd.DataFrame, known: set[str] | None = None) -> list[dict[str, Any]]:
    """Bare product records for product ids in `reviews` (first-appearance order) not in `known`."""
    known = known or set()
    out = []
    for pid in pd.unique(reviews["product_id"]):
        if pid not in known:
            out.append(
                {
                    "product_id": pid,
                    "title": "",
                    "text": "",
                    "image": "",
                    "store": "",
                    "categories": "",
                    "price": math.nan,
                }
            )
    return out


def load_reviews_only(
    source: str,
    path: Path,
    files: Iterable[tuple[Path, str]],
    read: Callable[[Path, ReviewRows, LoadReport], None],
) -> Dataset:
    """A `Dataset` from review files alone (no product metadata): `read` each file into one buffer;
    products are the product ids seen, with empty title/text/image."""
    report = LoadReport()
    rows = ReviewRows()
    for f, _kind in files:
        read(f, rows, report)
    reviews = build_reviews(rows, report)
    products = build_products(products_from_reviews(reviews))
    report.warn_malformed()
    return Dataset(
        reviews=reviews, products=products, source=source, path=str(Path(path).resolve()), report=report
    )
