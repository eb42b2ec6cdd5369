"""Asynchronous jobs: POST /jobs, POST /jobs/batch, GET /jobs/<job_id>[?wait=seconds]."""
from __future__ import annotations

from apiflask import APIBlueprint
from flask import jsonify, request
from marshmallow import RAISE

from tasks import names
from web import get_settings
from web.errors import error_response
from web.schemas import BatchJobIn, JobAccepted, JobIn, JobQuery, JobStatus
from web.service import FINISHED, describe, job_store, status_url, submit, wait

bp = APIBlueprint("jobs", __name__, tag="Jobs")


@bp.before_request
def _require_json():
    if request.method == "POST" and not request.is_json:
        return error_response(400, "expected a JSON object body (Content-Type: application/json)")
    return None


def accepted(job_id: str):
    url = status_url(job_id)
    response = jsonify({"job_id": job_id, "status_url": url})
    response.status_code = 202
    response.headers["Location"] = url
    return response


@bp.post("/jobs")
@bp.input(JobIn, location="json", arg_name="body")
@bp.output(JobAccepted, status_code=202, description="Job queued; poll status_url")
@bp.doc(summary="Queue a recommendation job", responses={400: "Invalid input", 503: "Redis down"})
def create_job(body):
    job_id = submit(names.RECOMMEND, [body["customer_id"], body["top"]], "recommend",
                    customer_id=body["customer_id"])
    return accepted(job_id)


@bp.post("/jobs/batch")
@bp.input(BatchJobIn, location="json", arg_name="body")
@bp.output(JobAccepted, status_code=202, description="Job queued; poll status_url")
@bp.doc(summary="Queue a batch recommendation job",
        responses={400: "Invalid input (or more than max_batch ids)", 503: "Redis down"})
def create_batch_job(body):
    max_batch = get_settings().max_batch
    if len(body["customer_ids"]) > max_batch:
        return error_response(400, "Invalid input", {"json": {"customer_ids": [
            f"at most {max_batch} customer ids per batch"]}})
    job_id = submit(names.RECOMMEND_BATCH, [body["customer_ids"], body["top"]], "batch",
                    count=len(body["customer_ids"]))
    return accepted(job_id)


@bp.get("/jobs/<job_id>")
@bp.input(JobQuery, location="query", arg_name="query", unknown=RAISE)
@bp.output(JobStatus, description="The job's state, and its result or error once finished")
@bp.doc(summary="A job's state and result (optionally long-polling until it has finished)",
        description="With `?wait=N` the answer comes as soon as the job has finished (the result "
                    "backend's pub/sub message, no polling interval), or after N seconds with the "
                    "state it is in then. N is at most RECSYS_JOB_WAIT_MAX_S (default 30).",
        responses={400: "Invalid `wait`", 404: "Unknown job id", 503: "Redis down"})
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
    return jsonify(view)


def _wait_too_long(wait_s: float):
    """A 400 (same shape as the schema's errors) when `wait` is above the configured maximum."""
    max_s = get_settings().job_wait_max_s
    if wait_s <= max_s:
        return None
    return error_response(400, "Invalid input", {"query": {"wait": [
        f"at most {max_s:g} seconds"]}})
