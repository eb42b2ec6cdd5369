"""tasks.gc_callbacks: JAX's gc callback, loaded by TensorFlow's lite module, is dropped where Keras runs
on TensorFlow (a soft time limit raised inside it was swallowed), and kept on the JAX backend."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

from ml.config import REPO_ROOT
from tasks.gc_callbacks import drop_idle_jax_callback, jax_callbacks


def test_tensorflow_backend_drops_the_jax_callback(jax_gc_callback):
    import keras

    assert keras.backend.backend() == "tensorflow"
    assert jax_callbacks() == [jax_gc_callback]
    others = [cb for cb in gc.callbacks if cb is not jax_gc_callback]
    assert drop_idle_jax_callback() is True
    assert jax_callbacks() == [] and gc.callbacks == others
    assert drop_idle_jax_callback() is False  # nothing left to drop


def test_jax_backend_keeps_its_callback():
    code = (
        "import keras; from tasks.gc_callbacks import drop_idle_jax_callback, jax_callbacks; "
        "print(keras.backend.backend(), drop_idle_jax_callback(), len(jax_callbacks()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    backend, dropped, left = out.stdout.split()[-3:]
    assert (backend, dropped) == ("jax", "False") and int(left) >= 1, out.stdout
