"""Request validation (marshmallow, via APIFlask) and response documentation."""

from __future__ import annotations

import re

from apiflask import Schema
from apiflask.fields import Boolean, Dict, Float, Integer, List, Nested, String
from apiflask.validators import Length, Range, Regexp
from marshmallow import RAISE, ValidationError

from ml.config import Settings
from tasks import names
from tasks.errors import CODES

# the one reader of RECSYS_MAX_TOP is ml.config; the worker checks the same bound
MAX_TOP = Settings.from_env().max_top
# the identifier rules are the worker's (tasks.names), checked here too so a bad id never becomes a task
CUSTOMER_ID_PATTERN = rf"^(?:{names.CUSTOMER_ID_PATTERN})\Z"
PRODUCT_ID_RE, MAX_CATEGORY_CHARS = names.PRODUCT_ID_RE, names.MAX_CATEGORY_CHARS


def customer_id_field(**kwargs):
    return String(
        validate=[
            Length(min=1, max=64),
            Regexp(CUSTOMER_ID_PATTERN, error="may only contain A-Z a-z 0-9 _ -"),
        ],
        metadata={"example": "C0001", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        **kwargs,
    )


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


class StrictNumber(Float):
    """A JSON number (integer or not): rejects booleans, strings ("10"), NaN and infinities."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError("Not a valid number.")
        return super()._deserialize(value, attr, data, **kwargs)


class QueryNumber(Float):
    """A number in a query string: decimal digits with an optional fraction ("25", "19.99")."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,6})?", value):
            raise ValidationError("Not a valid number (e.g. 25 or 19.99).")
        return float(value)


def _category_path(value: str) -> None:
    """At least one segment that is not blank, no control characters."""
    if re.search(r"[\x00-\x1f\x7f]", value) or not re.search(r"[^\s>]", value):
        raise ValidationError(
            "A category path: segments separated by '>', e.g. "
            "'Clothing, Shoes & Jewelry > Shoes'; no control characters."
        )


CATEGORY_DOC = {
    "description": "Keep products whose category path starts with this one, segment by "
    "segment ('>'-separated, case and spaces ignored); a category no "
    "product is under is a 400 (for a queued job: a failed job, code "
    "invalid_input)",
    "example": "Clothing, Shoes & Jewelry > Shoes",
}
MAX_PRICE_DOC = {
    "description": "Keep products priced at most this (a product of unknown price is never kept)",
    "example": 50,
}


def category_field():
    return String(validate=[Length(min=1, max=MAX_CATEGORY_CHARS), _category_path], metadata=CATEGORY_DOC)


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class JobIn(StrictSchema):
    customer_id = customer_id_field(required=True)
    top = StrictInteger(load_default=10, validate=Range(1, MAX_TOP))
    category = category_field()
    max_price = StrictNumber(validate=Range(min=0), metadata=MAX_PRICE_DOC)


class BatchJobIn(StrictSchema):
    customer_ids = List(customer_id_field(), required=True, validate=Length(min=1))
    top = StrictInteger(load_default=10, validate=Range(1, MAX_TOP))
    category = category_field()
    max_price = StrictNumber(validate=Range(min=0), metadata=MAX_PRICE_DOC)


class RecommendationQuery(StrictSchema):
    customer_id = customer_id_field(required=True)
    top = QueryInteger(load_default=10, validate=Range(1, MAX_TOP))
    category = category_field()
    max_price = QueryNumber(validate=Range(min=0), metadata=MAX_PRICE_DOC)


def filters_of(data: dict) -> dict:
    """The filters of a validated request ({} when none): what the recommend tasks take."""
    return {k: data[k] for k in ("category", "max_price") if data.get(k) is not None}


class SimilarQuery(StrictSchema):
    top = QueryInteger(load_default=10, validate=Range(1, MAX_TOP))


class JobQuery(StrictSchema):
    wait = QuerySeconds(
        load_default=0.0,
        metadata={
            "description": "Long-poll: answer as soon as the job has finished, or after this many "
            "seconds with its current state (at most RECSYS_JOB_WAIT_MAX_S, default 30). "
            "0 (default): answer at once.",
            "example": 10,
        },
    )


class FeedbackIn(StrictSchema):
    customer_id = customer_id_field(required=True)
    product_id = String(
        required=True,
        validate=[
            Length(min=1, max=128),
            Regexp(rf"^(?:{names.PRODUCT_ID_RE.pattern})\Z", error="1-128 characters, no control characters"),
        ],
        metadata={"description": "a product of the live model's catalog (404 otherwise)"},
    )
    rating = StrictNumber(required=True, validate=Range(1, 5), metadata={"example": 5})
    text = String(
        validate=Length(max=names.MAX_FEEDBACK_TEXT_CHARS),
        metadata={"description": "review text: kept for the next training (not embedded at serving time)"},
    )


