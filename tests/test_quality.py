"""The issue's must-show figures, on the real data sets and on the synthetic world.

Each test runs a full `evaluate` (hybrid trained on the split + the baselines, in the same run).
Thresholds are the claims made in the README; the figures themselves are in var/reports when
run through `make bench` / `python -m ml evaluate`.
"""
from __future__ import annotations

import pytest

from ml.config import REPO_ROOT
from ml.evaluate import evaluate

pytestmark = pytest.mark.slow
SHARED = REPO_ROOT.parent / "shared" / "data"


def _evaluate(path, tmp_path, settings):
    if not path.exists():
        pytest.skip(f"{path} is not here")
    metrics = evaluate(path, tmp_path, splits=("last",), settings=settings)
    return {**metrics["models"], "hybrid_minus": metrics["hybrid_minus"]}


def test_real_2018_5core_hybrid_beats_bias_rmse(tmp_path, base_settings):
    m = _evaluate(SHARED / "amazon-fashion-2018-5core", tmp_path, base_settings)
    assert m["hybrid"]["rmse"] < m["bias"]["rmse"] - 0.05
    assert m["hybrid"]["rmse"] < m["mf"]["rmse"]


def test_real_2023_ratings_hybrid_recall_above_popularity(tmp_path, base_settings):
    m = _evaluate(SHARED / "amazon-fashion-2023-ratings-blair", tmp_path, base_settings)
    assert m["hybrid"]["recall@10"] > 1.3 * m["popularity"]["recall@10"]
    assert m["hybrid"]["ndcg@10"] > 1.3 * m["popularity"]["ndcg@10"]
    # ratings only, ~4 per customer: the margin is small (the neighbourhood residual term), so
    # the test asks for it to hold beyond test-set noise: the paired-bootstrap interval is below 0
    assert m["hybrid"]["rmse"] < m["bias"]["rmse"]
    assert m["hybrid_minus"]["bias"]["rmse"]["ci95"][1] < 0


@pytest.fixture(scope="module")
def synthetic_metrics(tmp_path_factory, base_settings):
    from ml.synthetic import generate_world

    world = tmp_path_factory.mktemp("world")
    generate_world(world, seed=0)
    return evaluate(world, tmp_path_factory.mktemp("report"), splits=("last",), settings=base_settings)


def test_synthetic_hybrid_ranks_above_popularity_and_mf(synthetic_metrics):
    m = synthetic_metrics["models"]
    assert m["hybrid"]["ndcg@10"] > m["popularity"]["ndcg@10"]
    assert m["hybrid"]["ndcg@10"] > m["mf"]["ndcg@10"]
    assert m["hybrid"]["rmse"] < m["bias"]["rmse"]


def test_synthetic_never_rated_products_ranked_by_content(synthetic_metrics):
    cold = synthetic_metrics["cold_start"]["ndcg@10"]
    assert cold["hybrid"] > cold["popularity"] + 0.05
    assert cold["hybrid"] > cold["random"] + 0.05
