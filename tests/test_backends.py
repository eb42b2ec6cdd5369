"""Both Keras backends: what TensorFlow (this process) computes, JAX computes too.

The GPU stack runs Keras on JAX; the tests and the CPU service run TensorFlow. A Keras process
cannot switch backends, so the JAX side runs in a subprocess (`KERAS_BACKEND=jax`, `jax[cpu]`
from requirements/dev.txt): this file run as `python -m tests.test_backends REQUEST.json`, while this
process computes the same things under TensorFlow. It

(a) loads the session's small model (tests/conftest.py, trained under TensorFlow) and scores it through the public serving API
    (`Recommender.score_customers`, `predict`) AND through the raw Keras model (`rec.model` on
    `ml.features.model_inputs`), so a numpy serving path cannot hide a backend difference;
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

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).resolve().parent / "data" / "minilm_reference.json"
PHOTOS = REPO_ROOT.parent / "shared" / "data" / "fashion-product-images-small-subset" / "images"
N_TEXTS, N_IMAGES, N_CUSTOMERS, N_PAIRS = 8, 4, 6, 64
# Generous limits against hangs only (no timing is asserted): on the shared 2-core box under load
# the subprocess took 9 minutes of wall time for 2.6 minutes of CPU.
PROBE_TIMEOUT_S = 1200

MAX_SCORE_DIFF = 1e-4       # ranking scores in [0, 1] and predicted ratings (1-5)
MAX_RAW_DIFF = 1e-4         # raw Keras heads: rating and pick logit
MIN_TEXT_COSINE = 0.99999
MIN_IMAGE_COSINE = 0.9999

# Training under JAX: one epoch, without the image and text encoders (those are compared on their own
# below; loading them twice would double the subprocess time).
JAX_TRAINING = {"epochs": 1, "use_images": False, "use_text": False, "verbose": 0, "progress": False}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(PROBE_TIMEOUT_S + 600)]


# ----------------------------------------------------------------------------- the JAX side


def scores(rec, customers: list[int], pair_u: list[int], pair_i: list[int]) -> dict:
    """Public-API scores of `rec`: ranking scores per customer and predicted ratings per pair."""
    return {
        "score_customers": rec.score_customers(np.asarray(customers)).tolist(),
        "predict": rec.predict(np.asarray(pair_u), np.asarray(pair_i)).tolist(),
    }


def raw_heads(rec, pair_u: list[int], pair_i: list[int]) -> dict:
    """The Keras model itself on the training input dict: rating and pick logit per pair."""
    from keras import ops

    from ml.features import model_inputs

    out = rec.model(model_inputs(rec.tables, np.asarray(pair_u), np.asarray(pair_i)), training=False)
    return {k: np.asarray(ops.convert_to_numpy(out[k])).reshape(-1).tolist() for k in ("rating", "interact")}


def probe(request: dict) -> dict:
    """Everything the JAX side computes for the test (runs under KERAS_BACKEND=jax)."""
    import keras

    from ml.encoders.image import ImageEncoder
    from ml.encoders.text import TextEncoder
    from ml.recommender import Recommender
    from ml.train import TrainConfig, train_model

    def both(rec) -> dict:
        return {**scores(rec, request["customers"], request["predict_u"], request["predict_i"]),
                "raw": raw_heads(rec, request["pair_u"], request["pair_i"])}

    result = {"backend": keras.backend.backend(), "seconds": {}}
    with timed(result["seconds"], "tf_model"):
        result["tf_model"] = both(Recommender.load(request["artifact"]))
    with timed(result["seconds"], "train"):
        train_model(request["world"], request["jax_artifact"], TrainConfig(**JAX_TRAINING))
    with timed(result["seconds"], "jax_model"):
        result["jax_model"] = both(Recommender.load(request["jax_artifact"]))
    with timed(result["seconds"], "text"):
        result["text"] = TextEncoder().encode(request["texts"]).tolist()
    with timed(result["seconds"], "image"):
        result["image"] = ImageEncoder().encode(request["images"]).tolist()
    return result


@contextlib.contextmanager
def timed(record: dict, step: str):
    """Wall and CPU seconds of a step, kept in `record` and logged (the log shows where a slow run is)."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    record[step] = {"wall": round(time.perf_counter() - wall, 1), "cpu": round(time.process_time() - cpu, 1)}
    print(f"jax probe: {step}: {record[step]}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
    """`python -m tests.test_backends REQUEST.json`: run `probe`, write the JSON result it names."""
    (request_path,) = argv
    request = json.loads(Path(request_path).read_text())
    Path(request["result"]).write_text(json.dumps(probe(request)))


# ----------------------------------------------------------------------------- fixtures (TF side)


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


def sample_images(out_dir: Path) -> list[str]:
    """A few real product photos, or generated pictures (stripes and a disc) where there are none."""
    photos = sorted(PHOTOS.glob("*.jpg"))[:N_IMAGES] if PHOTOS.is_dir() else []
    if len(photos) == N_IMAGES:
        return [str(p) for p in photos]
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    paths = []
    for k in range(N_IMAGES):
        img = Image.new("RGB", (160 + 20 * k, 200), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for x in range(0, img.width, 12 + 4 * k):
            draw.rectangle([x, 0, x + 5, img.height], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw.ellipse([30, 40, 130, 140], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        path = out_dir / f"generated-{k}.png"
        img.save(path)
        paths.append(str(path))
    return paths


def sample_texts() -> list[str]:
    """N_TEXTS reference texts spread over the length range: the empty one and the longest included."""
    texts = sorted(json.loads(REFERENCE.read_text(encoding="utf-8"))["texts"], key=len)
    step = max(1, len(texts) // (N_TEXTS - 1))
    return texts[::step][: N_TEXTS - 1] + [texts[-1]]


@pytest.fixture(scope="module")
def request_doc(world_dir, tf_artifact, tf_rec, tmp_path_factory) -> dict:
    """What both backends compute: customers, pairs (predict with unknown ids too), texts, pictures."""
    tmp = tmp_path_factory.mktemp("backends")
    rng = np.random.default_rng(7)
    pair_u = rng.integers(0, tf_rec.tables.n_customers, N_PAIRS).tolist()
    pair_i = rng.integers(0, tf_rec.n_products, N_PAIRS).tolist()
    return {
        "artifact": str(tf_artifact),
        "jax_artifact": str(tmp / "jax-model"),
        "world": str(world_dir),
        "customers": list(range(min(N_CUSTOMERS, tf_rec.tables.n_customers))),
        "pair_u": pair_u,
        "pair_i": pair_i,
        "predict_u": pair_u + [0, -1],  # an unknown product and an unknown customer
        "predict_i": pair_i + [-1, 0],
        "texts": sample_texts(),
        "images": sample_images(tmp),
        "result": str(tmp / "result.json"),
    }


def tf_compute(rec, request: dict) -> dict:
    """The TensorFlow side of what `probe` computes for the TF-trained model and the encoders."""
    from ml.encoders.image import ImageEncoder
    from ml.encoders.text import TextEncoder

    return {
        **scores(rec, request["customers"], request["predict_u"], request["predict_i"]),
        "raw": raw_heads(rec, request["pair_u"], request["pair_i"]),
        "text": TextEncoder().encode(request["texts"]),
        "image": ImageEncoder().encode(request["images"]),
    }


@pytest.fixture(scope="module")
def sides(request_doc, tf_rec) -> tuple[dict, dict]:
    """(TensorFlow, JAX) results. The JAX subprocess (this file under KERAS_BACKEND=jax) runs while
    this process computes the TensorFlow side."""
    request_path = Path(request_doc["result"]).with_name("request.json")
    request_path.write_text(json.dumps(request_doc))
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tests.test_backends", str(request_path)], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        tf = tf_compute(tf_rec, request_doc)
        tf_seconds = time.perf_counter() - started
        log, _ = proc.communicate(timeout=PROBE_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"JAX subprocess failed (exit {proc.returncode}):\n{log[-6000:]}"
    jax = json.loads(Path(request_doc["result"]).read_text())
    print(f"\nTF side {tf_seconds:.1f}s; JAX subprocess {time.perf_counter() - started:.1f}s: {jax['seconds']}")
    return tf, jax


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
    print(f"\nTF-trained model, JAX vs TF: max |score| diff {score_diff:.2e} over "
          f"{np.size(tf['score_customers'])} scores, max |predicted rating| diff {rating_diff:.2e}")
    assert np.ptp(tf["score_customers"]) > 1e-3  # scores differ between products: a real comparison
    assert score_diff < MAX_SCORE_DIFF and rating_diff < MAX_SCORE_DIFF


def test_raw_keras_model_agrees_across_backends(tf_side, jax_side):
    tf, jax = tf_side["raw"], jax_side["tf_model"]["raw"]
    diffs = {k: max_diff(tf[k], jax[k]) for k in ("rating", "interact")}
    print(f"\nraw HybridModel heads, JAX vs TF: max |diff| rating {diffs['rating']:.2e}, "
          f"pick logit {diffs['interact']:.2e}")
    assert all(np.isfinite(tf[k]).all() and np.ptp(tf[k]) > 1e-3 for k in tf)
    assert max(diffs.values()) < MAX_RAW_DIFF, diffs


def test_model_trained_under_jax_saves_loads_and_scores(request_doc, tf_rec, jax_side):
    from ml.recommender import Recommender

    d, jax = request_doc, jax_side["jax_model"]
    grid = np.asarray(jax["score_customers"])
    assert grid.shape == (len(d["customers"]), tf_rec.n_products)
    assert np.isfinite(grid).all() and (grid >= 0).all() and (grid <= 1).all()
    ratings = np.asarray(jax["predict"])
    assert ratings.shape == (len(d["predict_u"]),) and ((ratings >= 1) & (ratings <= 5)).all()
    # the artifact JAX wrote loads under TensorFlow and scores the same
    rec = Recommender.load(d["jax_artifact"])
    tf = scores(rec, d["customers"], d["predict_u"], d["predict_i"])
    tf_raw = raw_heads(rec, d["pair_u"], d["pair_i"])
    score_diff = max(max_diff(tf["score_customers"], grid), max_diff(tf["predict"], ratings))
    raw_diff = max(max_diff(tf_raw[k], jax["raw"][k]) for k in ("rating", "interact"))
    print(f"\nJAX-trained model, TF vs JAX: max |score or rating| diff {score_diff:.2e}, raw heads {raw_diff:.2e}")
    assert np.ptp(grid) > 1e-3
    assert score_diff < MAX_SCORE_DIFF and raw_diff < MAX_RAW_DIFF


def test_text_encoder_agrees_across_backends(request_doc, tf_side, jax_side):
    texts = request_doc["texts"]
    tf, jax = tf_side["text"], np.asarray(jax_side["text"], np.float32)
    cosine = row_cosines(tf, jax)
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    expected = np.asarray([reference["vectors"][reference["texts"].index(t)] for t in texts])
    vs_reference = row_cosines(jax, expected)
    print(f"\nMiniLM on {len(texts)} texts: JAX vs TF min cosine {cosine.min():.8f}, "
          f"JAX vs sentence-transformers {vs_reference.min():.8f}")
    assert any(len(t) > 1000 for t in texts) and "" in texts  # truncation and the empty text are covered
    assert cosine.min() >= MIN_TEXT_COSINE
    assert vs_reference.min() >= MIN_TEXT_COSINE


def test_image_encoder_agrees_across_backends(request_doc, tf_side, jax_side):
    images = request_doc["images"]
    tf, jax = tf_side["image"], np.asarray(jax_side["image"], np.float32)
    cosine = row_cosines(tf, jax)
    print(f"\nEfficientNet-Lite0 on {len(images)} pictures: JAX vs TF min cosine {cosine.min():.8f}, "
          f"max |diff| {max_diff(tf, jax):.2e}")
    assert jax.shape == (len(images), 1280) and np.isfinite(jax).all()
    assert cosine.min() >= MIN_IMAGE_COSINE


if __name__ == "__main__":
    main(sys.argv[1:])