class ModelIn(StrictSchema):
    data_path = String(
        required=True,
        validate=Length(min=1, max=1024),
        metadata={
            "description": "training data (Amazon 2023 reviews + meta JSONL, or the other formats "
            "ml.data reads): relative to RECSYS_DATA_DIR, or an absolute path inside it "
            "or inside the demo world's directory",
            "example": "amazon-fashion",
        },
    )
    epochs = StrictInteger(
        validate=Range(1, names.MAX_EPOCHS),
        metadata={
            "description": "at most this many epochs (early stopping may end sooner); default: the "
            "training default"
        },
    )


class RatedQuery(StrictSchema):
    limit = QueryInteger(load_default=20, validate=Range(1, MAX_TOP))


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


class ReasonProduct(Out):
    product_id = String(required=True)
    title = String(required=True)
    similarity = Float(
        required=True,
        metadata={"description": "cosine of the two products' content vectors (image + text embeddings)"},
    )
    rating = Float(required=True, metadata={"description": "the customer's own rating of it (1-5)"})


class Because(Out):
    method = String(
        required=True,
        metadata={
            "enum": ["content_similarity", "popular"],
            "description": "content_similarity: the customer's own rated products (rated 3 or more) "
            "nearest to the item by content; popular: a cold-start item, picked by "
            "popularity (products is empty)",
        },
    )
    products = List(
        Nested(ReasonProduct),
        required=True,
        metadata={
            "description": "up to two, most similar first; empty when none of the customer's rated "
            "products is similar at all"
        },
    )


class FiltersOut(Out):
    category = String()
    max_price = Float()


class Item(Out):
    product_id = String(required=True)
    score = Float(required=True, metadata={"description": "ranking score (higher ranks first)"})
    predicted_rating = Float(
        required=True,
        allow_none=True,
        metadata={"description": "1-5; null for cold-start (popularity) items"},
    )
    title = String(required=True)
    image_url = String(
        required=True,
        allow_none=True,
        metadata={
            "description": "http(s) URL, or /media/... for an image stored with the service; null "
            "when there is none"
        },
    )
    cold_start = Boolean(required=True)
    strategy = String(required=True, metadata={"enum": ["hybrid", "popularity"]})
    path = String(
        required=True,
        metadata={
            "enum": ["exact", "two_stage", "candidates", "popularity"],
            "description": "which scoring path served the item",
        },
    )
    because = Nested(Because, required=True, metadata={"description": "why the item is recommended"})


class CustomerResult(Out):
    customer_id = String(required=True)
    items = List(Nested(Item), required=True)
    cold_start = Boolean(required=True)


class Recommendations(CustomerResult):
    job_id = String(required=True)
    top = Integer(required=True)
    model_version = String(required=True)
    filters = Nested(FiltersOut, metadata={"description": "present when the request filtered"})


SIMILARITY_DOC = {"description": "cosine of the content vectors (1 = the same content)"}


class SimilarItem(Out):
    product_id = String(required=True)
    similarity = Float(required=True, metadata=SIMILARITY_DOC)
    title = String(required=True)
    image_url = String(required=True, allow_none=True)


class SimilarProducts(Out):
    job_id = String(required=True)
    product_id = String(required=True)
    title = String(required=True)
    method = String(
        required=True,
        metadata={
            "enum": ["content_cosine"],
            "description": "cosine similarity of the products' content vectors: the PCA-reduced image "
            "and product-text embeddings the model is given (see modalities)",
        },
    )
    modalities = List(
        String(metadata={"enum": ["image", "text"]}),
        required=True,
        metadata={"description": "which embeddings the content vectors hold"},
    )
    index = String(required=True, metadata={"description": "the index that found them (ml.retrieval)"})
    items = List(
        Nested(SimilarItem),
        required=True,
        metadata={
            "description": "most similar first; never the product itself; empty when it has no content"
        },
    )
    top = Integer(required=True)
    model_version = String(required=True)


class RatedItem(Out):
    product_id = String(required=True)
    rating = Float(required=True, metadata={"description": "the customer's rating (1-5)"})
    title = String(required=True)
    image_url = String(required=True, allow_none=True)


class RatedProducts(Out):
    job_id = String(required=True)
    customer_id = String(required=True)
    known = Boolean(
        required=True,
        metadata={"description": "whether the model knows the customer (from training or from feedback)"},
    )
    items = List(
        Nested(RatedItem),
        required=True,
        metadata={
            "description": "the most recent first (as far as the model keeps the order), then by rating; "
            "feedback folded in; empty for an unknown customer"
        },
    )
    limit = Integer(required=True)
    model_version = String(required=True)


class JobItem(Out):
    """An item of a job's result: a recommendation (kinds recommend) or a similar product (kind similar)."""

    product_id = String(required=True)
    title = String(required=True)
    image_url = String(required=True, allow_none=True)
    score = Float(metadata={"description": "recommendations"})
    predicted_rating = Float(allow_none=True, metadata={"description": "recommendations"})
    cold_start = Boolean(metadata={"description": "recommendations"})
    strategy = String(metadata={"enum": ["hybrid", "popularity"], "description": "recommendations"})
    path = String(
        metadata={
            "enum": ["exact", "two_stage", "candidates", "popularity"],
            "description": "recommendations",
        }
    )
    because = Nested(Because, metadata={"description": "recommendations"})
    similarity = Float(metadata={"description": "similar products: " + SIMILARITY_DOC["description"]})
    rating = Float(metadata={"description": "rated products: the customer's rating"})


