"""The original synchronous API (GET /recommendation) and GET /customers."""
from __future__ import annotations

import json

from apiflask import APIBlueprint
from marshmallow import RAISE

from tasks import names
from web import get_redis, get_settings
from web.errors import ServiceUnavailable, job_failed
from web.schemas import CustomersOut, CustomersQuery, RecommendationQuery, Recommendations
from web.service import status_url, submit, wait
from web.jobs import ACCEPTED_DOC, answer_within_wait, recommend_args

bp = APIBlueprint("recommendations", __name__, tag="Recommendations")


@bp.get("/recommendation")
@bp.input(RecommendationQuery, location="query", arg_name="query", unknown=RAISE)
@bp.output(Recommendations, description="The recommendations (the job finished in time)")
@bp.doc(summary="Recommendations for one customer (waits up to sync_wait_s), optionally filtered",
        responses={202: ACCEPTED_DOC, 400: "Invalid input (or the worker refused it: an unknown category)",
                   500: "The job failed in the worker",
                   503: "Redis down, or no usable model (none published, or a broken artifact)"})
def get_recommendation(query):
    customer_id, top = query["customer_id"], query["top"]
    return answer_within_wait(names.RECOMMEND, recommend_args([customer_id, top], query), "recommend",
                              customer_id=customer_id)


@bp.get("/customers")
@bp.input(CustomersQuery, location="query", arg_name="query", unknown=RAISE)
@bp.output(CustomersOut, description="Known customer ids (of the latest model a worker loaded)")
@bp.doc(summary="Known customer ids", responses={
    400: "Invalid input", 500: "The job failed in the worker",
    503: "Redis down, or no worker has loaded a model yet"})
def get_customers(query):
    limit = query["limit"]
    raw = get_redis().get(names.CUSTOMERS_KEY)
    if raw is not None:
        published = json.loads(raw)
        return {"customers": published.get("customers", [])[:limit],
                "model_version": published.get("model_version")}
    # Nothing published (Redis restarted, or no worker loaded a model yet): ask a worker.
    job_id = submit(names.CUSTOMERS, [limit], "customers")
    view = wait(job_id, {"kind": "customers"}, get_settings().sync_wait_s)
    if view["state"] == "succeeded":
        return view["result"]
    if view["state"] == "failed":
        return job_failed(view)
    raise ServiceUnavailable("no worker has loaded a model yet", job_id=job_id,
                             status_url=status_url(job_id))
