"""A soft time limit that is not lost: repeat it until the task has stopped.

Celery's prefork pool enforces a task's soft limit by one signal (billiard's SIG_SOFT_TIMEOUT,
SIGUSR1) whose handler raises SoftTimeLimitExceeded wherever the task's thread happens to be. Raised
inside a finaliser (seen here: a redis ConnectionPool.__del__ that ran at that moment) Python prints
"Exception ignored" and goes on; a broad `except Exception` that keeps a bad file from stopping the
work swallows it the same way. The task then runs on to the hard limit, which kills the pool child
instead of failing the task cleanly. `insisting` sends the signal again every `every_s` seconds
after the soft limit (plus `every_s`) until its block ends, never while the task's thread is in
TensorFlow's, Keras's or JAX's own Python code (`_in_framework`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

from celery.exceptions import SoftTimeLimitExceeded

EVERY_S = 1.0


def _soft_signal() -> int | None:
    """The signal whose handler raises SoftTimeLimitExceeded in this process, when it is a billiard
    pool child that enforces soft limits (None elsewhere: solo or thread pools, tests, scripts)."""
    import signal

    from billiard import pool

    sig = pool.SIG_SOFT_TIMEOUT
    if sig is None or signal.getsignal(sig) is not pool.soft_timeout_sighandler:
        return None
    return sig


FRAMEWORKS = ("/tensorflow/", "/keras/", "/jax/", "/tf_keras/")


def _in_framework(frame) -> bool:
    """Whether the task's thread is in a framework's Python code now: a repeat is not sent there.
    Session 18 re-signalled every 0.25 s and saw one raised inside TensorFlow's tracing end as a
    SystemError; an exception from the task's own code unwinds through the framework cleanly."""
    return frame is not None and any(f in frame.f_code.co_filename for f in FRAMEWORKS)


@contextlib.contextmanager
def insisting(limit_s: float | None, every_s: float = EVERY_S) -> Iterator[None]:
    """Within the block, the soft limit `limit_s` (seconds from entering; None or 0: none) is
    signalled again every `every_s` seconds from `limit_s + every_s` on. Leaving the block stops the
    repeats and waits for their thread, absorbing a repeat that lands meanwhile (the first
    exception is already on its way), so that the caller's cleanup runs undisturbed."""
    sig = _soft_signal()
    if not limit_s or sig is None:
        yield
        return
    stop = threading.Event()

    main = threading.get_ident()

    def repeat() -> None:
        if stop.wait(limit_s + every_s):
            return
        while not stop.is_set():
            if _in_framework(sys._current_frames().get(main)):
                stop.wait(0.05)  # look again soon
                continue
            os.kill(os.getpid(), sig)
            stop.wait(every_s)

    thread = threading.Thread(target=repeat, name="soft-limit", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        while True:
            try:
                thread.join()
                break
            except SoftTimeLimitExceeded:
                continue
