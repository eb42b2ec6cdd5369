"""Live feedback: POST /feedback -> 202 once the rating is durable; recommendations reflect it at once.

A worker records the rating (tasks/feedback.py: checked against the live model's catalog, appended
to the Redis feedback stream and the feedback file) within the synchronous wait budget: the 202 then
carries its `feedback_id`, and the next recommendation for that customer, on any worker, reflects
it. If no worker answers in time the 202 still holds: the job is queued (the broker's message is as
durable as the stream) and status_url tells when it was recorded. An unknown product is a 404, a bad
rating a 400.
"""

from __future__ import annotations

from apiflask import APIBlueprint

from tasks import names
from web.errors import job_failed
from web.jobs import accepted, require_json_body, submit_and_wait
from web.schemas import FeedbackAccepted, FeedbackIn

bp = APIBlueprint("feedback", __name__, tag="Feedback")
bp.before_request(require_json_body)


@bp.post("/feedback")
@bp.input(FeedbackIn, location="json", arg_name="body")
@bp.output(FeedbackAccepted, status_code=202, description="Recorded (feedback_id), or queued to be")
@bp.doc(
    summary="A customer's rating of a product, folded into the live model without retraining",
    responses={
        400: "Invalid input",
        404: "Unknown product",
        413: "Body over 1 MiB",
        500: "The job failed in the worker",
        503: "Redis down, or no usable model (none published, or a broken artifact)",
    },
)
def post_feedback(body):
    args = [body["customer_id"], body["product_id"], body["rating"], body.get("text")]
    meta = {"customer_id": body["customer_id"], "product_id": body["product_id"][:128]}
    job_id, view = submit_and_wait(names.FEEDBACK, args, "feedback", **meta)
    if view["state"] == "failed":
        return job_failed(view)
    answer, status, headers = accepted(job_id)
    if view["state"] == "succeeded":
        answer.update(view["result"])
    return answer, status, headers
