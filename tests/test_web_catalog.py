"""Similar products, reasons and filters (issue 15 items 2-4) through the real app, with the
session's Redis and prefork worker behind it (tests/conftest.py): answers, their schemas and the
status of every refusal."""

from __future__ import annotations

import numpy as np
import pytest

from ml.catalog import Filters
from ml.registry import ModelRegistry

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def rec(models_dir):
    from ml.recommender import Recommender

    return Recommender.load(ModelRegistry(models_dir).current_path())


@pytest.fixture
def web(app, worker):
    return app.test_client()


def _json(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    return response.get_json()


def _a_category_missing_from_the_top(rec, cid: str, top: int, max_price: float) -> str:
    """A category prefix (in other letter case than the data) with `top` unseen products up to
    `max_price`, not holding the whole unfiltered top."""
    u = list(rec.tables.customer_ids).index(cid)
    unfiltered = {x["product_id"] for x in rec.recommend(cid, top=top)}
    for prefix in sorted(rec.catalog.prefixes(), key=rec.catalog.prefixes().get):
        allowed = rec.allowed(Filters(category=prefix, max_price=max_price))
        inside = {str(p) for p in rec.tables.product_ids[allowed]}
        if len(set(allowed) - set(rec.seen(u))) >= top and unfiltered - inside:
            return prefix.title()
    raise AssertionError("no category prefix excludes part of the top")


def test_recommendation_with_filters_and_reasons(web, rec, known_customers):
    from urllib.parse import quote

    cid = known_customers[0]
    max_price = round(float(np.nanpercentile(rec.catalog.prices, 90)), 2)
    category = _a_category_missing_from_the_top(rec, cid, 4, max_price)
    allowed = {str(p) for p in rec.tables.product_ids[rec.allowed(Filters(category, max_price))]}
    body = _json(
        web.get(
            f"/recommendation?customer_id={cid}&top=4&category={quote(category)}&max_price={max_price:.2f}"
        ),
        200,
    )
    assert body["filters"] == {"category": category, "max_price": pytest.approx(max_price, abs=0.01)}
    assert len(body["items"]) == 4 and {x["product_id"] for x in body["items"]} <= allowed
    expected = rec.recommend(cid, top=4, filters=Filters(category, max_price))
    assert [x["product_id"] for x in body["items"]] == [x["product_id"] for x in expected]
    assert [x["because"] for x in body["items"]] == [x["because"] for x in expected]
    for item in body["items"]:
        assert item["because"]["method"] == "content_similarity"
        assert all(
            set(p) == {"product_id", "title", "similarity", "rating"} for p in item["because"]["products"]
        )


def test_a_queued_job_with_filters_and_a_cold_customer(web, rec, wait_job, world_dir):
    category = "Clothing, Shoes & Jewelry > Shoes"
    accepted = _json(
        web.post("/jobs", json={"customer_id": "never-seen", "top": 3, "category": category}), 202
    )
    job = wait_job(
        lambda path: (r := web.get(path)).status_code and (r.status_code, r.get_json()), accepted["job_id"]
    )
    assert job["state"] == "succeeded" and job["result"]["filters"] == {"category": category}
    items = job["result"]["items"]
    assert [x["because"] for x in items] == [{"method": "popular", "products": []}] * 3
    allowed = set(rec.tables.product_ids[rec.allowed(Filters(category))])
    assert {x["product_id"] for x in items} <= allowed


def test_an_unknown_category_is_400_or_a_failed_job(web, wait_job, known_customers):
    body = _json(web.get(f"/recommendation?customer_id={known_customers[0]}&category=No%20Such%20Thing"), 400)
    assert body["code"] == "invalid_input" and "unknown category" in body["error"]
    accepted = _json(web.post("/jobs/batch", json={"customer_ids": ["a"], "category": "No Such Thing"}), 202)
    job = wait_job(
        lambda path: (r := web.get(path)).status_code and (r.status_code, r.get_json()), accepted["job_id"]
    )
    assert job["state"] == "failed" and job["error_code"] == "invalid_input"


def test_similar_products(web, rec):
    pid = str(rec.tables.product_ids[5])
    body = _json(web.get(f"/products/{pid}/similar?top=4"), 200)
    assert body["product_id"] == pid and body["title"] == rec.title(pid)
    assert body["method"] == "content_cosine" and body["modalities"] == ["image", "text"]
    ids = [x["product_id"] for x in body["items"]]
    assert len(ids) == 4 and pid not in ids
    sims = [x["similarity"] for x in body["items"]]
    assert sims == sorted(sims, reverse=True)
    assert ids == [x["product_id"] for x in rec.similar(pid, 4)]
    assert all(x["image_url"] and x["image_url"].startswith("/media/") for x in body["items"])
    job = _json(web.get(f"/jobs/{body['job_id']}"), 200)
    assert job["kind"] == "similar" and [x["product_id"] for x in job["result"]["items"]] == ids


def test_similar_of_an_unknown_product_is_404(web):
    body = _json(web.get("/products/NO-SUCH-PRODUCT/similar"), 404)
    assert body["code"] == "not_found" and "unknown product" in body["error"]
