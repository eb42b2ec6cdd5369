"""Request validation (marshmallow, via APIFlask) and response documentation."""
from __future__ import annotations

import re

from apiflask import Schema
from apiflask.fields import Boolean, Dict, Float, Integer, List, Nested, String
from apiflask.validators import Length, Range, Regexp
from marshmallow import RAISE, ValidationError

from ml.config import Settings

MAX_TOP = Settings.max_top
CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}\Z"
CUSTOMER_ID_RE = re.compile(CUSTOMER_ID_PATTERN)


def customer_id_field(**kwargs):
    return String(validate=[Length(min=1, max=64),
                            Regexp(CUSTOMER_ID_PATTERN, error="may only contain A-Z a-z 0-9 _ -")],
                  metadata={"example": "C0001", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, **kwargs)


class StrictInteger(Integer):
    """A JSON integer: rejects booleans, floats and strings ("10")."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("Not a valid integer.")
        return super()._deserialize(value, attr, data, **kwargs)


class QueryInteger(Integer):
    """An integer in a query string: decimal digits only ("10", not "1e1", "10.0" or "true")."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,9}", value):
            raise ValidationError("Not a valid integer.")
        return int(value)


class QuerySeconds(Float):
    """A duration in a query string: decimal digits with an optional fraction ("2", "0.25"); no
    sign, exponent, "nan" or "inf". The upper bound is checked by the view against Settings."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,6})?", value):
            raise ValidationError("Not a valid number of seconds (e.g. 2 or 0.5).")
        return float(value)


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class JobIn(StrictSchema):
    customer_id = customer_id_field(required=True)
    top = StrictInteger(load_default=10, validate=Range(1, MAX_TOP))


class BatchJobIn(StrictSchema):
    customer_ids = List(customer_id_field(), required=True, validate=Length(min=1))
    top = StrictInteger(load_default=10, validate=Range(1, MAX_TOP))


class RecommendationQuery(StrictSchema):
    customer_id = customer_id_field(required=True)
    top = QueryInteger(load_default=10, validate=Range(1, MAX_TOP))


class JobQuery(StrictSchema):
    wait = QuerySeconds(load_default=0.0, metadata={
        "description": "Long-poll: answer as soon as the job has finished, or after this many "
                       "seconds with its current state (at most RECSYS_JOB_WAIT_MAX_S, default 30). "
                       "0 (default): answer at once.",
        "example": 10})


class CustomersQuery(StrictSchema):
    limit = QueryInteger(load_default=20, validate=Range(1, 1000))


# ---- responses (documentation) ----

class JobAccepted(Schema):
    job_id = String()
    status_url = String()


class Item(Schema):
    product_id = String()
    score = Float()
    predicted_rating = Float(allow_none=True, metadata={"description": "null for cold-start (popularity) items"})
    title = String()
    image = String()
    image_url = String(allow_none=True)
    cold_start = Boolean()
    strategy = String()
    path = String(metadata={"enum": ["exact", "two_stage", "candidates", "popularity"],
                            "description": "which scoring path served the item"})


class Recommendations(Schema):
    job_id = String()
    customer_id = String()
    top = Integer()
    items = List(Nested(Item))
    model_version = String()
    cold_start = Boolean()


class JobStatus(Schema):
    job_id = String()
    kind = String(metadata={"enum": ["recommend", "batch"]})
    state = String(metadata={"enum": ["queued", "started", "succeeded", "failed"]})
    result = Dict(metadata={"description": "present when state is succeeded"})
    error = String(metadata={"description": "present when state is failed"})
    model_version = String(allow_none=True)
    status_url = String()


class CustomersOut(Schema):
    customers = List(String())
    model_version = String(allow_none=True)


class Health(Schema):
    status = String()


class Ready(Schema):
    ready = Boolean()
    reason = String()
    workers = List(String())
    model_version = String(allow_none=True)


class Error(Schema):
    error = String()
    status = Integer()
    detail = Dict()
