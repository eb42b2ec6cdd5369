"""Products: GET /products/<product_id>/similar (answered synchronously within the wait budget)."""

from __future__ import annotations

from apiflask import APIBlueprint
from marshmallow import RAISE

from tasks import names
from web.errors import error_response
from web.jobs import ACCEPTED_DOC, answer_within_wait
from web.schemas import PRODUCT_ID_RE, SimilarProducts, SimilarQuery

bp = APIBlueprint("products", __name__, tag="Products")


@bp.get("/products/<product_id>/similar")
@bp.input(SimilarQuery, location="query", arg_name="query", unknown=RAISE)
@bp.output(SimilarProducts, description="The products nearest by content (the job finished in time)")
@bp.doc(
    summary="Products similar to one product, by content (waits up to sync_wait_s)",
    description="Nearest products by cosine similarity of the content vectors the model is given "
    "(image and product-text embeddings; `modalities` says which), found by the worker "
    "through the retrieval index classes (ml.retrieval). Never the product itself.",
    responses={
        202: ACCEPTED_DOC,
        400: "Invalid `top`",
        404: "Unknown product",
        500: "The job failed in the worker",
        503: "Redis down, or no usable model (none published, or a broken artifact)",
    },
)
def get_similar(product_id: str, query):
    if not PRODUCT_ID_RE.fullmatch(product_id):  # no product has such an id
        return error_response(404, f"unknown product: {product_id[:80]!r}")
    return answer_within_wait(names.SIMILAR, [product_id, query["top"]], "similar", product_id=product_id)
