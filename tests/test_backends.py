"""Both Keras backends: what TensorFlow (this process) computes, JAX computes too.

The GPU stack runs Keras on JAX; the tests and the CPU service run TensorFlow. A Keras process
cannot switch backends, so the JAX side runs in a subprocess (`KERAS_BACKEND=jax`, `jax[cpu]`
from requirements/dev.txt; tests/jax_probe.py), started when the session begins so that its minutes of
CPU overlap the other tests; these tests run last and compare. The subprocess

(a) loads the session's small model (tests/conftest.py, trained under TensorFlow) and scores it through
    the public serving API (`Recommender.score_customers`, `predict`) AND through the raw Keras model
    (`rec.model` on `ml.features.model_inputs`), so a numpy serving path cannot hide a backend difference;
(b) trains a tiny model under JAX, saves it, loads it back and scores it; this process then loads
    that artifact under TensorFlow and scores it too;
(c) runs the text and image encoders on JAX (texts from tests/data/minilm_reference.json; product
    photos from shared/data, or generated pictures where that folder is absent).

Observed on the shared 2-core dev box (TF 2.21, JAX 0.10.2, keras 3.15.1, CPU): raw HybridModel
heads max |JAX - TF| 2.4e-7 (rating) and 9.5e-7 (pick logit), for the TF-trained and the JAX-trained
model alike; serving scores identical (0.0: serving computes in numpy from the loaded weights, which
is why the raw model is compared too); MiniLM cosine 1.0000000 (JAX vs TF) and 0.9999985 (JAX vs
sentence-transformers); EfficientNet-Lite0 cosine 1.0000000, max |diff| 5.8e-6. The thresholds
below leave margin above those.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from jax_probe import PROBE_TIMEOUT_S, REFERENCE, both, pairs_for

MAX_SCORE_DIFF = 1e-4  # ranking scores in [0, 1] and predicted ratings (1-5)
MAX_RAW_DIFF = 1e-4  # raw Keras heads: rating and pick logit
MIN_TEXT_COSINE = 0.99999
MIN_IMAGE_COSINE = 0.9999

pytestmark = [pytest.mark.slow, pytest.mark.timeout(PROBE_TIMEOUT_S + 600)]


@pytest.fixture(scope="module")
def tf_artifact(models_dir) -> Path:
    """The session's small model (tests/conftest.py), trained here under TensorFlow."""
    import keras

    from ml.registry import ModelRegistry

    assert keras.backend.backend() == "tensorflow", "run the test suite on the default backend (TensorFlow)"
    return ModelRegistry(models_dir).current_path()


@pytest.fixture(scope="module")
def tf_rec(tf_artifact):
    from ml.recommender import Recommender

    return Recommender.load(tf_artifact)


@pytest.fixture(scope="module")
def sides(request, tf_artifact, tf_rec) -> tuple[dict, dict]:
    """(TensorFlow, JAX) results: this process computes the TensorFlow side while the probe (started
    at session start by conftest.py) finishes on the session's model."""
    from ml.encoders.image import ImageEncoder
    from ml.encoders.text import TextEncoder

    probe = request.config.jax_probe
    pairs = pairs_for(tf_rec.tables.n_customers, tf_rec.n_products)
    tf = {
        **both(tf_rec, pairs),
        "pairs": pairs,
        "text": TextEncoder(precision="float32").encode(probe.start["texts"]),  # the network JAX runs
        "image": ImageEncoder(precision="float32").encode(probe.start["images"]),  # as JAX's Keras
    }
    jax = probe.finish(str(tf_artifact), pairs)
    print(f"\nJAX subprocess steps: {jax['seconds']}")
    return tf, {**jax, "start": probe.start}


@pytest.fixture(scope="module")
def tf_side(sides) -> dict:
    return sides[0]


@pytest.fixture(scope="module")
def jax_side(sides) -> dict:
    return sides[1]


def max_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


def row_cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


# ----------------------------------------------------------------------------- tests


def test_subprocess_ran_on_jax(jax_side):
    assert jax_side["backend"] == "jax"


