"""Amazon Review Data 2018 (McAuley lab), JSON lines: reviewerID, asin, overall, reviewText,
summary, unixReviewTime (seconds). Plain or gzipped; lines are stripped before parsing (one line in
the real AMAZON_FASHION_5.json has leading spaces). title = summary, text = reviewText.

No product metadata: products are the asins seen, with empty title/text/image.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from .schema import (
    Dataset,
    LoadReport,
    ReviewRows,
    as_text,
    build_products,
    build_reviews,
    clean_id,
    iter_lines,
    parse_rating,
    parse_timestamp,
    products_from_reviews,
)

SOURCE = "amazon2018"


def load(path: Path, files: Iterable[tuple[Path, str]]) -> Dataset:
    report = LoadReport()
    rows = ReviewRows()
    for f, _kind in files:
        read_reviews(f, rows, report)
    reviews = build_reviews(rows, report)
    products = build_products(products_from_reviews(reviews))
    report.warn_malformed()
    return Dataset(reviews=reviews, products=products, source=SOURCE, path=str(Path(path).resolve()), report=report)


def read_reviews(path: Path, rows: ReviewRows, report: LoadReport) -> None:
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
        customer = clean_id(rec.get("reviewerID"))
        product = clean_id(rec.get("asin"))
        if not customer or not product:
            report.bad(name, line_no, "missing reviewerID" if not customer else "missing asin")
            continue
        rating = parse_rating(rec.get("overall"))
        if rating is None:
            report.bad(name, line_no, f"overall not a number in 1..5: {rec.get('overall')!r}")
            continue
        rows.add(customer, product, rating, as_text(rec.get("summary")), as_text(rec.get("reviewText")),
                 parse_timestamp(rec.get("unixReviewTime"), milliseconds=False))
