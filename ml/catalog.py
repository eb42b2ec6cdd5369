"""Catalog attributes for filtering recommendations: each product's category path and price.

Precomputed once per loaded model (`Catalog`), so a request's filter is a dictionary lookup and an
array operation over the products it keeps, never a scan of product records:
- `category`: a prefix of the product's category path, compared segment by segment ("Clothing,
  Shoes & Jewelry > Shoes" keeps ".. > Shoes > Sandals", not ".. > Shoestrings"), case and
  surrounding spaces ignored; every prefix of every path maps to its sorted product positions.
- `max_price`: price <= max_price; a product whose price is unknown is never kept.

The attributes come from the artifact's products.json when it carries `categories` / `price`; an
artifact without them reads them from the meta files of the Amazon 2023 folder it was trained on
(`read_attributes`), while that folder is still there. No Flask or Celery imports.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SEP = " > "


def category_key(path: str) -> str:
    """A category path in canonical form: segments split on '>', stripped, lower case, ' > '-joined."""
    return SEP.join(s.strip().lower() for s in str(path).split(">") if s.strip())


class UnknownCategory(ValueError):
    """No product's category path starts with the requested one."""


@dataclass(frozen=True)
class Filters:
    """What a request keeps: products under `category` (a path prefix) costing at most `max_price`."""

    category: str | None = None
    max_price: float | None = None

    def __post_init__(self) -> None:
        if self.category is not None and not category_key(self.category):
            raise ValueError("category must name at least one path segment")
        if self.max_price is not None and not (math.isfinite(self.max_price) and self.max_price >= 0):
            raise ValueError("max_price must be a finite number >= 0")

    def __bool__(self) -> bool:
        return self.category is not None or self.max_price is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v for k, v in (("category", self.category), ("max_price", self.max_price)) if v is not None
        }


class Catalog:
    """Category prefixes -> sorted product positions, and prices (NaN = unknown), per position."""

    def __init__(self, categories: Sequence[str], prices: Sequence[float], source: str = "given") -> None:
        self.prices = np.asarray(prices, np.float64).reshape(-1)
        if len(categories) != len(self.prices):
            raise ValueError("one category path and one price per product")
        self.source = source
        keys = pd.Series([category_key(c) for c in categories], dtype=object)
        codes, uniques = pd.factorize(keys)
        self._codes, self._keys = codes.astype(np.int32), list(uniques)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
        by_prefix: dict[str, list[int]] = {}
        for code, key in enumerate(uniques):
            segments = key.split(SEP) if key else []
            for depth in range(1, len(segments) + 1):
                by_prefix.setdefault(SEP.join(segments[:depth]), []).append(code)
        self._members = {
            prefix: np.sort(np.concatenate([order[bounds[c] : bounds[c + 1]] for c in cs])).astype(np.int64)
            for prefix, cs in by_prefix.items()
        }

    @property
    def n_products(self) -> int:
        return len(self.prices)

    @property
    def has_categories(self) -> bool:
        return bool(self._members)

    def paths(self, positions: np.ndarray) -> list[str]:
        """The category paths (canonical form, see `category_key`) of products `positions`."""
        return [self._keys[c] for c in self._codes[np.asarray(positions, np.int64)]]

    def prefixes(self) -> dict[str, int]:
        """Every known category prefix (canonical form) and how many products it holds."""
        return {prefix: len(pos) for prefix, pos in sorted(self._members.items())}

    def allowed(self, filters: Filters | None) -> np.ndarray | None:
        """Sorted positions of the products `filters` keep (None: no filter, every product).
        Raises UnknownCategory when no product's path starts with the category."""
        if not filters:
            return None
        if filters.category is not None:
            pos = self._members.get(category_key(filters.category))
            if pos is None:
                raise UnknownCategory(
                    f"unknown category {filters.category[:80]!r}: no product's category path starts with it"
                )
            return pos if filters.max_price is None else pos[self.prices[pos] <= filters.max_price]
        return np.flatnonzero(self.prices <= filters.max_price)


def read_attributes(products: list[dict], data: dict) -> Catalog:
    """The catalog of an artifact: from its products.json records when they carry `categories` or
    `price`, else from the meta files of the Amazon 2023 folder named in its manifest's `data`
    (when still there), else empty (no categories, no prices)."""
    if any("categories" in p or "price" in p for p in products):
        return Catalog(
            [p.get("categories") or "" for p in products],
            [_price(p.get("price")) for p in products],
            "artifact",
        )
    found = _meta_attributes(data) if data.get("source") == "amazon2023" else {}
    cats = [found.get(p.get("product_id"), ("", math.nan))[0] for p in products]
    prices = [found.get(p.get("product_id"), ("", math.nan))[1] for p in products]
    return Catalog(cats, prices, "training data meta" if found else "none")


def _price(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) and x >= 0 else math.nan


def _meta_attributes(data: dict) -> dict[str, tuple[str, float]]:
    """product_id -> (category path, price) from a 2023 folder's meta files; {} when unreadable."""
    from ml.data.amazon2023 import _categories, parse_price
    from ml.data.detect import A2023_META, detect
    from ml.data.schema import LoadReport, clean_id, iter_json_records

    path = data.get("path")
    if not path or not Path(path).exists():
        return {}
    try:
        _, files = detect(path)
    except ValueError:
        return {}
    out: dict[str, tuple[str, float]] = {}
    report = LoadReport()
    for file, kind in files:
        if kind != A2023_META:
            continue
        for _, rec in iter_json_records(file, report):
            pid = clean_id(rec.get("parent_asin")) or clean_id(rec.get("asin"))
            if pid and pid not in out:
                out[pid] = (_categories(rec.get("categories")), parse_price(rec.get("price")))
    log.info("catalog attributes of %d products read from the meta files in %s", len(out), path)
    return out
