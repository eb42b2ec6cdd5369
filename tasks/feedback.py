"""Live feedback (queue `inference`): accept a rating, make it durable, fold it into every worker.

The path of one rating:
1. `recsys.feedback` (any worker) checks it against the live model (an unknown product is
   `not_found`), appends it to the Redis stream `names.FEEDBACK_STREAM` (the durable record: the
   embedded Redis writes it to its append-only file before answering) and to the feedback file the
   next training reads (`Settings.feedback_file`, ml.feedback.FeedbackFile).
2. Every task that serves from the model first catches up on the stream (`catch_up`, one XREAD from
   where this process left off; called by tasks.recommend.live_model), so the next recommendation on
   ANY worker reflects it, without polling or restarts.
3. A freshly loaded model replays the stream after the last entry its training read (the manifest's
   `feedback.last_id`), so nothing is counted twice or lost across a retrain or a worker restart.
The stream is capped near `Settings.feedback_stream_max` entries; the file keeps everything.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tasks import errors, names
from tasks.celery_app import app
from tasks.model_holder import Loaded, holder
from tasks.recommend import check_customer_id, check_product_id, coded, live_model

log = logging.getLogger(__name__)

READ_BATCH = 10_000
_client = None  # one Redis connection per worker process, made on first use (after the fork)
_cursor: dict[str, str] = {}  # model version -> last stream id folded into it in this process


def redis_client():
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(
            holder.settings.redis_url, socket_connect_timeout=2, socket_timeout=5, decode_responses=True
        )
    return _client


def catch_up(loaded: Loaded) -> int:
    """Fold every stream entry this process has not applied to `loaded` yet; how many it applied.
    Raises redis errors (the caller decides whether a task can go on without them)."""
    from ml.feedback import Rating

    version = loaded.version
    if version not in _cursor:
        _cursor.clear()  # one model per process: forget the one it replaced
        _cursor[version] = (loaded.model.manifest.get("feedback") or {}).get("last_id") or "0-0"
    applied = 0
    while True:
        answer = redis_client().xread({names.FEEDBACK_STREAM: _cursor[version]}, count=READ_BATCH)
        entries = answer[0][1] if answer else []
        if not entries:
            return applied
        ratings = []
        for fid, fields in entries:
            try:
                ratings.append(Rating.from_fields(fields, fid))
            except (KeyError, TypeError, ValueError):  # not written by the feedback task: skip it
                log.warning("skipping malformed feedback entry %s: %r", fid, fields)
        applied += loaded.model.add_ratings(ratings)
        _cursor[version] = entries[-1][0]


def check_text(text: Any) -> str:
    limit = names.MAX_FEEDBACK_TEXT_CHARS
    if text is None:
        return ""
    if not isinstance(text, str) or len(text) > limit:
        raise errors.invalid_input(f"text must be a string of at most {limit} characters")
    return text


@app.task(name=names.FEEDBACK)
@coded
def feedback(customer_id: str, product_id: str, rating: Any, text: str | None = None) -> dict[str, Any]:
    """Record a customer's rating of a product; the next recommendation on any worker reflects it."""
    from ml.feedback import FeedbackFile, Rating, check_rating

    customer_id, product_id = check_customer_id(customer_id), check_product_id(product_id)
    try:
        value = check_rating(rating)
    except ValueError as exc:
        raise errors.invalid_input(str(exc)) from None
    text = check_text(text)
    loaded = live_model()  # caught up on the stream already
    if not loaded.model.has_product(product_id):
        raise errors.TaskFailure(errors.NOT_FOUND, f"unknown product: {product_id[:80]!r}")
    fields = {
        "customer_id": customer_id,
        "product_id": product_id,
        "rating": repr(value),
        "text": text,
        "timestamp_ms": str(int(time.time() * 1000)),
    }
    settings = holder.settings
    feedback_id = redis_client().xadd(
        names.FEEDBACK_STREAM, fields, maxlen=settings.feedback_stream_max, approximate=True
    )
    FeedbackFile(settings.feedback_file).append([Rating.from_fields(fields, feedback_id)])
    catch_up(loaded)
    known = bool(loaded.model.has_customer(customer_id))
    log.info("feedback %s: %s rated %s %g", feedback_id, customer_id, product_id, value)
    return {
        "feedback_id": feedback_id,
        "customer_id": customer_id,
        "product_id": product_id,
        "rating": value,
        "known_customer": known,
        "model_version": loaded.version,
    }
