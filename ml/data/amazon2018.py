"""Amazon Review Data 2018 (McAuley lab), JSON lines: reviewerID, asin, overall, reviewText,
summary, unixReviewTime (seconds). Plain or gzipped; lines are stripped before parsing (one line in
the real AMAZON_FASHION_5.json has leading spaces). title = summary, text = reviewText.

No product metadata: products are the asins seen, with empty title/text/image.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .schema import (
    Dataset,
    LoadReport,
    ReviewRows,
    as_text,
    check_review,
    clean_id,
    iter_json_records,
    load_reviews_only,
    parse_timestamp,
)

SOURCE = "amazon2018"


def load(path: Path, files: Iterable[tuple[Path, str]]) -> Dataset:
    return load_reviews_only(SOURCE, path, files, read_reviews)


def read_reviews(path: Path, rows: ReviewRows, report: LoadReport) -> None:
    for line_no, rec in iter_json_records(path, report):  # lines are stripped before parsing
        customer = clean_id(rec.get("reviewerID"))
        product = clean_id(rec.get("asin"))
        rating = check_review(
            report,
            path.name,
            line_no,
            customer,
            product,
            rec.get("overall"),
            customer_field="reviewerID",
            product_field="asin",
            rating_field="overall",
        )
        if rating is None:
            continue
        rows.add(
            customer,
            product,
            rating,
            as_text(rec.get("summary")),
            as_text(rec.get("reviewText")),
            parse_timestamp(rec.get("unixReviewTime"), milliseconds=False),
        )
