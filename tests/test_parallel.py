"""ml.parallel: a batch's chunks side by side, each thread on one CPU, the process-wide BLAS count
given back, the first failure cancels what has not started."""

from __future__ import annotations

import threading
import time

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from ml import parallel
from ml.config import usable_cpus


def _blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


@pytest.fixture
def two_blas_threads():
    """BLAS at 2 threads for the test (whatever this machine's default), so that a limit to 1 shows."""
    with threadpool_limits(limits=2, user_api="blas"):
        assert _blas_threads() == {2}
        yield


def test_items_run_at_once_in_order_each_thread_on_one_cpu(two_blas_threads):
    """Two items that wait for each other finish only when they run at the same time."""
    meet = threading.Barrier(2, timeout=10)
    seen = []

    def work(x: int) -> int:
        meet.wait()
        seen.append((threading.get_ident(), parallel.cpus(), _blas_threads()))
        return x * 10

    assert parallel.map_on_cpus(work, [1, 2], threads=2) == [10, 20]
    assert len({ident for ident, _, _ in seen}) == 2
    assert all(cpus == 1 and blas == {1} for _, cpus, blas in seen)
    assert _blas_threads() == {2}  # given back
    assert parallel.cpus() == usable_cpus()


def test_one_thread_is_a_plain_loop_in_the_callers_thread():
    here = threading.get_ident()
    got = parallel.map_on_cpus(lambda x: (x, threading.get_ident(), parallel.cpus()), [1, 2, 3], threads=1)
    assert got == [(x, here, usable_cpus()) for x in (1, 2, 3)]
    assert parallel.map_on_cpus(lambda x: x, [], threads=4) == []
    assert parallel.map_on_cpus(lambda x: threading.get_ident(), [7], threads=4) == [here]


@pytest.mark.parametrize("failing", [0, 1])
def test_the_first_failure_cancels_the_items_not_started_and_is_raised(two_blas_threads, failing):
    """Item `failing` fails at once, the others hold their thread for a while: the failure is seen
    while the items after the first three still wait (also when an item before it is running),
    so none of those may start."""
    started = []

    def work(x: int) -> int:
        started.append(x)
        if x == failing:
            raise ValueError(f"chunk {x} failed")
        time.sleep(0.5)
        return x

    with pytest.raises(ValueError, match=f"chunk {failing} failed"):
        parallel.map_on_cpus(work, range(10), threads=2)
    assert set(started) <= {0, 1, 2}
    assert _blas_threads() == {2}


def test_overlapping_blocks_in_two_threads_leave_the_count_as_it_was(two_blas_threads):
    """A enters, B enters, A leaves, B leaves: each restoring what it saw on entering would leave
    BLAS on one thread for good (B saw 1). threadpoolctl lets only the thread holding the count
    change it (the rule `one_blas_thread` relies on): the count comes back."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a():
        with parallel.one_blas_thread():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with parallel.one_blas_thread():
            b_in.set()
            a_out.wait(10)

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert a_out.is_set() and _blas_threads() == {2}


def test_the_sections_threads_leave_the_limit_to_the_caller(monkeypatch):
    real, calls = parallel._blas, []

    def counted():
        calls.append(threading.get_ident())
        return real()

    monkeypatch.setattr(parallel, "_blas", counted)

    def inside(_):
        with parallel.one_blas_thread():
            return parallel.cpus()

    assert parallel.map_on_cpus(inside, range(4), threads=2) == [1] * 4
    assert calls == [threading.get_ident()]
