"""Every error is JSON: `{"error": message, "status": code[, "detail": ...]}` (never an HTML page).

A failed job's HTTP status comes from the code its worker set (`tasks.errors`), mapped here and
nowhere else (`STATUS_FOR_CODE`): only `invalid_input` and `not_found` are the client's.
"""

from __future__ import annotations

from typing import Any

import redis
from apiflask import APIFlask, HTTPError
from flask import jsonify
from kombu.exceptions import OperationalError
from werkzeug.exceptions import BadRequest

from tasks import errors as codes

STATUS_FOR_CODE = {
    codes.INVALID_INPUT: 400,
    codes.NOT_FOUND: 404,
    codes.MODEL_UNAVAILABLE: 503,
    codes.TIMEOUT: 503,
    codes.EXPIRED: 410,
    codes.INTERNAL: 500,
}


class ServiceUnavailable(Exception):
    """A dependency (Redis, the workers, a published model) is not available right now."""

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


def error_response(status: int, message: str, detail: Any = None, headers: Any = None, **extra: Any):
    body: dict[str, Any] = {"error": message, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    response = jsonify(body)
    response.status_code = status
    if headers:
        response.headers.update(headers)
    return response


def status_for_code(code: str | None) -> int:
    return STATUS_FOR_CODE.get(code or codes.INTERNAL, 500)


def job_failed(view: dict[str, Any]):
    """The HTTP answer for a failed job (its public view from `web.service.describe`)."""
    code = view.get("error_code") or codes.INTERNAL
    return error_response(
        status_for_code(code), view.get("error") or "the job failed", code=code, job_id=view["job_id"]
    )


def register(app: APIFlask) -> None:
    @app.error_processor
    def _http_error(error: HTTPError):
        return error_response(error.status_code, error.message or "error", error.detail, error.headers)

    @app.errorhandler(BadRequest)
    def _bad_request(exc: BadRequest):
        # webargs aborts with data={"messages": {"json": ["Invalid JSON body."]}} on malformed JSON.
        messages = (getattr(exc, "data", None) or {}).get("messages")
        if messages == {"json": ["Invalid JSON body."]}:
            return error_response(400, "malformed JSON body", messages)
        return error_response(400, exc.description or "Bad Request", messages)

    @app.errorhandler(ServiceUnavailable)
    def _unavailable(exc: ServiceUnavailable):
        return error_response(503, exc.message, **exc.extra)

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    @app.errorhandler(OperationalError)
    def _redis_down(exc: Exception):
        app.logger.warning("Redis unavailable: %s", exc)
        return error_response(503, "Redis is unreachable; try again later", reason=str(exc)[:200])

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        app.logger.exception("unhandled error")
        return error_response(500, "Internal server error")
