"""The original synchronous API (GET /recommendation), GET /customers and a customer's rated products."""

from __future__ import annotations

import json

from apiflask import APIBlueprint
from marshmallow import RAISE

from tasks import names
from web import get_redis, get_settings
from web.errors import ServiceUnavailable, error_response, job_failed
from web.jobs import ACCEPTED_DOC, answer_within_wait, recommend_args
from web.schemas import (
    CustomersOut,
    CustomersQuery,
    RatedProducts,
    RatedQuery,
    RecommendationQuery,
    Recommendations,
)
from web.service import status_url, submit, wait

bp = APIBlueprint("recommendations", __name__, tag="Recommendations")


@bp.get("/recommendation")
@bp.input(RecommendationQuery, location="query", arg_name="query", unknown=RAISE)
@bp.output(Recommendations, description="The recommendations (the job finished in time)")
@bp.doc(
    summary="Recommendations for one customer (waits up to sync_wait_s), optionally filtered",
    responses={
        202: ACCEPTED_DOC,
        400: "Invalid input (or the worker refused it: an unknown category)",
        500: "The job failed in the worker",
        503: "Redis down, or no usable model (none published, or a broken artifact)",
    },
)
def get_recommendation(query):
    customer_id, top = query["customer_id"], query["top"]
    return answer_within_wait(
        names.RECOMMEND, recommend_args([customer_id, top], query), "recommend", customer_id=customer_id
    )


@bp.get("/customers")
@bp.input(CustomersQuery, location="query", arg_name="query", unknown=RAISE)
@bp.output(CustomersOut, description="Known customer ids (of the latest model a worker loaded)")
@bp.doc(
    summary="Known customer ids",
    responses={
        400: "Invalid input",
        500: "The job failed in the worker",
        503: "Redis down, or no worker has loaded a model yet",
    },
)
def get_customers(query):
    limit = query["limit"]
    raw = get_redis().get(names.CUSTOMERS_KEY)
    if raw is not None:
        published = json.loads(raw)
        return {
            "customers": published.get("customers", [])[:limit],
            "model_version": published.get("model_version"),
        }
    # Nothing published (Redis restarted, or no worker loaded a model yet): ask a worker.
    job_id = submit(names.CUSTOMERS, [limit], "customers")
    view = wait(job_id, {"kind": "customers"}, get_settings().sync_wait_s)
    if view["state"] == "succeeded":
        return view["result"]
    if view["state"] == "failed":
        return job_failed(view)
    raise ServiceUnavailable("no worker has loaded a model yet", job_id=job_id, status_url=status_url(job_id))


@bp.get("/customers/<customer_id>/rated")
@bp.input(RatedQuery, location="query", arg_name="query", unknown=RAISE)
@bp.output(RatedProducts, description="The customer's rated products (the job finished in time)")
@bp.doc(
    summary="The products a customer rated, with the ratings (waits up to sync_wait_s)",
    description="What the model knows of the customer: the ratings it was trained on and the "
    "feedback folded in since, the most recent first. An unknown customer has none "
    "(`known` false), as recommendations for them are cold start.",
    responses={
        202: ACCEPTED_DOC,
        400: "Invalid `limit`",
        404: "Not a valid customer id",
        500: "The job failed in the worker",
        503: "Redis down, or no usable model (none published, or a broken artifact)",
    },
)
def get_rated(customer_id: str, query):
    if not names.CUSTOMER_ID_RE.fullmatch(customer_id):  # no customer has such an id
        return error_response(404, f"no such customer: {customer_id[:80]!r}")
    return answer_within_wait(names.RATED, [customer_id, query["limit"]], "rated", customer_id=customer_id)