def test_tf_trained_model_scores_the_same_under_jax(tf_side, jax_side):
    tf, jax = tf_side, jax_side["tf_model"]
    score_diff = max_diff(tf["score_customers"], jax["score_customers"])
    rating_diff = max_diff(tf["predict"], jax["predict"])
    print(
        f"\nTF-trained model, JAX vs TF: max |score| diff {score_diff:.2e} over "
        f"{np.size(tf['score_customers'])} scores, max |predicted rating| diff {rating_diff:.2e}"
    )
    assert np.ptp(tf["score_customers"]) > 1e-3  # scores differ between products: a real comparison
    assert score_diff < MAX_SCORE_DIFF and rating_diff < MAX_SCORE_DIFF


def test_raw_keras_model_agrees_across_backends(tf_side, jax_side):
    tf, jax = tf_side["raw"], jax_side["tf_model"]["raw"]
    diffs = {k: max_diff(tf[k], jax[k]) for k in ("rating", "pick")}
    print(
        f"\nraw HybridModel heads, JAX vs TF: max |diff| rating {diffs['rating']:.2e}, "
        f"pick logit {diffs['pick']:.2e}"
    )
    assert all(np.isfinite(tf[k]).all() and np.ptp(tf[k]) > 1e-3 for k in tf)
    assert max(diffs.values()) < MAX_RAW_DIFF, diffs


def test_model_trained_under_jax_saves_loads_and_scores(jax_side):
    from ml.recommender import Recommender

    jax = jax_side["jax_model"]
    pairs = jax["pairs"]
    grid = np.asarray(jax["score_customers"])
    rec = Recommender.load(jax_side["start"]["jax_artifact"])  # what JAX wrote, loaded under TensorFlow
    assert grid.shape == (len(pairs["customers"]), rec.n_products)
    assert np.isfinite(grid).all() and (grid >= 0).all() and (grid <= 1).all()
    ratings = np.asarray(jax["predict"])
    assert ratings.shape == (len(pairs["predict_u"]),) and ((ratings >= 1) & (ratings <= 5)).all()
    tf = both(rec, pairs)
    score_diff = max(max_diff(tf["score_customers"], grid), max_diff(tf["predict"], ratings))
    raw_diff = max(max_diff(tf["raw"][k], jax["raw"][k]) for k in ("rating", "pick"))
    print(
        f"\nJAX-trained model, TF vs JAX: max |score or rating| diff {score_diff:.2e}, "
        f"raw heads {raw_diff:.2e}"
    )
    assert np.ptp(grid) > 1e-3
    assert score_diff < MAX_SCORE_DIFF and raw_diff < MAX_RAW_DIFF


def test_text_encoder_agrees_across_backends(tf_side, jax_side):
    texts = jax_side["start"]["texts"]
    tf, jax = tf_side["text"], np.asarray(jax_side["text"], np.float32)
    cosine = row_cosines(tf, jax)
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    expected = np.asarray([reference["vectors"][reference["texts"].index(t)] for t in texts])
    vs_reference = row_cosines(jax, expected)
    print(
        f"\nMiniLM on {len(texts)} texts: JAX vs TF min cosine {cosine.min():.8f}, "
        f"JAX vs sentence-transformers {vs_reference.min():.8f}"
    )
    assert any(len(t) > 1000 for t in texts) and "" in texts  # truncation and the empty text are covered
    assert cosine.min() >= MIN_TEXT_COSINE
    assert vs_reference.min() >= MIN_TEXT_COSINE


def test_image_encoder_agrees_across_backends(tf_side, jax_side):
    images = jax_side["start"]["images"]
    tf, jax = tf_side["image"], np.asarray(jax_side["image"], np.float32)
    cosine = row_cosines(tf, jax)
    print(
        f"\nEfficientNet-Lite0 on {len(images)} pictures: JAX vs TF min cosine {cosine.min():.8f}, "
        f"max |diff| {max_diff(tf, jax):.2e}"
    )
    assert jax.shape == (len(images), 1280) and np.isfinite(jax).all()
    assert cosine.min() >= MIN_IMAGE_COSINE
