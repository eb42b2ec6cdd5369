"""tasks.soft_limit: a soft time limit whose exception was swallowed is signalled again."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from billiard import pool
from celery.exceptions import SoftTimeLimitExceeded

from tasks import soft_limit


@pytest.fixture
def pool_child_handler():
    """This process handles the soft-limit signal as a billiard pool child does."""
    old = signal.signal(pool.SIG_SOFT_TIMEOUT, pool.soft_timeout_sighandler)
    yield
    signal.signal(pool.SIG_SOFT_TIMEOUT, old)


def _work(seconds: float, swallow: int) -> int:
    """Sleep in small steps for `seconds`, swallowing the first `swallow` soft-limit exceptions (as
    a finaliser or a broad `except Exception` does); how many were swallowed."""
    swallowed, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.01)
        except SoftTimeLimitExceeded:
            if swallowed == swallow:
                raise
            swallowed += 1
    return swallowed


def test_a_swallowed_soft_limit_is_signalled_again_until_the_block_ends(pool_child_handler):
    with pytest.raises(SoftTimeLimitExceeded):
        with soft_limit.insisting(0.2, every_s=0.2):
            _work(10.0, swallow=2)  # the first repeat (0.4 s) and the next (0.6 s) are lost
    assert [t.name for t in threading.enumerate() if t.name == "soft-limit"] == []
    assert _work(0.6, swallow=0) == 0  # nothing is sent after the block


def test_a_block_that_ends_in_time_is_never_signalled(pool_child_handler):
    with soft_limit.insisting(0.3, every_s=0.1):
        assert _work(0.2, swallow=0) == 0
    assert _work(0.5, swallow=0) == 0


def test_outside_a_pool_child_or_without_a_limit_nothing_is_sent():
    assert signal.getsignal(pool.SIG_SOFT_TIMEOUT) is not pool.soft_timeout_sighandler
    with soft_limit.insisting(0.05, every_s=0.05):
        assert [t.name for t in threading.enumerate() if t.name == "soft-limit"] == []
        time.sleep(0.2)  # a SIGUSR1 with the default action would end this process
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(soft_limit, "_soft_signal", lambda: signal.SIGUSR1)
        with soft_limit.insisting(None):
            assert [t.name for t in threading.enumerate() if t.name == "soft-limit"] == []


def test_no_repeat_is_sent_while_the_task_is_in_a_frameworks_code(pool_child_handler):
    """A loop compiled as if it were TensorFlow's own file runs past the limit undisturbed; the
    repeat comes once the task's code is its own again."""
    space: dict = {}
    src = "def framework_loop(seconds):\n    import time\n    end = time.monotonic() + seconds\n"
    src += "    while time.monotonic() < end:\n        time.sleep(0.005)\n"
    exec(compile(src, "/site-packages/tensorflow/python/fake_tracing.py", "exec"), space)
    inside_framework = None
    with pytest.raises(SoftTimeLimitExceeded):
        with soft_limit.insisting(0.1, every_s=0.1):
            try:
                space["framework_loop"](0.8)  # repeats would start at 0.2 s
            except SoftTimeLimitExceeded as exc:
                inside_framework = exc
            _work(5.0, swallow=0)
    assert inside_framework is None
