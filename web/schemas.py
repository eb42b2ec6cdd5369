"""Request validation (marshmallow, via APIFlask) and response documentation."""
from __future__ import annotations

import re

from apiflask import Schema
from apiflask.fields import Boolean, Dict, Float, Integer, List, Nested, String
from apiflask.validators import Length, Range, Regexp
from marshmallow import RAISE, ValidationError

from ml.config import Settings
from tasks.errors import CODES

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


# ---- responses ----
# Views return plain dicts and APIFlask serialises them through these schemas (`@bp.output`), so an
# answer carries exactly the documented fields; `required=True` marks what every answer has, so the
# OpenAPI document says what is true (tests/test_hostile_input.py checks answers against it).

class Out(Schema):
    """A response schema over the dicts the views return: a field is read as a key only. (By default
    marshmallow falls back to getattr, so a result without "items" would serialise dict.items.)"""

    def get_attribute(self, obj, attr, default):
        if isinstance(obj, dict):
            return obj.get(attr, default)
        return super().get_attribute(obj, attr, default)


class JobAccepted(Out):
    job_id = String(required=True)
    status_url = String(required=True)


class Item(Out):
    product_id = String(required=True)
    score = Float(required=True, metadata={"description": "ranking score (higher ranks first)"})
    predicted_rating = Float(required=True, allow_none=True, metadata={
        "description": "1-5; null for cold-start (popularity) items"})
    title = String(required=True)
    image_url = String(required=True, allow_none=True, metadata={
        "description": "http(s) URL, or /media/... for an image stored with the service; null "
                       "when there is none"})
    cold_start = Boolean(required=True)
    strategy = String(required=True, metadata={"enum": ["hybrid", "popularity"]})
    path = String(required=True, metadata={
        "enum": ["exact", "two_stage", "candidates", "popularity"],
        "description": "which scoring path served the item"})


class CustomerResult(Out):
    customer_id = String(required=True)
    items = List(Nested(Item), required=True)
    cold_start = Boolean(required=True)


class Recommendations(CustomerResult):
    job_id = String(required=True)
    top = Integer(required=True)
    model_version = String(required=True)


class JobResult(Out):
    """One schema for the three kinds of job (no field is present in all of them)."""
    customer_id = String(metadata={"description": "kind recommend"})
    items = List(Nested(Item), metadata={"description": "kind recommend"})
    cold_start = Boolean(metadata={"description": "kind recommend"})
    results = List(Nested(CustomerResult), metadata={"description": "kind batch: one per id"})
    count = Integer(metadata={"description": "kind batch"})
    customers = List(String(), metadata={"description": "kind customers"})
    top = Integer(metadata={"description": "kinds recommend and batch"})
    model_version = String(metadata={"description": "every kind"})


ERROR_CODES = list(CODES)


class JobStatus(Out):
    job_id = String(required=True)
    kind = String(required=True, metadata={"enum": ["recommend", "batch", "customers"]})
    state = String(required=True, metadata={"enum": ["queued", "started", "succeeded", "failed"]})
    model_version = String(required=True, allow_none=True)
    result = Nested(JobResult, metadata={"description": "present when state is succeeded"})
    error = String(metadata={"description": "present when state is failed"})
    error_code = String(metadata={
        "enum": ERROR_CODES,
        "description": "present when state is failed: invalid_input is the client's fault; "
                       "model_unavailable, timeout, internal and expired are not"})


class CustomersOut(Out):
    customers = List(String(), required=True)
    model_version = String(required=True, allow_none=True)


class Health(Out):
    status = String()


class Ready(Out):
    ready = Boolean()
    reason = String()
    workers = List(String())
    model_version = String(allow_none=True)


class Error(Out):
    """Every error answer (APIFlask's HTTP_ERROR_SCHEMA and VALIDATION_ERROR_SCHEMA)."""
    error = String(required=True)
    status = Integer(required=True)
    detail = Dict(metadata={"description": "what was wrong with the input, by location and field"})
    code = String(metadata={"enum": ERROR_CODES, "description": "a failed job's error code"})
    job_id = String()
    status_url = String()
    reason = String()
    ready = Boolean()
