"""Inference tasks (queue `inference`): thin adapters over `ml.recommender.Recommender`.

Every result is a JSON-able dict that names the `model_version` that produced it. Every failure is a
`tasks.errors.TaskFailure` with a code (`invalid_input`, `model_unavailable`, `timeout`, `internal`)
and a client-safe message; the details stay in the worker log.
"""
from __future__ import annotations

import functools
import logging
import math
import re
from pathlib import PurePath
from typing import Any, Callable

from celery.exceptions import SoftTimeLimitExceeded

from tasks import errors, names
from tasks.celery_app import app
from tasks.model_holder import Loaded, NoModelPublished, holder

log = logging.getLogger(__name__)

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
        raise errors.invalid_input(
            f"invalid customer_id: {str(customer_id)[:80]!r} (1-64 characters of A-Z a-z 0-9 _ -)")
    return customer_id


def check_top(top: Any, max_top: int) -> int:
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= max_top:
        raise errors.invalid_input(f"top must be an integer in 1..{max_top}, got {str(top)[:20]!r}")
    return top


def live_model() -> Loaded:
    """The holder's model, or a `model_unavailable` failure (no CURRENT, or an artifact that does
    not load: whatever the loader raised, a ValueError included, is a server fault)."""
    try:
        return holder.get()
    except NoModelPublished as exc:
        log.warning("%s", exc)
        raise errors.TaskFailure(errors.MODEL_UNAVAILABLE,
                                 "no model published yet; train one first "
                                 "(python -m ml train --data DIR)") from None
    except Exception:
        log.exception("the published model could not be loaded")
        raise errors.TaskFailure(errors.MODEL_UNAVAILABLE,
                                 "the published model could not be loaded "
                                 "(broken or incomplete artifact); see the worker log") from None


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
            raise errors.TaskFailure(errors.TIMEOUT,
                                     "the job ran past its time limit; try again later") from None
        except Exception:
            log.exception("task %s failed", task.__name__)
            raise errors.TaskFailure(errors.INTERNAL,
                                     "internal error in the worker; see the worker log") from None

    return run


def customer_result(model: Any, customer_id: str, items: list[dict]) -> dict[str, Any]:
    """One customer's JSON result from the recommender's items (known fields first, extras kept)."""
    items = [jsonable({k: item.get(k) for k in ITEM_FIELDS} | {k: v for k, v in item.items() if k not in ITEM_FIELDS})
             for item in items]
    cold = not bool(model.has_customer(customer_id))
    return {"customer_id": customer_id, "items": items, "cold_start": cold}


def recommend_one(model: Any, customer_id: str, top: int) -> dict[str, Any]:
    return customer_result(model, customer_id, model.recommend(customer_id, top=top, exclude_seen=True))


@app.task(name=names.RECOMMEND)
@coded
def recommend(customer_id: str, top: int = 10) -> dict[str, Any]:
    """Top-`top` products for one customer."""
    settings = holder.settings
    customer_id = check_customer_id(customer_id)
    top = check_top(top, settings.max_top)
    loaded = live_model()
    result = recommend_one(loaded.model, customer_id, top)
    return {**result, "top": top, "model_version": loaded.version}


@app.task(name=names.RECOMMEND_BATCH)
@coded
def recommend_batch(customer_ids: list[str], top: int = 10) -> dict[str, Any]:
    """Top-`top` products for each customer, all from the same model version."""
    settings = holder.settings
    if not isinstance(customer_ids, list) or not 1 <= len(customer_ids) <= settings.max_batch:
        raise errors.invalid_input(f"customer_ids must be a list of 1..{settings.max_batch} ids")
    ids = [check_customer_id(c) for c in customer_ids]
    top = check_top(top, settings.max_top)
    loaded = live_model()
    lists = loaded.model.recommend_many(ids, top=top, exclude_seen=True)  # customers scored as matrices
    results = [customer_result(loaded.model, cid, items) for cid, items in zip(ids, lists)]
    return {"results": results, "count": len(results), "top": top, "model_version": loaded.version}


@app.task(name=names.CUSTOMERS)
@coded
def customers(limit: int = 20) -> dict[str, Any]:
    """Known customer ids (the first `limit`)."""
    limit = check_top(limit, names.PUBLISHED_CUSTOMERS)
    loaded = live_model()
    ids = [str(c) for c in loaded.model.customers(limit)]
    return {"customers": ids, "model_version": loaded.version}
