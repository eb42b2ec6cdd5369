"""Model management (admin): POST /models (train), GET /models (versions), POST /models/<v>/publish.

Every route needs `Authorization: Bearer <RECSYS_ADMIN_TOKEN>` (401 without it, compared in constant
time); with no token configured the routes are off (503: the server's configuration, not the
client's fault). Training is a job on the `training` queue (progress through GET /jobs/<id>); the
list and publish are short tasks a worker answers within the synchronous wait budget, since the
registry lives where the workers are, not necessarily beside the web process.
"""

from __future__ import annotations

import hmac
import re

from apiflask import APIBlueprint
from flask import request

from tasks import names
from web import get_settings
from web.errors import error_response
from web.jobs import ACCEPTED_DOC, accepted, answer_within_wait
from web.schemas import JobAccepted, ModelIn, ModelsOut, Published
from web.service import submit

bp = APIBlueprint("models", __name__, tag="Models")

# ml.registry names versions v<UTC time>; anything else (a slash, a leading dot) names none.
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
AUTH_DOC = {
    401: "No or wrong admin token",
    503: "Model management is off (no RECSYS_ADMIN_TOKEN), or Redis down",
}


@bp.before_request
def _require_admin():
    token = get_settings().admin_token
    if not token:
        return error_response(503, "model management is off: the service has no RECSYS_ADMIN_TOKEN")
    sent = request.headers.get("Authorization", "")
    if not hmac.compare_digest(sent.encode("utf-8", "replace"), f"Bearer {token}".encode()):
        return error_response(
            401,
            "model management needs the admin token: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": 'Bearer realm="models"'},
        )
    return None


@bp.post("/models")
@bp.input(ModelIn, location="json", arg_name="body")
@bp.output(
    JobAccepted, status_code=202, description="Training queued; poll status_url (progress while it runs)"
)
@bp.doc(
    summary="Train a new model version from data under RECSYS_DATA_DIR and publish it",
    security="AdminToken",
    responses={400: "Invalid input (a data_path outside the allowed directories)", **AUTH_DOC},
)
def create_model(body):
    try:
        get_settings().training_data_path(body["data_path"])
    except ValueError as exc:
        return error_response(400, "Invalid input", {"json": {"data_path": [str(exc)]}})
    args = [body["data_path"], body.get("epochs")]
    return accepted(submit(names.TRAIN, args, "train", data_path=body["data_path"][:200]))


@bp.get("/models")
@bp.output(ModelsOut, description="Every version in the registry, newest first")
@bp.doc(
    summary="Model versions: created, data fingerprint, metrics, which one serves",
    security="AdminToken",
    responses={202: ACCEPTED_DOC, 500: "The job failed in the worker", **AUTH_DOC},
)
def list_models():
    if request.args:
        return error_response(400, "Invalid input", {"query": {k: ["Unknown field."] for k in request.args}})
    return answer_within_wait(names.MODELS, [], "models")


@bp.post("/models/<version>/publish")
@bp.output(Published, description="The version is live; workers switch on their next task")
@bp.doc(
    summary="Make a version the live one (rollback to an older one)",
    security="AdminToken",
    responses={
        202: ACCEPTED_DOC,
        400: "The version cannot be served by this code",
        404: "Unknown version",
        500: "The job failed in the worker",
        **AUTH_DOC,
    },
)
def publish_model(version: str):
    if not VERSION_RE.fullmatch(version):
        return error_response(404, f"unknown model version: {version[:80]!r}")
    return answer_within_wait(names.PUBLISH, [version], "publish", model_version=version)
