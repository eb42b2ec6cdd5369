"""Asynchronous jobs: POST /jobs, POST /jobs/batch, GET /jobs/<job_id>."""
from __future__ import annotations

from apiflask import APIBlueprint
from flask import jsonify, request

from tasks import names
from web import get_settings
from web.errors import error_response
from web.schemas import BatchJobIn, JobAccepted, JobIn, JobStatus
from web.service import describe, job_store, status_url, submit

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
@bp.output(JobStatus, description="The job's state, and its result or error once finished")
@bp.doc(summary="A job's state and result", responses={404: "Unknown job id", 503: "Redis down"})
def get_job(job_id: str):
    record = job_store().get(job_id)
    if record is None:
        return error_response(404, f"unknown job id: {job_id[:80]}")
    return jsonify(describe(job_id, record))
