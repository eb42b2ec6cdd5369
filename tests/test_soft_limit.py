"""tasks.soft_limit: a soft time limit whose exception was swallowed (raised inside a gc callback or a
finalizer) is raised again until the task's code sees it; nothing is signalled after the body."""

from __future__ import annotations

import os
import signal
import time

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from tasks.soft_limit import insistent_soft_limit

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="billiard's soft limit is SIGUSR1")


@pytest.fixture
def billiard_handler():
    """What a prefork pool child has installed: SIGUSR1 raises SoftTimeLimitExceeded."""

    def raise_soft(signum, frame):
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGUSR1, raise_soft)
    yield raise_soft
    signal.signal(signal.SIGUSR1, previous)


def _swallowing_work(seconds: float) -> int:
    """Work whose first soft-limit exception is lost (as inside a gc callback); returns how many."""
    lost, end = 0, time.monotonic() + seconds
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.5)
    except SoftTimeLimitExceeded:
        lost += 1
    while time.monotonic() < end:
        time.sleep(0.01)
    return lost


def test_a_lost_soft_limit_is_raised_again(billiard_handler):
    started = time.monotonic()
    with pytest.raises(SoftTimeLimitExceeded), insistent_soft_limit(interval_s=0.05):
        _swallowing_work(5.0)
    assert time.monotonic() - started < 2.0
    assert signal.getsignal(signal.SIGUSR1) is billiard_handler


def test_without_the_wrapper_it_stays_lost(billiard_handler):
    """(What the wrapper is for: the same work runs to its end.)"""
    assert _swallowing_work(0.3) == 1


def test_a_body_that_ends_sees_no_signal_after(billiard_handler):
    with insistent_soft_limit(interval_s=0.05):
        time.sleep(0.1)
    time.sleep(0.3)  # a stray SIGUSR1 now would raise here
    assert signal.getsignal(signal.SIGUSR1) is billiard_handler
