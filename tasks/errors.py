"""Error codes: how a task says *why* it failed, across the worker/web boundary.

A task never lets a bare exception escape: it raises `TaskFailure(code, message)`, where `code` is
one of `CODES` and `message` is safe to show to a client (no server paths, no tracebacks; those go
to the worker log). Celery stores an exception in the result backend as its class name, module
and `args` (JSON); `TaskFailure.args == (code, message)`, so the web reads the code back from the
args (`failure_code`) whatever class Celery rebuilds, and never matches exception class names.

The web maps a code to an HTTP status in one place (`web.errors.STATUS_FOR_CODE`).

This module imports nothing heavy: the web front end imports it.
"""

from __future__ import annotations

from typing import Any

# The client sent something the worker refuses (bad id or top that slipped past the web's checks).
INVALID_INPUT = "invalid_input"
# The request names something the live model does not hold (an unknown product id).
NOT_FOUND = "not_found"
# No model is published, or the published one cannot be loaded (broken or half-written artifact).
MODEL_UNAVAILABLE = "model_unavailable"
# The task ran past its soft time limit.
TIMEOUT = "timeout"
# Anything else that went wrong in the worker: a bug or a fault, never the client's.
INTERNAL = "internal"
# Set by the web (not a worker): the result is gone (older than result_expires_s).
EXPIRED = "expired"

CODES = (INVALID_INPUT, NOT_FOUND, MODEL_UNAVAILABLE, TIMEOUT, INTERNAL, EXPIRED)


class TaskFailure(Exception):
    """A task's failure with a code the worker chose and a message fit for a client."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


def invalid_input(message: str) -> TaskFailure:
    return TaskFailure(INVALID_INPUT, message)


def _coded(error: Any) -> tuple[str, str] | None:
    args = getattr(error, "args", None)
    if isinstance(args, (tuple, list)) and len(args) == 2 and args[0] in CODES and isinstance(args[1], str):
        return args[0], args[1]
    return None


def failure_code(error: Any) -> str:
    """The code a worker set on a failed task's result (`INTERNAL` when it set none: a crash
    outside the task body, a hard time limit, a lost worker, a revoked task)."""
    coded = _coded(error)
    return INTERNAL if coded is None else coded[0]


def failure_message(error: Any) -> str:
    """The client-safe message of a failed task (a generic one when the worker set no code: an
    uncoded exception's text may carry server details)."""
    coded = _coded(error)
    return "the job failed in the worker" if coded is None else coded[1]
