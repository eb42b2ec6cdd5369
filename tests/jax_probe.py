"""The JAX side of tests/test_backends.py: a subprocess under `KERAS_BACKEND=jax`, started at the
beginning of the test session so its minutes of CPU (JAX start-up, XLA compiling the encoders,
training) overlap the rest of the suite instead of adding to it.

Protocol (files in one directory):
- `start.json` (written before the subprocess starts): texts, picture paths, the parameters of a small
  synthetic world, where to write the JAX-trained model.
- phase 1, needing nothing from the test session: the text and image encoders on JAX; a world generated
  here, a tiny model trained on it under JAX, saved, loaded and scored (the customers and pairs scored
  are chosen here and reported, so the TensorFlow side scores the same ones);
- phase 2: wait for `tf.json` (written by the test module once the session's TensorFlow-trained model
  exists): load that model under JAX and score it through the public serving API and the raw Keras
  model;
- `result.json`: everything, plus the wall/CPU seconds of each step (the log shows where a slow run is).

`conftest.py` calls `schedule(config, items)` after collection: it moves the backend tests to the end of
the run and starts the probe when any of them was collected.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).resolve().parent / "data" / "minilm_reference.json"
PHOTOS = REPO_ROOT.parent / "shared" / "data" / "fashion-product-images-small-subset" / "images"
N_TEXTS, N_IMAGES, N_CUSTOMERS, N_PAIRS = 8, 4, 6, 64
JAX_WORLD = {"n_customers": 60, "n_products": 40, "seed": 1}
# Training under JAX: one epoch, without the image and text encoders (those are compared on their own;
# loading them twice would double the subprocess time).
JAX_TRAINING = {"epochs": 1, "use_images": False, "use_text": False, "verbose": 0, "progress": False}
# Against hangs only (no timing is asserted): under heavy load the subprocess took 9 minutes of wall
# time for 2.6 minutes of CPU.
PROBE_TIMEOUT_S = 1200
BACKEND_TESTS = "test_backends.py"


# ----------------------------------------------------------------------------- inputs


def sample_texts() -> list[str]:
    """N_TEXTS reference texts spread over the length range: the empty one and the longest included."""
    texts = sorted(json.loads(REFERENCE.read_text(encoding="utf-8"))["texts"], key=len)
    step = max(1, len(texts) // (N_TEXTS - 1))
    return texts[::step][: N_TEXTS - 1] + [texts[-1]]


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


def pairs_for(n_customers: int, n_products: int) -> dict:
    """Customers and (customer, product) pairs to score; predict also gets an unknown product and an
    unknown customer."""
    rng = np.random.default_rng(7)
    pair_u = rng.integers(0, n_customers, N_PAIRS).tolist()
    pair_i = rng.integers(0, n_products, N_PAIRS).tolist()
    return {
        "customers": list(range(min(N_CUSTOMERS, n_customers))),
        "pair_u": pair_u,
        "pair_i": pair_i,
        "predict_u": pair_u + [0, -1],
        "predict_i": pair_i + [-1, 0],
    }


# ----------------------------------------------------------------------------- what both backends compute


def scores(rec, pairs: dict) -> dict:
    """Public-API scores of `rec`: ranking scores per customer and predicted ratings per pair."""
    return {
        "score_customers": rec.score_customers(np.asarray(pairs["customers"])).tolist(),
        "predict": rec.predict(np.asarray(pairs["predict_u"]), np.asarray(pairs["predict_i"])).tolist(),
    }


def raw_heads(rec, pairs: dict) -> dict:
    """The Keras model itself on the training input dict: rating and pick logit per pair."""
    from keras import ops

    from ml.features import model_inputs

    u, i = np.asarray(pairs["pair_u"]), np.asarray(pairs["pair_i"])
    out = rec.model(model_inputs(rec.tables, u, i), training=False)
    return {k: np.asarray(ops.convert_to_numpy(out[k])).reshape(-1).tolist() for k in ("rating", "pick")}


def both(rec, pairs: dict) -> dict:
    return {**scores(rec, pairs), "raw": raw_heads(rec, pairs)}


# ----------------------------------------------------------------------------- the subprocess (JAX)


@contextlib.contextmanager
def timed(record: dict, step: str):
    """Wall and CPU seconds of a step, kept in `record` and logged."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    record[step] = {"wall": round(time.perf_counter() - wall, 1), "cpu": round(time.process_time() - cpu, 1)}
    print(f"jax probe: {step}: {record[step]}", file=sys.stderr, flush=True)


