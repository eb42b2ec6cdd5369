"""The evaluation report: metrics.json in the documented shape, plots, the synthetic cold-start check."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ml.evaluate import MODEL_NAMES, evaluate
from ml.train import TrainConfig

pytestmark = pytest.mark.slow
METRICS = {"rmse", "mae", "recall@10", "ndcg@10"}


@pytest.fixture(scope="module")
def report(world_dir, tmp_path_factory, base_settings):
    out = tmp_path_factory.mktemp("report")
    evaluate(world_dir, out, config=TrainConfig(epochs=3, verbose=0, progress=False), settings=base_settings)
    return out


def test_metrics_json_shape(report):
    m = json.loads((report / "metrics.json").read_text())
    assert {"data", "split", "n_train", "n_test", "models"} <= set(m)
    assert isinstance(m["data"], str) and "SYNTHETIC" in m["data"]
    assert isinstance(m["n_train"], int) and isinstance(m["n_test"], int) and m["n_test"] > 0
    assert set(m["models"]) == set(MODEL_NAMES)
    for name, row in m["models"].items():
        assert set(row) == METRICS, name
        for key in ("recall@10", "ndcg@10"):
            assert 0.0 <= row[key] <= 1.0
    assert m["models"]["popularity"]["rmse"] is None and m["models"]["popularity"]["mae"] is None
    assert m["models"]["hybrid"]["rmse"] > 0
    # the hybrid against every baseline, with paired-bootstrap intervals around the difference
    assert set(m["hybrid_minus"]) == set(MODEL_NAMES) - {"hybrid"}
    vs_bias = m["hybrid_minus"]["bias"]
    assert vs_bias["rmse"]["diff"] == pytest.approx(m["models"]["hybrid"]["rmse"] - m["models"]["bias"]["rmse"])
    assert vs_bias["rmse"]["ci95"][0] <= vs_bias["rmse"]["diff"] <= vs_bias["rmse"]["ci95"][1]
    assert "rmse" not in m["hybrid_minus"]["popularity"] and "ndcg@10" in m["hybrid_minus"]["popularity"]


def test_time_split_and_plots(report):
    assert json.loads((report / "metrics_time.json").read_text())["split"].startswith("global time split")
    for name in ("metrics.png", "metrics_time.png"):
        assert (report / name).stat().st_size > 10_000


def test_cold_start_section_on_synthetic_data(report):
    cold = json.loads((report / "metrics.json").read_text())["cold_start"]
    assert cold["n_products"] > 0 and cold["n_customers"] > 0
    assert set(cold["ndcg@10"]) == {"hybrid", "random"}
    margin = cold["hybrid_minus_random"]
    assert margin["n"] == cold["n_customers"]
    assert margin["diff"] == pytest.approx(cold["ndcg@10"]["hybrid"] - cold["ndcg@10"]["random"])
    assert margin["ci95"][0] <= margin["diff"] <= margin["ci95"][1]


def test_model_trained_on_the_same_split_is_evaluated_as_is(world_dir, tmp_path, base_settings):
    from ml.train import train_model

    model = tmp_path / "m"
    train_model(world_dir, model, TrainConfig(epochs=2, verbose=0, progress=False), split="last", settings=base_settings)
    m = evaluate(world_dir, tmp_path / "r", model_dir=model, splits=("last",), settings=base_settings)
    assert m["model_version"] == "m"


def test_not_a_model_dir(world_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"):
        evaluate(world_dir, tmp_path / "r", model_dir=tmp_path)


def test_random_order_ndcg_is_the_mean_over_permutations():
    """The cold-start comparison's exact expectation agrees with averaging many random orders."""
    from ml.evaluate import _ndcg_graded, _ndcg_random

    rng = np.random.default_rng(0)
    gains = rng.integers(0, 5, size=(3, 12)).astype(float)
    sampled = np.mean([_ndcg_graded(rng.random(gains.shape), gains, 5) for _ in range(20000)], axis=0)
    np.testing.assert_allclose(_ndcg_random(gains, 5), sampled, atol=0.01)
    perfect = _ndcg_graded(gains, gains, 5)
    np.testing.assert_allclose(perfect, 1.0)
    assert (_ndcg_random(gains, 5) < perfect).all()
