"""The evaluation report: metrics.json in the documented shape, plots, the synthetic cold-start check."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ml.data import load_dataset
from ml.evaluate import MODEL_NAMES, evaluate
from ml.split import split_reviews
from ml.train import TrainConfig, train_model

pytestmark = pytest.mark.slow
METRICS = {"rmse", "mae", "recall@10", "ndcg@10"}


@pytest.fixture(scope="module")
def report(world_dir, tmp_path_factory, base_settings):
    out = tmp_path_factory.mktemp("report")
    evaluate(world_dir, out, config=TrainConfig(epochs=3, verbose=0, progress=False), settings=base_settings)
    return out


def test_metrics_json_shape(report, world_dir):
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
    # the global-mean baseline, computed here by hand: the mean training rating for every test rating
    train, test = split_reviews(load_dataset(world_dir).reviews, "last")
    error = test["rating"].to_numpy(float) - train["rating"].to_numpy(float).mean()
    assert m["models"]["global_mean"]["rmse"] == pytest.approx(float(np.sqrt(np.mean(error**2))), rel=1e-9)
    assert m["models"]["global_mean"]["mae"] == pytest.approx(float(np.mean(np.abs(error))), rel=1e-9)
    assert m["n_train"] == len(train) and m["n_test"] == len(test)
    # the hybrid against every baseline, with paired-bootstrap intervals around the difference
    assert set(m["hybrid_minus"]) == set(MODEL_NAMES) - {"hybrid"}
    vs_bias = m["hybrid_minus"]["bias"]
    assert vs_bias["rmse"]["diff"] == pytest.approx(
        m["models"]["hybrid"]["rmse"] - m["models"]["bias"]["rmse"]
    )
    assert vs_bias["rmse"]["ci95"][0] <= vs_bias["rmse"]["diff"] <= vs_bias["rmse"]["ci95"][1]
    assert "rmse" not in m["hybrid_minus"]["popularity"] and "ndcg@10" in m["hybrid_minus"]["popularity"]
    # ranking-only baselines: their hyper-parameter comes from the grid, chosen on validation NDCG
    for name in ("ease", "item_knn", "content_knn"):
        assert m["models"][name]["rmse"] is None and "rmse" not in m["hybrid_minus"][name]
        margin = m["hybrid_minus"][name]["ndcg@10"]
        assert margin["diff"] == pytest.approx(
            m["models"]["hybrid"]["ndcg@10"] - m["models"][name]["ndcg@10"]
        )
    for name, key in (("ease", "lambda"), ("item_knn", "shrink")):
        chosen = m["baselines"][name]
        assert chosen["validation_ndcg@10"][str(chosen[key])] == max(chosen["validation_ndcg@10"].values())


def test_time_split_and_plots(report):
    assert json.loads((report / "metrics_time.json").read_text())["split"].startswith("global time split")
    for name in ("metrics.png", "metrics_time.png"):
        assert (report / name).stat().st_size > 10_000


def test_cold_start_section_on_synthetic_data(report):
    cold = json.loads((report / "metrics.json").read_text())["cold_start"]
    assert cold["n_products"] > 0 and cold["n_customers"] > 0
    assert set(cold["ndcg@10"]) == {"hybrid", "random", "content_knn"}
    for other in ("random", "content_knn"):
        margin = cold[f"hybrid_minus_{other}"]
        assert margin["n"] == cold["n_customers"]
        assert margin["diff"] == pytest.approx(cold["ndcg@10"]["hybrid"] - cold["ndcg@10"][other])
        assert margin["ci95"][0] <= margin["diff"] <= margin["ci95"][1]


@pytest.fixture(scope="module")
def split_model(world_dir, tmp_path_factory, base_settings):
    """A model trained on the world's 'last' split, in a directory named m (its version)."""
    model = tmp_path_factory.mktemp("split-model") / "m"
    train_model(
        world_dir,
        model,
        TrainConfig(epochs=2, verbose=0, progress=False),
        split="last",
        settings=base_settings,
    )
    return model


def test_model_trained_on_the_same_split_is_evaluated_as_is(world_dir, split_model, tmp_path, base_settings):
    from ml.recommender import Recommender

    m = evaluate(world_dir, tmp_path / "r", model_dir=split_model, splits=("last",), settings=base_settings)
    assert m["model_version"] == "m"
    # its RMSE and MAE, by hand from the model's own predictions on the held-out ratings
    rec = Recommender.load(split_model)
    _, test = split_reviews(load_dataset(world_dir).reviews, "last")
    u = pd.Index(rec.tables.customer_ids).get_indexer(test["customer_id"].astype(str))
    i = pd.Index(rec.tables.product_ids).get_indexer(test["product_id"].astype(str))
    error = rec.predict(u, i).astype(float) - test["rating"].to_numpy(float)
    assert m["models"]["hybrid"]["rmse"] == pytest.approx(float(np.sqrt(np.mean(error**2))), rel=1e-6)
    assert m["models"]["hybrid"]["mae"] == pytest.approx(float(np.mean(np.abs(error))), rel=1e-6)


def test_model_trained_on_other_data_is_retrained(world_dir, split_model, tmp_path, base_settings):
    """Other ratings (another fingerprint): the model may have seen test ratings, so it is retrained."""
    other = load_dataset(world_dir)
    first = other.reviews.index[0]
    other.reviews.loc[first, "rating"] = 1.0 if other.reviews.loc[first, "rating"] != 1.0 else 5.0
    assert (
        other.fingerprint() != json.loads((split_model / "manifest.json").read_text())["data"]["fingerprint"]
    )
    m = evaluate(other, tmp_path / "r", model_dir=split_model, splits=("last",), settings=base_settings)
    assert m["model_version"] != "m"
    assert m["n_train"] + m["n_test"] == len(other.reviews)


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
