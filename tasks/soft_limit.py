"""A soft time limit that is not lost: re-signalled until the task's code sees it.

billiard raises SoftTimeLimitExceeded from its SIGUSR1 handler in whatever Python code the pool
child's main thread runs at that moment. When that is a garbage-collector callback or a `__del__`
(JAX registers a gc callback at import; TensorFlow and Keras objects have finalizers), Python prints
"Exception ignored in ..." and carries on: the task runs into its hard limit and the pool child is
killed instead of failing cleanly (seen in CI: the exception raised inside jax's `_xla_gc_callback`
during a training task's text embedding).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

RESIGNAL_S = 0.25  # how often a fired soft limit is raised again while the task's code has not seen it


@contextmanager
def insistent_soft_limit(interval_s: float = RESIGNAL_S) -> Iterator[None]:
    """While the body runs, a soft limit that fired is signalled again every `interval_s` until the
    body exits (with the exception, normally). A no-op outside the main thread or without SIGUSR1
    (the threads and solo pools have no soft limits)."""
    sig = getattr(signal, "SIGUSR1", None)
    if sig is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(sig)
    if not callable(previous):  # no soft-limit handler installed (not a prefork pool child)
        yield
        return
    wake, done = threading.Event(), threading.Event()  # wake: the limit fired, or the body is done

    def handler(signum, frame):
        if done.is_set():  # a signal still on its way after the body: nothing left to stop
            return
        wake.set()
        previous(signum, frame)  # billiard's: raises SoftTimeLimitExceeded here

    def insist() -> None:
        wake.wait()
        while not done.wait(interval_s):
            os.kill(os.getpid(), sig)

    signal.signal(sig, handler)
    nag = threading.Thread(target=insist, name="soft-limit", daemon=True)
    nag.start()
    try:
        yield
    finally:
        done.set()
        wake.set()
        nag.join()  # no signal is sent after this
        signal.signal(sig, previous)
