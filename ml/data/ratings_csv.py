"""Ratings CSV: header with user_id, item_id, rating[, timestamp]; other columns are ignored.

A folder of such CSVs is concatenated in file-name order. Timestamps may be unix seconds,
milliseconds (values >= 1e11) or date strings. No product metadata.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from .detect import CSV_REQUIRED
from .schema import (
    DataFormatError,
    Dataset,
    LoadReport,
    ReviewRows,
    check_review,
    clean_id,
    load_reviews_only,
    open_text,
    parse_timestamp,
)

SOURCE = "ratings_csv"


def load(path: Path, files: Iterable[tuple[Path, str]]) -> Dataset:
    return load_reviews_only(SOURCE, path, files, read_ratings)


def read_ratings(path: Path, rows: ReviewRows, report: LoadReport) -> None:
    name = path.name
    report.add_file(name)
    with open_text(path) as fh:
        reader = csv.reader(fh)
        header: list[str] | None = None
        for raw in reader:
            if not raw or all(not c.strip() for c in raw):
                continue
            if header is None:
                header = [c.strip().lower().lstrip("\ufeff") for c in raw]
                missing = [c for c in CSV_REQUIRED if c not in header]
                if missing:
                    raise DataFormatError(
                        f"{path}: ratings CSV lacks column(s) {', '.join(missing)}; header is {raw}"
                    )
                iu, ii, ir = (header.index(c) for c in CSV_REQUIRED)
                it = header.index("timestamp") if "timestamp" in header else -1
                need = max(iu, ii, ir, it) + 1
                continue
            report.lines[name] += 1
            line_no = reader.line_num
            if len(raw) < need:
                report.bad(name, line_no, f"{len(raw)} field(s), expected at least {need}")
                continue
            customer, product = clean_id(raw[iu]), clean_id(raw[ii])
            rating = check_review(
                report,
                name,
                line_no,
                customer,
                product,
                raw[ir],
                customer_field="user_id",
                product_field="item_id",
                rating_field="rating",
            )
            if rating is None:
                continue
            ts = parse_timestamp(raw[it], milliseconds=None) if it >= 0 else float("nan")
            rows.add(customer, product, rating, "", "", ts)
    if header is None:
        raise DataFormatError(f"{path}: empty ratings CSV (no header)")
