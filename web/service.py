"""What the blueprints share: submit a job, describe it, wait for it (all over Celery + Redis)."""

from __future__ import annotations

import functools
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from celery import states
from flask import url_for
from kombu.exceptions import OperationalError

from tasks import errors as codes
from tasks import names
from web import get_celery, get_redis, get_settings
from web.errors import ServiceUnavailable
from web.job_store import JobStore

STATE_NAMES = {
    states.PENDING: "queued",
    states.RECEIVED: "queued",
    states.STARTED: "started",
    states.RETRY: "started",
    names.PROGRESS_STATE: "started",  # a training job telling how far it is (`progress`)
    states.SUCCESS: "succeeded",
    states.FAILURE: "failed",
    states.REVOKED: "failed",
    states.REJECTED: "failed",
    states.IGNORED: "failed",
}

FINISHED = ("succeeded", "failed")
# Re-read the stored state at least this often while waiting, even without a message: a safety net
# should a state change ever be published while the subscription was not in place.
RECHECK_S = 1.0


def job_store() -> JobStore:
    return JobStore(get_redis(), get_settings().job_registry_ttl_s)


def status_url(job_id: str) -> str:
    return url_for("jobs.get_job", job_id=job_id, _external=True)


def submit(task_name: str, args: list[Any], kind: str, **meta: Any) -> str:
    """Register the job id, then send the task with that id. Redis down -> ServiceUnavailable."""
    job_id = str(uuid.uuid4())
    store = job_store()
    store.add(job_id, kind, **meta)  # before sending, so a fast poll never sees a 404
    try:
        get_celery().send_task(task_name, args=args, task_id=job_id)
    except (OperationalError, redis.RedisError, OSError) as exc:
        store.discard(job_id)
        raise ServiceUnavailable(
            "could not queue the job: the broker is unreachable", reason=str(exc)[:200]
        ) from exc
    return job_id


def stored_meta(job_id: str) -> dict[str, Any]:
    """The job's stored meta: its state and result in one read. (AsyncResult.state and .info are two
    reads: a job that finished between them paired PROGRESS with the final result.)"""
    return get_celery().backend.get_task_meta(job_id)


def published_meta(message: dict[str, Any] | None) -> dict[str, Any] | None:
    """The meta a message on a job's result channel carries, None when there is none: the Redis
    result backend publishes exactly what it stores (one SET + PUBLISH of the same payload), so
    a waiter that has it needs no read. An undecodable payload gives None (the caller reads)."""
    if not message or message.get("type") != "message":
        return None
    try:
        return get_celery().backend.decode_result(message["data"])
    except Exception:  # noqa: BLE001 - whatever the payload holds, the stored state is the answer
        return None


def describe(job_id: str, record: dict[str, Any], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The public view of a job: state, result or error, model_version; from `meta` (a published
    state) when given, else from the stored state (`stored_meta`)."""
    meta = stored_meta(job_id) if meta is None else meta
    celery_state, result = meta.get("status", states.PENDING), meta.get("result")
    state = STATE_NAMES.get(celery_state, "queued")
    out: dict[str, Any] = {
        "job_id": job_id,
        "kind": record.get("kind"),
        "state": state,
        "model_version": None,
    }
    if state == "succeeded":
        out["result"] = with_image_urls(result)
        if isinstance(result, dict):
            out["model_version"] = result.get("model_version")
    elif state == "failed":
        # The worker's code and client-safe message (tasks.errors), never the exception's class.
        out["error"] = codes.failure_message(result)
        out["error_code"] = codes.failure_code(result)
    elif celery_state == names.PROGRESS_STATE and isinstance(result, dict):
        out["progress"] = result
    elif celery_state == states.PENDING:
        age = time.time() - float(record.get("submitted_at", time.time()))
        if age > get_settings().result_expires_s:
            # Results are kept result_expires_s; the id registry lives longer.
            out.update(state="failed", error="result expired", error_code=codes.EXPIRED)
    return out


def result_channel(job_id: str) -> str:
    """The channel Celery's Redis result backend PUBLISHes every state of the job on (= its key)."""
    key = get_celery().backend.get_key_for_task(job_id)
    return key.decode() if isinstance(key, bytes) else key


def _subscribe(pubsub: redis.client.PubSub, channel: str, deadline: float) -> None:
    """SUBSCRIBE and read the confirmation, so the subscription is live on the server before the
    caller reads the stored state (a state stored after that read is then surely published to us)."""
    pubsub.subscribe(channel)
    while (remaining := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=remaining)
        if message is not None and message["type"] == "subscribe":
            return


def _latest_message(pubsub: redis.client.PubSub, timeout_s: float) -> dict[str, Any] | None:
    """The first message within `timeout_s`, or the last of those already queued behind it (a
    training job's PROGRESS states can arrive several at once): the newest state, None without one."""
    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout_s)
    while message is not None and (newer := pubsub.get_message(ignore_subscribe_messages=True)) is not None:
        message = newer
    return message


def wait(job_id: str, record: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """The job's view as soon as it is finished, or as it stands after `timeout_s`.

    No blind sleeping: the result backend publishes each state change on the job's channel, and
    this call wakes up on it. One PubSub (one connection) per call, closed in `finally`: redis-py
    PubSub objects are not thread-safe and gunicorn gthread serves requests from many threads, so
    nothing is shared (not Celery's per-app result consumer either). Redis errors propagate (503).
    """
    if timeout_s <= 0:
        return describe(job_id, record)
    deadline = time.monotonic() + timeout_s
    pubsub = get_redis().pubsub()
    try:
        _subscribe(pubsub, result_channel(job_id), deadline)
        meta = None  # first, a read after subscribing: a result stored before it is seen here
        while True:
            view = describe(job_id, record, meta)
            remaining = deadline - time.monotonic()
            if view["state"] in FINISHED or remaining <= 0:
                return view
            # the latest published state, or (no message within RECHECK_S) None: read again
            meta = published_meta(_latest_message(pubsub, min(remaining, RECHECK_S)))
    finally:
        pubsub.close()


def image_url(image: Any) -> str | None:
    """A browser-usable URL for an item's image: http(s) as is, local files under var/ via /media."""
    if not isinstance(image, str) or not image:
        return None
    if image.startswith(("http://", "https://")):
        return image
    rel = _under(image, str(get_settings().var_dir))
    return None if rel is None else url_for("ui.media", filename=rel)


@functools.lru_cache(maxsize=65_536)
def _under(image: str, var_dir: str) -> str | None:
    """`image`'s path relative to `var_dir` (symlinks resolved), or None outside it. Cached: a
    catalog's image paths are few and fixed, and resolving one costs a stat per path component
    (about 1 ms of every 10-item answer, measured)."""
    try:
        return Path(image).resolve().relative_to(var_dir).as_posix()
    except (ValueError, OSError):
        return None


def public_item(item: Any) -> Any:
    """An item as clients see it: `image_url` instead of the worker's `image` (a server path)."""
    if not isinstance(item, dict):
        return item
    public = {k: v for k, v in item.items() if k != "image"}
    public["image_url"] = image_url(item.get("image"))
    return public


def with_image_urls(result: Any) -> Any:
    """Every item of a recommend / recommend_batch result with `image_url` and without `image`."""
    if not isinstance(result, dict):
        return result
    if isinstance(result.get("items"), list):
        result = {**result, "items": [public_item(item) for item in result["items"]]}
    if isinstance(result.get("results"), list):
        result = {**result, "results": [with_image_urls(r) for r in result["results"]]}
    return result