class JobResult(Out):
    """One schema for every kind of job (no field is present in all of them)."""

    customer_id = String(metadata={"description": "kinds recommend and rated"})
    known = Boolean(metadata={"description": "kind rated"})
    limit = Integer(metadata={"description": "kind rated"})
    product_id = String(metadata={"description": "kind similar"})
    title = String(metadata={"description": "kind similar"})
    method = String(metadata={"description": "kind similar"})
    modalities = List(String(), metadata={"description": "kind similar"})
    index = String(metadata={"description": "kind similar"})
    items = List(Nested(JobItem), metadata={"description": "kinds recommend and similar"})
    cold_start = Boolean(metadata={"description": "kind recommend"})
    results = List(Nested(CustomerResult), metadata={"description": "kind batch: one per id"})
    count = Integer(metadata={"description": "kind batch"})
    customers = List(String(), metadata={"description": "kind customers"})
    models = List(Nested(lambda: ModelSummary()), metadata={"description": "kind models, newest first"})
    current = String(allow_none=True, metadata={"description": "kind models: the live version"})
    previous = String(allow_none=True, metadata={"description": "kind publish: the version it replaced"})
    published = Boolean(metadata={"description": "kind train: the new version is the live one"})
    feedback_id = String(metadata={"description": "kind feedback"})
    rating = Float(metadata={"description": "kind feedback"})
    known_customer = Boolean(metadata={"description": "kind feedback"})
    manifest = Dict(
        metadata={"description": "kind train: the new version's manifest (data, metrics, timings)"}
    )
    filters = Nested(FiltersOut, metadata={"description": "kinds recommend and batch, when filtered"})
    top = Integer(metadata={"description": "kinds recommend, batch and similar"})
    model_version = String(metadata={"description": "every kind"})


ERROR_CODES = list(CODES)


class Progress(Out):
    stage = String(
        required=True,
        metadata={
            "enum": ["embed", "fit", "finish"],
            "description": "embed: encoding photos and texts; fit: training (epoch of epochs; early "
            "stopping can end it sooner); finish: validation, ranking weight, retriever, "
            "writing the version",
        },
    )
    epoch = Integer(metadata={"description": "stage fit: epochs finished"})
    epochs = Integer(metadata={"description": "stage fit: the most it will run"})
    products = Integer(metadata={"description": "stage embed"})
    reviews = Integer(metadata={"description": "stage embed: training reviews"})


class JobStatus(Out):
    job_id = String(required=True)
    kind = String(
        required=True,
        metadata={
            "enum": [
                "recommend",
                "batch",
                "customers",
                "similar",
                "rated",
                "train",
                "models",
                "publish",
                "feedback",
            ]
        },
    )
    state = String(required=True, metadata={"enum": ["queued", "started", "succeeded", "failed"]})
    model_version = String(required=True, allow_none=True)
    progress = Nested(Progress, metadata={"description": "kind train, while it runs"})
    result = Nested(JobResult, metadata={"description": "present when state is succeeded"})
    error = String(metadata={"description": "present when state is failed"})
    error_code = String(
        metadata={
            "enum": ERROR_CODES,
            "description": "present when state is failed: invalid_input is the client's fault; "
            "model_unavailable, timeout, internal and expired are not",
        }
    )


class FeedbackAccepted(Out):
    job_id = String(required=True)
    status_url = String(required=True)
    feedback_id = String(
        metadata={
            "description": "its id in the feedback stream; present once a "
            "worker has recorded it (within the sync wait)"
        }
    )
    customer_id = String()
    product_id = String()
    rating = Float()
    known_customer = Boolean(metadata={"description": "the customer is now known to the model"})
    model_version = String()


class ModelSummary(Out):
    version = String(required=True)
    created = String(required=True, allow_none=True, metadata={"description": "UTC, ISO 8601"})
    format = Integer(required=True, allow_none=True, metadata={"description": "artifact format"})
    data = Dict(
        required=True,
        metadata={"description": "what it was trained on: path, source, fingerprint, counts, synthetic"},
    )
    metrics = Dict(required=True, metadata={"description": "validation metrics of the training run"})
    training_seconds = Float(required=True, allow_none=True)
    servable = Boolean(required=True, metadata={"description": "this code can load it"})
    problem = String(metadata={"description": "why it cannot be served (when servable is false)"})
    current = Boolean(required=True, metadata={"description": "the live version"})


class ModelsOut(Out):
    job_id = String(required=True)
    models = List(Nested(ModelSummary), required=True, metadata={"description": "newest first"})
    current = String(required=True, allow_none=True, metadata={"description": "the live version"})


class Published(Out):
    job_id = String(required=True)
    model_version = String(required=True, metadata={"description": "now the live version"})
    previous = String(required=True, allow_none=True, metadata={"description": "the one it replaced"})


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
