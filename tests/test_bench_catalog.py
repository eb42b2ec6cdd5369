"""`python -m bench catalog` (bench/catalog.py), tiny: its synthetic catalog trains through the real
training code into a servable two-stage artifact (the bench once broke unseen when training began
to write category and price into products.json), its in-process measurement runs on it, and so
does `bench jobs` (bench/jobs_at_scale.py: the artifact served by a real stack, single and batch
jobs through Celery and HTTP). The 10k-1M figures are `make bench`'s, never asserted here."""

from __future__ import annotations

import json

import pytest

from bench import catalog, jobs_at_scale

pytestmark = pytest.mark.slow


def test_a_tiny_synthetic_catalog_builds_and_measures(tmp_path):
    out = tmp_path / "artifact-400"
    manifest = catalog.build_artifact(400, 60, out, epochs=1)
    assert manifest["data"]["n_customers"] == 60 and "retrieval" in manifest
    products = json.loads((out / "products.json").read_text())
    assert len(products) == 400
    assert all(p["categories"].startswith("Synthetic|") and p["price"] > 0 for p in products)
    m = catalog.measure(out, n_latency=5, n_recall=5, n_exact_latency=5, k=50, n_batch=5)
    assert m["two_stage"]["n"] == 5 and m["exact"]["n"] == 5 and 0.0 <= m["recall@10"] <= 1.0
    assert m["batch"]["customers"] == 5 and m["batch"]["batch_per_s"] > 0

    jobs = jobs_at_scale.run(out, n_customers=4)
    assert jobs["products"] == 400 and jobs["serving_path"] == "exact"  # below the two-stage threshold
    assert all(jobs[path]["n"] == 4 for path in ("in_process", "celery", "http_sync", "http_poll"))
    assert set(jobs["customers_per_s"]) == {"single_jobs", "batch_job", "in_process_many"}
    assert all(v > 0 for v in jobs["customers_per_s"].values())
