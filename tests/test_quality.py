"""Quality claims, each asserted only as far as its paired-bootstrap 95% interval supports it.

A bare `hybrid > baseline` flips with the machine when the two are tied (it did: 0.14614 > 0.14816
failed on another 2-core machine), so every assertion here is on an interval excluding 0, and on the
synthetic world over two training seeds. What is asserted, on the synthetic world only (it trains in about
a minute; the real-data claims, 2018 RMSE below bias and MF and the 2023 ranking claims, train for minutes
and are checked the same way, by interval, by `python -m bench quality`):
- the hybrid's NDCG@10, per customer averaged over the two training seeds, is above
  MF's (one seed alone gave intervals from [+0.006, +0.066] to [+0.025, +0.080] here: too close to 0 to
  hold on every machine), and for each seed never-rated products are ranked by content above a random
  order (popularity cannot tell them apart: on them it IS a random order; intervals [+0.07, +0.16]).
Not asserted, because the intervals call them ties: hybrid vs popularity NDCG and hybrid vs bias RMSE on
the synthetic world.
"""

from __future__ import annotations

import numpy as np
import pytest

from ml.evaluate import evaluate
from ml.metrics import paired_bootstrap
from ml.train import TrainConfig, train_model

pytestmark = pytest.mark.slow
TRAINING_SEEDS = (0, 1)


@pytest.fixture(scope="module")
def synthetic_world(tmp_path_factory):
    from demo import generate_world

    world = tmp_path_factory.mktemp("world")
    generate_world(world, seed=0)
    return world


@pytest.fixture(scope="module")
def synthetic_reports(synthetic_world, tmp_path_factory, base_settings) -> dict:
    """One evaluate per training seed: {seed: (metrics, per-unit values, artifact)}; the artifact
    (trained on the split's training part, which evaluate reuses) stays for the feedback test."""
    reports = {}
    for seed in TRAINING_SEEDS:
        out = tmp_path_factory.mktemp(f"report-seed{seed}")
        config = TrainConfig(seed=seed, verbose=0, progress=False)
        manifest = train_model(synthetic_world, out / "model", config, split="last", settings=base_settings)
        metrics = evaluate(
            synthetic_world, out, out / "model", config=config, splits=("last",), settings=base_settings
        )
        assert metrics["model_version"] == manifest["version"]  # evaluated as trained, not retrained
        with np.load(out / "metrics_units.npz") as units:
            reports[seed] = (metrics, dict(units), out / "model")
    return reports


def test_synthetic_hybrid_ranks_above_mf_over_training_seeds(synthetic_reports):
    units = [u for _, u, _ in synthetic_reports.values()]
    hybrid = np.mean([u["hybrid/ndcg@10"] for u in units], axis=0)
    mf = units[0]["mf/ndcg@10"]
    for u in units:  # MF does not depend on the hybrid's training seed: the customers line up
        np.testing.assert_array_equal(u["mf/ndcg@10"], mf)
    margin = paired_bootstrap(hybrid, mf)
    assert margin["n"] >= 300 and margin["ci95"][0] > 0, margin


@pytest.mark.parametrize("seed", TRAINING_SEEDS)
def test_synthetic_never_rated_products_ranked_above_random_order(synthetic_reports, seed):
    cold = synthetic_reports[seed][0]["cold_start"]
    assert cold["n_products"] >= 20 and cold["n_customers"] >= 300
    assert cold["hybrid_minus_random"]["ci95"][0] > 0, cold


@pytest.mark.parametrize("seed", TRAINING_SEEDS)
def test_synthetic_three_ratings_of_a_kind_move_that_kind_up(synthetic_reports, seed):
    """Live feedback (issue 15): for each leaf category, a new customer rates three of its products
    5 stars; the category's other products must rank higher for them than for the new customers who
    rated another category, for nearly every pair of categories and by many places. Ignored feedback
    leaves every new customer with the same (cold-start) ranking: no pair would differ. Measured here
    (docs/HISTORY.md, session 24), training seeds 0-9: with int8 image weights (the default) 80-90 of 90 pairs
    higher by 18-36 places of 240 (seeds 0 and 1: 90 and 90 pairs, 18.7 and 36.2 places), with
    float32 ones 87-90 by 21-36 (the heads without content affinity: 67-77 of 90, 5-14 places)."""
    from bench.feedback import category_response

    got = category_response(synthetic_reports[seed][2])["new_customers_rating_3"]
    assert got["pairs"] >= 30, got
    assert got["higher_for_them"] >= 0.9 * got["pairs"] and got["mean_places_higher"] >= 10, got
