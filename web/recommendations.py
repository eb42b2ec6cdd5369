"""The original synchronous API (GET /recommendation) and GET /customers."""
from __future__ import annotations

import json

from apiflask import APIBlueprint
from flask import jsonify
from marshmallow import RAISE

from tasks import names
from web import get_redis, get_settings
from web.errors import ServiceUnavailable, error_response
from web.schemas import CustomersOut, CustomersQuery, RecommendationQuery, Recommendations
from web.service import status_url, submit, wait
from web.jobs import accepted

bp = APIBlueprint("recommendations", __name__, tag="Recommendations")


def _failed(view: dict):
    if view.get("error_type") == "NoModelPublished":
        raise ServiceUnavailable("no model published yet; train one first", job_id=view["job_id"])
    if view.get("error_type") == "ValueError":
        return error_response(400, view.get("error", "invalid input"), job_id=view["job_id"])
    return error_response(500, "the recommendation job failed", job_id=view["job_id"],
                          reason=view.get("error"))


@bp.get("/recommendation")
@bp.input(RecommendationQuery, location="query", arg_name="query", unknown=RAISE)
@bp.output(Recommendations, description="The recommendations (the job finished in time)")
@bp.doc(summary="Recommendations for one customer (waits up to sync_wait_s)",
        responses={202: "Still running: poll status_url", 400: "Invalid input",
                   503: "Redis down or no model published"})
def get_recommendation(query):
    customer_id, top = query["customer_id"], query["top"]
    job_id = submit(names.RECOMMEND, [customer_id, top], "recommend", customer_id=customer_id)
    # The record was just written: no need to read it back (one Redis round trip less).
    view = wait(job_id, {"kind": "recommend", "customer_id": customer_id}, get_settings().sync_wait_s)
    if view["state"] == "succeeded":
        return jsonify({"job_id": job_id, **view["result"]})
    if view["state"] == "failed":
        return _failed(view)
    return accepted(job_id)


@bp.get("/customers")
@bp.input(CustomersQuery, location="query", arg_name="query", unknown=RAISE)
@bp.output(CustomersOut, description="Known customer ids (of the latest model a worker loaded)")
@bp.doc(summary="Known customer ids", responses={400: "Invalid input",
                                                 503: "Redis down or no model loaded yet"})
def get_customers(query):
    limit = query["limit"]
    raw = get_redis().get(names.CUSTOMERS_KEY)
    if raw is not None:
        published = json.loads(raw)
        return jsonify({"customers": published.get("customers", [])[:limit],
                        "model_version": published.get("model_version")})
    # Nothing published (Redis restarted, or no worker loaded a model yet): ask a worker.
    job_id = submit(names.CUSTOMERS, [limit], "customers")
    view = wait(job_id, {"kind": "customers"}, get_settings().sync_wait_s)
    if view["state"] == "succeeded":
        return jsonify(view["result"])
    if view["state"] == "failed":
        return _failed(view)
    raise ServiceUnavailable("no worker has loaded a model yet", job_id=job_id,
                             status_url=status_url(job_id))
