"""Amazon Reviews 2023 (McAuley lab, e.g. Amazon_Fashion): a folder of reviews + meta JSONL files.

Reviews lines: rating, title, text, images, asin, parent_asin, user_id, timestamp (ms),
helpful_vote, verified_purchase. Meta lines: main_category, title, average_rating, rating_number,
features [..], description [..], price, images [{thumb, large, variant, hi_res}], videos, store,
categories [..], details {..}, parent_asin. Plain or gzipped. product_id = parent_asin (else asin).

Product image: `images/<product_id>.(jpg|jpeg|png)` in the folder wins; else the first meta image's
`hi_res` (else `large`): an URL is kept, a relative path is resolved against the folder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .detect import A2023_META, A2023_REVIEWS
from .schema import (
    Dataset,
    LoadReport,
    ReviewRows,
    as_text,
    build_products,
    build_reviews,
    check_review,
    clean_id,
    iter_json_records,
    parse_timestamp,
    products_from_reviews,
)

SOURCE = "amazon2023"
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://|^data:")
_PRICE_RE = re.compile(r"-?\d+(?:\.\d+)?")


def load(folder: Path, files: Iterable[tuple[Path, str]]) -> Dataset:
    """Load the given top-level files (kinds from `detect`) of a 2023 folder (or a lone reviews file)."""
    folder = Path(folder).resolve()
    base = folder if folder.is_dir() else folder.parent
    files = list(files)
    report = LoadReport()
    rows = ReviewRows()
    for path, kind in files:
        if kind == A2023_REVIEWS:
            read_reviews(path, rows, report)
    reviews = build_reviews(rows, report)

    local_images = _local_images(base / "images")
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path, kind in files:
        if kind == A2023_META:
            read_meta(path, base, local_images, records, seen, report)
    extra = products_from_reviews(reviews, seen)
    for rec in extra:
        rec["image"] = local_images.get(rec["product_id"], "")
    products = build_products(records + extra)
    report.warn_malformed()
    return Dataset(reviews=reviews, products=products, source=SOURCE, path=str(folder), report=report)


def read_reviews(path: Path, rows: ReviewRows, report: LoadReport) -> None:
    for line_no, rec in iter_json_records(path, report):
        customer = clean_id(rec.get("user_id"))
        product = clean_id(rec.get("parent_asin")) or clean_id(rec.get("asin"))
        rating = check_review(
            report,
            path.name,
            line_no,
            customer,
            product,
            rec.get("rating"),
            customer_field="user_id",
            product_field="parent_asin/asin",
            rating_field="rating",
        )
        if rating is None:
            continue
        rows.add(
            customer,
            product,
            rating,
            as_text(rec.get("title")),
            as_text(rec.get("text")),
            parse_timestamp(rec.get("timestamp"), milliseconds=None),
        )


def read_meta(
    path: Path,
    base: Path,
    local_images: dict[str, str],
    out: list[dict[str, Any]],
    seen: set[str],
    report: LoadReport,
) -> None:
    for line_no, rec in iter_json_records(path, report):
        pid = clean_id(rec.get("parent_asin")) or clean_id(rec.get("asin"))
        if not pid:
            report.bad(path.name, line_no, "missing parent_asin/asin")
            continue
        if pid in seen:
            continue  # the first meta line for a product wins
        seen.add(pid)
        out.append(
            {
                "product_id": pid,
                "title": as_text(rec.get("title")),
                "text": _join_text(rec.get("features"), rec.get("description")),
                "image": local_images.get(pid) or meta_image(rec.get("images"), base),
                "store": as_text(rec.get("store")),
                "categories": _categories(rec.get("categories")),
                "price": parse_price(rec.get("price")),
            }
        )


def _local_images(images_dir: Path) -> dict[str, str]:
    """product_id -> absolute path of images/<id>.(jpg|jpeg|png) (that preference order)."""
    found: dict[str, tuple[int, str]] = {}
    if not images_dir.is_dir():
        return {}
    for f in images_dir.iterdir():
        ext = f.suffix.lower()
        if ext in IMAGE_EXTS and f.is_file():
            rank = IMAGE_EXTS.index(ext)
            if f.stem not in found or rank < found[f.stem][0]:
                found[f.stem] = (rank, str(f.resolve()))
    return {k: v for k, (_, v) in found.items()}


def meta_image(images: Any, base: Path) -> str:
    """The first image entry's hi_res (else large) as an URL or absolute path; "" if none."""
    first: Any = None
    if isinstance(images, list) and images:
        first = images[0]
    elif isinstance(images, dict):  # column-wise form {"hi_res": [..], "large": [..]}
        first = {k: v[0] for k, v in images.items() if isinstance(v, list) and v}
    elif isinstance(images, str):
        first = {"large": images}
    if isinstance(first, str):
        first = {"large": first}
    if not isinstance(first, dict):
        return ""
    for key in ("hi_res", "large"):
        value = first.get(key)
        if isinstance(value, str) and value.strip() and value.strip().lower() not in ("none", "null"):
            return resolve_image(value.strip(), base)
    return ""


def resolve_image(value: str, base: Path) -> str:
    """URLs unchanged; a file path made absolute (relative to the dataset folder)."""
    if _URL_RE.match(value):
        return value
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = base / p
    return str(p.resolve())


def parse_price(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    if isinstance(value, (int, float)):
        x = float(value)
        return x if math.isfinite(x) and x >= 0 else math.nan
    m = _PRICE_RE.search(str(value).replace(",", ""))
    if not m:
        return math.nan
    x = float(m.group())
    return x if math.isfinite(x) and x >= 0 else math.nan


def _join_text(features: Any, description: Any) -> str:
    parts = [as_text(features), as_text(description)]
    return " ".join(p for p in parts if p)


def _categories(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " > ".join(s for s in (as_text(v) for v in value) if s)
    return as_text(value)
