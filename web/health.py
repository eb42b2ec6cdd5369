"""GET /healthz (the process is up) and GET /readyz (Redis reachable and a worker answers)."""
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
@bp.doc(summary="Readiness: Redis reachable and at least one worker answers a ping",
        responses={503: "Not ready (reason given)"})
def readyz():
    timeout = get_settings().readyz_timeout_s
    try:
        get_redis().ping()
    except redis.RedisError as exc:
        return error_response(503, "not ready", ready=False,
                              reason=f"redis unreachable: {str(exc)[:200]}")
    try:
        # limit=1: answer as soon as one worker replies (else wait the whole timeout)
        replies = get_celery().control.ping(timeout=timeout, limit=1) or []
    except (OperationalError, redis.RedisError, OSError) as exc:
        return error_response(503, "not ready", ready=False, reason=f"broker error: {exc}"[:250])
    workers = sorted(name for reply in replies for name in reply)
    if not workers:
        return error_response(503, "not ready", ready=False,
                              reason=f"no Celery worker answered a ping within {timeout:g}s")
    model_version = None
    try:
        raw = get_redis().get(names.CUSTOMERS_KEY)
        model_version = json.loads(raw).get("model_version") if raw else None
    except (redis.RedisError, ValueError):
        pass
    return jsonify({"ready": True, "workers": workers, "model_version": model_version})
