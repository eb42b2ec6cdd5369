"""GET /healthz (the process is up) and GET /readyz (Redis reachable, a worker answers, and a worker
has loaded a model: the version it published under `names.CUSTOMERS_KEY` is the one that serves)."""

from __future__ import annotations

import json

import redis
from apiflask import APIBlueprint
from flask import jsonify
from kombu.exceptions import OperationalError

from tasks import names
from web import get_celery, get_redis, get_settings
from web.errors import error_response
from web.schemas import Health, Ready

bp = APIBlueprint("health", __name__, tag="Health")


@bp.get("/healthz")
@bp.output(Health)
@bp.doc(summary="Liveness: the web process is up")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@bp.output(Ready)
@bp.doc(
    summary="Readiness: Redis reachable, a worker answers a ping and a model is loaded "
    "(its version is given)",
    responses={503: "Not ready (reason given)"},
)
def readyz():
    timeout = get_settings().readyz_timeout_s
    try:
        get_redis().ping()
    except redis.RedisError as exc:
        return error_response(503, "not ready", ready=False, reason=f"redis unreachable: {str(exc)[:200]}")
    try:
        # limit=1: answer as soon as one worker replies (else wait the whole timeout)
        replies = get_celery().control.ping(timeout=timeout, limit=1) or []
    except (OperationalError, redis.RedisError, OSError) as exc:
        return error_response(503, "not ready", ready=False, reason=f"broker error: {exc}"[:250])
    workers = sorted(name for reply in replies for name in reply)
    if not workers:
        return error_response(
            503, "not ready", ready=False, reason=f"no Celery worker answered a ping within {timeout:g}s"
        )
    try:
        raw = get_redis().get(names.CUSTOMERS_KEY)
    except redis.RedisError as exc:
        return error_response(503, "not ready", ready=False, reason=f"redis unreachable: {str(exc)[:200]}")
    try:
        published = json.loads(raw) if raw else {}
        model_version = published.get("model_version") if isinstance(published, dict) else None
    except ValueError:
        model_version = None
    if not model_version:
        # workers answer, but none has loaded a model yet (still loading, or none is published)
        return error_response(
            503,
            "not ready",
            ready=False,
            reason=f"{len(workers)} worker(s) answer, but none has loaded a model "
            "yet (loading, or none is published)",
        )
    return jsonify({"ready": True, "workers": workers, "model_version": model_version})
