"""Asynchronous jobs: POST /jobs, POST /jobs/batch, GET /jobs/<job_id>[?wait=seconds]."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import Response, jsonify, request
from marshmallow import RAISE

from tasks import names
from web import get_settings
from web.errors import error_response, job_failed
from web.schemas import BatchJobIn, JobAccepted, JobIn, JobQuery, JobStatus, filters_of
from web.service import FINISHED, describe, job_store, status_url, submit, wait

bp = APIBlueprint("jobs", __name__, tag="Jobs")


# No valid body has more than 2 JSON containers (an object, and a list of ids in a batch), and a
# customer id cannot contain a bracket; a deeply nested body would overflow the JSON parser's
# recursion (RecursionError, a 500), so anything past this count of '{' / '[' is refused first.
MAX_CONTAINERS = 64


@bp.before_request
def require_json_body():
    if request.method != "POST":
        return None
    if not request.is_json:
        return error_response(400, "expected a JSON object body (Content-Type: application/json)")
    data = request.get_data(cache=True)  # over MAX_CONTENT_LENGTH: 413
    if data.count(b"[") + data.count(b"{") > MAX_CONTAINERS:
        return error_response(400, "malformed JSON body: too deeply nested for a job request")
    return None


def accepted(job_id: str) -> tuple[dict, int, dict]:
    """A view's 202 answer (serialised by its `@bp.output(JobAccepted, status_code=202)`)."""
    url = status_url(job_id)
    return {"job_id": job_id, "status_url": url}, 202, {"Location": url}


def accepted_response(job_id: str) -> Response:
    """The same 202 from a view whose `@bp.output` describes its 200 answer (documented there as
    `responses={202: ACCEPTED_DOC}`): serialised through JobAccepted here."""
    body, status, headers = accepted(job_id)
    response = jsonify(JobAccepted().dump(body))
    response.status_code = status
    response.headers.update(headers)
    return response


ACCEPTED_DOC = {
    "description": "Still running: poll status_url (also in Location)",
    "content": {"application/json": {"schema": JobAccepted}},
}


def submit_and_wait(task: str, args: list, kind: str, **meta) -> tuple[str, dict]:
    """Send the task and wait up to sync_wait_s for it: (job id, its view then)."""
    job_id = submit(task, args, kind, **meta)
    # The record was just written: no need to read it back (one Redis round trip less).
    return job_id, wait(job_id, {"kind": kind, **meta}, get_settings().sync_wait_s)


def answer_within_wait(task: str, args: list, kind: str, **meta):
    """A synchronous route's answer: send the task, wait up to sync_wait_s for it, and return
    {"job_id", **result} (serialised by the view's `@bp.output`), the failed job's error answer, or
    a 202 pointing at the job when it is still running."""
    job_id, view = submit_and_wait(task, args, kind, **meta)
    if view["state"] == "succeeded":
        return {"job_id": job_id, **view["result"]}
    if view["state"] == "failed":
        return job_failed(view)
    return accepted_response(job_id)


@bp.post("/jobs")
@bp.input(JobIn, location="json", arg_name="body")
@bp.output(JobAccepted, status_code=202, description="Job queued; poll status_url")
@bp.doc(
    summary="Queue a recommendation job (optionally filtered by category and max_price)",
    responses={400: "Invalid input", 413: "Body over 1 MiB", 503: "Redis down"},
)
def create_job(body):
    job_id = submit(
        names.RECOMMEND,
        recommend_args([body["customer_id"], body["top"]], body),
        "recommend",
        customer_id=body["customer_id"],
    )
    return accepted(job_id)


def recommend_args(args: list, request_data: dict) -> list:
    """The recommend tasks' arguments: [id(s), top], then the filters when the request has any."""
    filters = filters_of(request_data)
    return [*args, filters] if filters else args


@bp.post("/jobs/batch")
@bp.input(BatchJobIn, location="json", arg_name="body")
@bp.output(JobAccepted, status_code=202, description="Job queued; poll status_url")
@bp.doc(
    summary="Queue a batch recommendation job (the same filters for every customer)",
    responses={400: "Invalid input (or more than max_batch ids)", 413: "Body over 1 MiB", 503: "Redis down"},
)
def create_batch_job(body):
    max_batch = get_settings().max_batch
    if len(body["customer_ids"]) > max_batch:
        return error_response(
            400, "Invalid input", {"json": {"customer_ids": [f"at most {max_batch} customer ids per batch"]}}
        )
    job_id = submit(
        names.RECOMMEND_BATCH,
        recommend_args([body["customer_ids"], body["top"]], body),
        "batch",
        count=len(body["customer_ids"]),
    )
    return accepted(job_id)


@bp.get("/jobs/<job_id>")
@bp.input(JobQuery, location="query", arg_name="query", unknown=RAISE)
@bp.output(JobStatus, description="The job's state, and its result or error once finished")
@bp.doc(
    summary="A job's state and result (optionally long-polling until it has finished)",
    description="With `?wait=N` the answer comes as soon as the job has finished (the result "
    "backend's pub/sub message, no polling interval), or after N seconds with the "
    "state it is in then. N is at most RECSYS_JOB_WAIT_MAX_S (default 30).",
    responses={400: "Invalid `wait`", 404: "Unknown job id", 503: "Redis down"},
)
def get_job(job_id: str, query):
    too_long = _wait_too_long(query["wait"])
    if too_long is not None:
        return too_long
    record = job_store().get(job_id)
    if record is None:
        return error_response(404, f"unknown job id: {job_id[:80]}")
    view = describe(job_id, record)
    if query["wait"] > 0 and view["state"] not in FINISHED:
        view = wait(job_id, record, query["wait"])
    return view


def _wait_too_long(wait_s: float):
    """A 400 (same shape as the schema's errors) when `wait` is above the configured maximum."""
    max_s = get_settings().job_wait_max_s
    if wait_s <= max_s:
        return None
    return error_response(400, "Invalid input", {"query": {"wait": [f"at most {max_s:g} seconds"]}})
