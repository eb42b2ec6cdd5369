"""A worker's Python gc callbacks, where a soft time limit can be lost.

Celery's soft time limit is a signal: its handler raises SoftTimeLimitExceeded in the main thread at
the next bytecode. When that bytecode belongs to a gc callback, Python prints "Exception ignored in
<callback>" and drops the exception, and the task runs on into its hard limit (TimeLimitExceeded, the
pool child killed): seen in CI in JAX's `_xla_gc_callback` (session 17's worker log). JAX is there even
with the TensorFlow backend: TensorFlow's lite module imports it whenever it is installed (an optional
`from jax import jit` in tensorflow/lite/python/util.py), and importing JAX registers that callback,
which frees XLA's buffers after each collection. With the TensorFlow backend there are none to free
(the JAX backend, and Keras' numpy backend, which calls jax.lax, keep it; there the risk remains).
"""

from __future__ import annotations

import gc
import sys


def jax_callbacks() -> list:
    """The gc callbacks JAX registered (those defined in a `jax` module)."""
    return [cb for cb in gc.callbacks if getattr(cb, "__module__", "").split(".")[0] == "jax"]


def drop_idle_jax_callback() -> bool:
    """Remove JAX's gc callbacks when JAX is loaded and Keras runs on TensorFlow; whether any went."""
    if "jax" not in sys.modules:
        return False
    import keras

    if keras.backend.backend() != "tensorflow":
        return False
    idle = jax_callbacks()
    for cb in idle:
        gc.callbacks.remove(cb)
    return bool(idle)
