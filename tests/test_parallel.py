"""ml.parallel: a batch's chunks side by side, each thread on one CPU, errors cancel the rest."""

from __future__ import annotations

import threading
import time

import pytest
from threadpoolctl import threadpool_info

from ml import parallel
from ml.config import usable_cpus


def _blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_items_run_at_once_in_order_each_thread_on_one_cpu():
    """Two items that wait for each other finish only when they run at the same time."""
    meet = threading.Barrier(2, timeout=10)
    seen = []

    def work(x: int) -> int:
        meet.wait()
        seen.append((threading.get_ident(), parallel.cpus(), _blas_threads()))
        return x * 10

    before = _blas_threads()
    assert parallel.map_on_cpus(work, [1, 2], threads=2) == [10, 20]
    assert len({ident for ident, _, _ in seen}) == 2
    assert all(cpus == 1 and blas <= {1} for _, cpus, blas in seen)
    assert _blas_threads() == before  # the process's BLAS thread count is given back
    assert parallel.cpus() == usable_cpus()


def test_one_thread_is_a_plain_loop_in_the_callers_thread():
    here = threading.get_ident()
    got = parallel.map_on_cpus(lambda x: (x, threading.get_ident(), parallel.cpus()), [1, 2, 3], threads=1)
    assert got == [(x, here, usable_cpus()) for x in (1, 2, 3)]
    assert parallel.map_on_cpus(lambda x: x, [], threads=4) == []
    assert parallel.map_on_cpus(lambda x: threading.get_ident(), [7], threads=4) == [here]


def test_a_failure_cancels_the_items_not_started_and_is_raised():
    """Item 0 fails at once; 1 and 2 (the two threads' next) hold their thread for a while, so
    the failure is seen while 3-9 still wait: none of those may run."""
    started = []

    def work(x: int) -> int:
        started.append(x)
        if x == 0:
            raise ValueError("chunk 0 failed")
        time.sleep(1.0)
        return x

    before = _blas_threads()
    with pytest.raises(ValueError, match="chunk 0 failed"):
        parallel.map_on_cpus(work, range(10), threads=2)
    assert set(started) <= {0, 1, 2}
    assert _blas_threads() == before


def test_one_blas_thread_limits_outside_and_leaves_the_section_alone_inside(monkeypatch):
    with parallel.one_blas_thread():
        assert _blas_threads() <= {1}
    real, limits = parallel._blas, []

    def counted():
        limits.append(threading.get_ident())
        return real()

    monkeypatch.setattr(parallel, "_blas", counted)

    def inside(_):
        with parallel.one_blas_thread():
            return _blas_threads()

    # the section's threads never set or restore the process-wide count (a thread leaving its
    # block could hand the others a multi-threaded BLAS): only the caller limits it, once
    assert all(t <= {1} for t in parallel.map_on_cpus(inside, range(4), threads=2))
    assert limits == [threading.get_ident()]