def wait_for(path: Path, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s}s")
        time.sleep(0.2)
    return json.loads(path.read_text())


def probe(work: Path) -> dict:
    """Everything the JAX side computes (runs under KERAS_BACKEND=jax)."""
    import keras

    from demo import generate_world
    from ml.encoders.image import ImageEncoder
    from ml.encoders.text import TextEncoder
    from ml.recommender import Recommender
    from ml.train import TrainConfig, train_model

    start = json.loads((work / "start.json").read_text())
    result: dict = {"backend": keras.backend.backend(), "seconds": {}}
    with timed(result["seconds"], "text"):
        result["text"] = TextEncoder().encode(start["texts"]).tolist()
    with timed(result["seconds"], "image"):
        result["image"] = ImageEncoder().encode(start["images"]).tolist()
    with timed(result["seconds"], "train"):
        generate_world(work / "world", **start["world"])
        train_model(work / "world", start["jax_artifact"], TrainConfig(**JAX_TRAINING))
    with timed(result["seconds"], "jax_model"):
        rec = Recommender.load(start["jax_artifact"])
        pairs = pairs_for(rec.tables.n_customers, rec.n_products)
        result["jax_model"] = {**both(rec, pairs), "pairs": pairs}
    tf_request = wait_for(work / "tf.json", PROBE_TIMEOUT_S)
    with timed(result["seconds"], "tf_model"):
        result["tf_model"] = both(Recommender.load(tf_request["artifact"]), tf_request["pairs"])
    return result


def main(argv: list[str]) -> None:
    """`python -m tests.jax_probe DIR`: run `probe`, write DIR/result.json."""
    (work,) = argv
    result = probe(Path(work))
    (Path(work) / "result.json").write_text(json.dumps(result))


# ----------------------------------------------------------------------------- the test session's side


class JaxProbe:
    """The running subprocess, seen from the test session."""

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="jax-probe-"))
        start = {
            "texts": sample_texts(),
            "images": sample_images(self.work),
            "world": JAX_WORLD,
            "jax_artifact": str(self.work / "jax-model"),
        }
        (self.work / "start.json").write_text(json.dumps(start))
        self.start = start
        env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.log_file = self.work / "probe.log"
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.jax_probe", str(self.work)],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def finish(self, artifact: str, pairs: dict) -> dict:
        """Hand over the session's TensorFlow model, wait for the subprocess, return its result."""
        request = self.work / "tf.json"
        request.with_suffix(".tmp").write_text(json.dumps({"artifact": artifact, "pairs": pairs}))
        request.with_suffix(".tmp").rename(request)  # the probe never reads a half-written file
        try:
            self.proc.wait(timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        log = self.log_file.read_text(errors="replace")
        assert self.proc.returncode == 0, (
            f"JAX subprocess failed (exit {self.proc.returncode}):\n{log[-6000:]}"
        )
        return json.loads((self.work / "result.json").read_text())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.work, ignore_errors=True)


def schedule(config, items: list) -> None:
    """Run the backend tests last, and start the probe now when any of them is collected."""
    backend = [item for item in items if item.path.name == BACKEND_TESTS]
    if not backend:
        return
    items[:] = [item for item in items if item.path.name != BACKEND_TESTS] + backend
    if getattr(config, "jax_probe", None) is None:
        config.jax_probe = JaxProbe()


def stop(config) -> None:
    probe = getattr(config, "jax_probe", None)
    if probe is not None:
        probe.close()
        config.jax_probe = None


if __name__ == "__main__":
    main(sys.argv[1:])
