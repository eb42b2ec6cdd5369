"""glibc's malloc after a Keras fit on the TensorFlow backend: large numpy arrays back on the heap.

Keras feeds a `PyDataset` (ml.model.RowBatches) to TensorFlow as a generator dataset, and building
that op calls `mallopt(M_MMAP_THRESHOLD, 128 KiB)` (tensorflow::data::ApplyPython311MemoryPatch,
seen in gdb). A set threshold also turns off glibc's dynamic one, which would otherwise have risen to
the size of the arrays freed (up to 32 MiB on 64-bit). From then on, in that process, every array
above 128 KiB is a fresh mmap: its pages fault in on first touch and go back to the kernel when it is
freed. The whole-catalog scoring that follows a fit (the ranking choice, the retriever's
distillation) allocates such arrays by the thousand: on a 10,000-product world the ranking choice
took 29-34 s in a fresh process and 54-66 s after a one-epoch fit (11.6 M minor page faults against
0.14 M, 37 s of system time against 3).

`arrays_on_heap` sets the threshold to glibc's own dynamic ceiling and the trim threshold to twice
that (the ratio the dynamic rule keeps): what a process that never built the op would reach. A no-op
off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def arrays_on_heap() -> bool:
    """Let arrays up to 32 MiB be served from (and freed back to) the heap; True when applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
