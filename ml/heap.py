"""glibc's malloc around a Keras fit on the TensorFlow backend: large numpy arrays back on the heap after.

Keras feeds a `PyDataset` (ml.model.RowBatches) to TensorFlow as a generator dataset, and building
that op calls `mallopt(M_MMAP_THRESHOLD, 128 KiB)` (tensorflow::data::ApplyPython311MemoryPatch,
seen in gdb; once per process), against a memory growth of generator datasets under Python 3.11.
A set threshold also turns off glibc's dynamic one, which would otherwise rise with the arrays freed
(up to 32 MiB on 64-bit). From then on every array above 128 KiB is a fresh mmap: its pages fault in
on first touch and go back to the kernel when it is freed. The whole-catalog scoring that follows a
fit (the ranking choice, the retriever's distillation) allocates such arrays by the thousand: on a
10,000-product SYNTHETIC world the ranking choice took 29-34 s in a fresh process and 54-66 s after a
one-epoch fit (11.6 M minor page faults against 0.14 M, 37 s of system time against 3).

`generator_fit` wraps a fit: TensorFlow's threshold during it (so every fit of a long-lived process,
a Celery worker's, runs as TensorFlow meant, not only the first), glibc's dynamic ceiling after it.
`release_free` hands the heap's free pages back (a worker keeps serving after it trained). No-ops
off glibc.
"""

from __future__ import annotations

import ctypes
import functools
import platform
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
GENERATOR_MMAP_THRESHOLD = 128 << 10  # what TensorFlow's generator dataset sets
MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: its dynamic ceiling
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # the ratio glibc's dynamic rule keeps


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _mallopt(param: int, value: int) -> bool:
    libc = _libc()
    return libc is not None and bool(libc.mallopt(param, value))


def arrays_on_heap() -> bool:
    """Arrays up to 32 MiB served from (and freed back to) the heap, the most glibc's dynamic
    threshold could reach in a process that never built the op; True when applied."""
    return _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


@contextmanager
def generator_fit() -> Iterator[None]:
    """TensorFlow's 128 KiB threshold for the fit inside, `arrays_on_heap` after it (also when it raises).
    The trim threshold (TensorFlow sets none) stays as the last call left it. Process-wide: fits in
    concurrent threads of one process (a threads pool) share it."""
    _mallopt(M_MMAP_THRESHOLD, GENERATOR_MMAP_THRESHOLD)
    try:
        yield
    finally:
        arrays_on_heap()


def release_free() -> bool:
    """Return the heap's free pages to the kernel (glibc's malloc_trim(0)); True when some were."""
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))
