"""Inference tasks (queue `inference`): thin adapters over `ml.recommender.Recommender`.

Every result is a JSON-able dict that names the `model_version` that produced it. Every failure is a
`tasks.errors.TaskFailure` with a code (`invalid_input`, `not_found`, `model_unavailable`, `timeout`,
`internal`) and a client-safe message; the details stay in the worker log.

Recommendations take optional `filters` ({"category": path prefix, "max_price": number}, applied
before the top is cut; an unknown category is `invalid_input`) and every item carries `because` (the
customer's rated products nearest to it by content, or "popular"), computed here in the worker.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from celery.exceptions import SoftTimeLimitExceeded

from tasks import errors, names
from tasks.celery_app import app
from tasks.model_holder import Loaded, NoModelPublished, holder

if TYPE_CHECKING:  # ml.catalog needs numpy: only the worker imports it, at run time (Flower and
    from ml.catalog import Filters  # the web image load this module without numpy)

log = logging.getLogger(__name__)

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
    if not isinstance(customer_id, str) or not names.CUSTOMER_ID_RE.fullmatch(customer_id):
        raise errors.invalid_input(
            f"invalid customer_id: {str(customer_id)[:80]!r} (1-64 characters of A-Z a-z 0-9 _ -)"
        )
    return customer_id


def check_top(top: Any, max_top: int) -> int:
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= max_top:
        raise errors.invalid_input(f"top must be an integer in 1..{max_top}, got {str(top)[:20]!r}")
    return top


def check_product_id(product_id: Any) -> str:
    if not isinstance(product_id, str) or not names.PRODUCT_ID_RE.fullmatch(product_id):
        raise errors.invalid_input(
            f"invalid product_id: {str(product_id)[:80]!r} (1-128 characters, no control characters)"
        )
    return product_id


def check_filters(filters: Any) -> Filters | None:
    """{"category": str, "max_price": number >= 0} (either may be absent or null) -> Filters, or
    None when there is nothing to filter; anything else is `invalid_input`."""
    if filters is None:
        return None
    if not isinstance(filters, dict) or set(filters) - {"category", "max_price"}:
        raise errors.invalid_input("filters must be an object with category and/or max_price")
    category, max_price = filters.get("category"), filters.get("max_price")
    max_chars = names.MAX_CATEGORY_CHARS
    if category is not None and (not isinstance(category, str) or not 1 <= len(category) <= max_chars):
        raise errors.invalid_input(f"category must be a string of 1..{max_chars} characters")
    if max_price is not None and (isinstance(max_price, bool) or not isinstance(max_price, (int, float))):
        raise errors.invalid_input("max_price must be a number")
    try:
        from ml.catalog import Filters

        found = Filters(category, None if max_price is None else float(max_price))
    except ValueError as exc:
        raise errors.invalid_input(str(exc)) from None
    return found or None


def live_model() -> Loaded:
    """The holder's model with the live feedback folded in, or a `model_unavailable` failure (no
    CURRENT, or an artifact that does not load: whatever the loader raised, a ValueError included,
    is a server fault)."""
    try:
        loaded = holder.get()
    except NoModelPublished as exc:
        log.warning("%s", exc)
        raise errors.TaskFailure(
            errors.MODEL_UNAVAILABLE,
            "no model published yet; train one first (python -m ml train --data DIR)",
        ) from None
    except Exception:
        log.exception("the published model could not be loaded")
        raise errors.TaskFailure(
            errors.MODEL_UNAVAILABLE,
            "the published model could not be loaded (broken or incomplete artifact); see the worker log",
        ) from None
    from tasks.feedback import catch_up  # (tasks.feedback imports this module)

    try:
        catch_up(loaded)  # live feedback from any worker, before serving (tasks/feedback.py)
    except Exception:
        log.warning("could not catch up on live feedback; serving without the newest", exc_info=True)
    return loaded


def coded(task: Callable[..., Any]) -> Callable[..., Any]:
    """Every exception leaving the task is a TaskFailure with a code the worker chose."""

    @functools.wraps(task)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except errors.TaskFailure:
            raise
        except SoftTimeLimitExceeded:
            log.warning("task %s ran past its soft time limit", task.__name__)
            raise errors.TaskFailure(
                errors.TIMEOUT, "the job ran past its time limit; try again later"
            ) from None
        except Exception:
            log.exception("task %s failed", task.__name__)
            raise errors.TaskFailure(
                errors.INTERNAL, "internal error in the worker; see the worker log"
            ) from None

    return run


def customer_result(model: Any, customer_id: str, items: list[dict]) -> dict[str, Any]:
    """One customer's JSON result from the recommender's items (known fields first, extras kept)."""
    items = [
        jsonable(
            {k: item.get(k) for k in ITEM_FIELDS} | {k: v for k, v in item.items() if k not in ITEM_FIELDS}
        )
        for item in items
    ]
    cold = not bool(model.has_customer(customer_id))
    return {"customer_id": customer_id, "items": items, "cold_start": cold}


def recommend_one(model: Any, customer_id: str, top: int, filters: Filters | None = None) -> dict[str, Any]:
    from ml.catalog import UnknownCategory

    try:
        items = model.recommend(customer_id, top=top, exclude_seen=True, filters=filters)
    except UnknownCategory as exc:
        raise errors.invalid_input(str(exc)) from None
    return customer_result(model, customer_id, items)


def _with_filters(result: dict[str, Any], filters: Filters | None) -> dict[str, Any]:
    return {**result, "filters": filters.to_dict()} if filters else result


@app.task(name=names.RECOMMEND)
@coded
def recommend(customer_id: str, top: int = 10, filters: dict | None = None) -> dict[str, Any]:
    """Top-`top` products for one customer (of those `filters` keep)."""
    settings = holder.settings
    customer_id = check_customer_id(customer_id)
    top = check_top(top, settings.max_top)
    wanted = check_filters(filters)
    loaded = live_model()
    result = recommend_one(loaded.model, customer_id, top, wanted)
    return _with_filters({**result, "top": top, "model_version": loaded.version}, wanted)


@app.task(name=names.RECOMMEND_BATCH)
@coded
def recommend_batch(customer_ids: list[str], top: int = 10, filters: dict | None = None) -> dict[str, Any]:
    """Top-`top` products for each customer (of those `filters` keep), all from the same model version."""
    settings = holder.settings
    if not isinstance(customer_ids, list) or not 1 <= len(customer_ids) <= settings.max_batch:
        raise errors.invalid_input(f"customer_ids must be a list of 1..{settings.max_batch} ids")
    ids = [check_customer_id(c) for c in customer_ids]
    top = check_top(top, settings.max_top)
    wanted = check_filters(filters)
    loaded = live_model()
    from ml.catalog import UnknownCategory

    try:  # chunks of customers, side by side (ml.recommender.Recommender.recommend_many)
        lists = loaded.model.recommend_many(ids, top=top, exclude_seen=True, filters=wanted)
    except UnknownCategory as exc:
        raise errors.invalid_input(str(exc)) from None
    results = [customer_result(loaded.model, cid, items) for cid, items in zip(ids, lists)]
    return _with_filters(
        {"results": results, "count": len(results), "top": top, "model_version": loaded.version}, wanted
    )


@app.task(name=names.SIMILAR)
@coded
def similar(product_id: str, top: int = 10) -> dict[str, Any]:
    """The `top` products nearest to `product_id` by content; an unknown product is `not_found`."""
    from ml.recommender import UnknownProduct  # the worker's model module (TensorFlow) is loaded already

    settings = holder.settings
    product_id = check_product_id(product_id)
    top = check_top(top, settings.max_top)
    loaded = live_model()
    try:
        items, title = loaded.model.similar(product_id, top), loaded.model.title(product_id)
    except UnknownProduct:
        raise errors.TaskFailure(errors.NOT_FOUND, f"unknown product: {product_id[:80]!r}") from None
    return jsonable(
        {
            "product_id": product_id,
            "title": title,
            "items": items,
            **loaded.model.similarity,
            "top": top,
            "model_version": loaded.version,
        }
    )


@app.task(name=names.RATED)
@coded
def rated(customer_id: str, limit: int = 20) -> dict[str, Any]:
    """The products `customer_id` rated (with feedback folded in), the most recent first."""
    customer_id = check_customer_id(customer_id)
    limit = check_top(limit, holder.settings.max_top)
    loaded = live_model()
    return jsonable(
        {
            "customer_id": customer_id,
            "known": bool(loaded.model.has_customer(customer_id)),
            "items": loaded.model.rated(customer_id, limit),
            "limit": limit,
            "model_version": loaded.version,
        }
    )


@app.task(name=names.CUSTOMERS)
@coded
def customers(limit: int = 20) -> dict[str, Any]:
    """Known customer ids (the first `limit`)."""
    limit = check_top(limit, names.PUBLISHED_CUSTOMERS)
    loaded = live_model()
    ids = [str(c) for c in loaded.model.customers(limit)]
    return {"customers": ids, "model_version": loaded.version}
