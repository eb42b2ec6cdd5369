"""Inference tasks (queue `inference`): thin adapters over `ml.recommender.Recommender`.

Every result is a JSON-able dict that names the `model_version` that produced it.
"""
from __future__ import annotations

import math
import re
from pathlib import PurePath
from typing import Any

from tasks import names
from tasks.celery_app import app
from tasks.model_holder import holder

CUSTOMER_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
ITEM_FIELDS = ("product_id", "score", "predicted_rating", "title", "image", "cold_start", "strategy")


def jsonable(value: Any) -> Any:
    """numpy scalars/arrays, paths and tuples -> plain JSON types (NaN/inf -> None)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar / array
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def check_customer_id(customer_id: Any) -> str:
    if not isinstance(customer_id, str) or not CUSTOMER_ID_RE.fullmatch(customer_id):
        raise ValueError(f"invalid customer_id: {customer_id!r} (1-64 characters of A-Z a-z 0-9 _ -)")
    return customer_id


def check_top(top: Any, max_top: int) -> int:
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= max_top:
        raise ValueError(f"top must be an integer in 1..{max_top}, got {top!r}")
    return top


def customer_result(model: Any, customer_id: str, items: list[dict]) -> dict[str, Any]:
    """One customer's JSON result from the recommender's items (known fields first, extras kept)."""
    items = [jsonable({k: item.get(k) for k in ITEM_FIELDS} | {k: v for k, v in item.items() if k not in ITEM_FIELDS})
             for item in items]
    cold = not bool(model.has_customer(customer_id))
    return {"customer_id": customer_id, "items": items, "cold_start": cold}


def recommend_one(model: Any, customer_id: str, top: int) -> dict[str, Any]:
    return customer_result(model, customer_id, model.recommend(customer_id, top=top, exclude_seen=True))


@app.task(name=names.RECOMMEND)
def recommend(customer_id: str, top: int = 10) -> dict[str, Any]:
    """Top-`top` products for one customer."""
    settings = holder.settings
    customer_id = check_customer_id(customer_id)
    top = check_top(top, settings.max_top)
    loaded = holder.get()
    result = recommend_one(loaded.model, customer_id, top)
    return {**result, "top": top, "model_version": loaded.version}


@app.task(name=names.RECOMMEND_BATCH)
def recommend_batch(customer_ids: list[str], top: int = 10) -> dict[str, Any]:
    """Top-`top` products for each customer, all from the same model version."""
    settings = holder.settings
    if not isinstance(customer_ids, list) or not 1 <= len(customer_ids) <= settings.max_batch:
        raise ValueError(f"customer_ids must be a list of 1..{settings.max_batch} ids")
    ids = [check_customer_id(c) for c in customer_ids]
    top = check_top(top, settings.max_top)
    loaded = holder.get()
    lists = loaded.model.recommend_many(ids, top=top, exclude_seen=True)  # customers scored as matrices
    results = [customer_result(loaded.model, cid, items) for cid, items in zip(ids, lists)]
    return {"results": results, "count": len(results), "top": top, "model_version": loaded.version}


@app.task(name=names.CUSTOMERS)
def customers(limit: int = 20) -> dict[str, Any]:
    """Known customer ids (the first `limit`)."""
    limit = check_top(limit, names.PUBLISHED_CUSTOMERS)
    loaded = holder.get()
    ids = [str(c) for c in loaded.model.customers(limit)]
    return {"customers": ids, "model_version": loaded.version}
