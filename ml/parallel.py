"""How a computation spreads over this process's CPUs: BLAS threads, index-query threads, and a
batch's chunks run side by side.

A batch job (`Recommender.recommend_many`) is a list of independent chunks of customers. Its
arithmetic is numpy and hnswlib calls that release the GIL (BLAS, gathers, index queries) inside
Python that holds it, so one thread kept 1.2-1.3 of 2 CPUs busy (100k SYNTHETIC catalog, measured).
`map_on_cpus` runs chunks in threads, each on one CPU: BLAS on one thread for the whole section and
`cpus()` 1 inside the threads, so that each thread's index queries and matmuls do not spread over
every CPU again.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

from ml.config import usable_cpus

T = TypeVar("T")
R = TypeVar("R")

_local = threading.local()  # .one_cpu: this thread is one of map_on_cpus's
_lock = threading.Lock()
_controller = None  # threadpoolctl.ThreadpoolController, made on first use (it scans the loaded libraries)


def cpus() -> int:
    """CPUs one computation on this thread may spread over: 1 in a `map_on_cpus` thread, else the
    CPUs this process may run on."""
    return 1 if getattr(_local, "one_cpu", False) else usable_cpus()


def _blas():
    global _controller
    with _lock:
        if _controller is None:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        return _controller


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread inside the block: small or memory-bound products (a single request's
    passes, matrix-vector products), where waking and syncing a second OpenBLAS thread costs more
    than it saves (8 ms on a 10k x 130 product that takes 0.2-0.4 ms on one, busy 2-core machine).

    OpenBLAS's thread count is process-wide. threadpoolctl (3.8, pinned) lets one thread at a time
    set it: while one thread's block holds it, another thread's block changes nothing (and runs on
    the count the first set, or gave back), so blocks overlapping in several threads (tasks of a
    `threads` worker pool) cannot leave it wrong. Inside `map_on_cpus` it is already 1 and left
    alone."""
    if getattr(_local, "one_cpu", False):
        yield
        return
    with _blas().limit(limits=1, user_api="blas"):
        yield


def map_on_cpus(fn: Callable[[T], R], items: Iterable[T], threads: int) -> list[R]:
    """`[fn(x) for x in items]`, in order, run in up to `threads` threads, each on one CPU (see the
    module docstring). One thread or one item: in this thread, as a plain loop. The first exception
    in any of them cancels the items not started, waits for those running, and is raised here; so
    does a signal's exception in this thread (Celery's soft time limit)."""
    items = list(items)
    threads = min(int(threads), len(items))
    if threads <= 1:
        return [fn(x) for x in items]

    def run(x: T) -> R:
        _local.one_cpu = True
        return fn(x)

    with one_blas_thread():
        pool = ThreadPoolExecutor(threads, thread_name_prefix="recsys-cpu")
        try:
            futures = [pool.submit(run, x) for x in items]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception() is not None), None)
            if failed is not None:
                raise failed.exception()
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
