"""ml.heap: glibc's mmap threshold as TensorFlow's generator dataset sets it during a fit, and back on
the heap after (also when the fit raises); the heap's free pages handed back."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ml.heap import arrays_on_heap, generator_fit, release_free

needs_glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"),
    reason="glibc >= 2.33 (mallopt, mallinfo2)",
)
pytestmark = needs_glibc
BIG = 24 << 20  # above TensorFlow's 128 KiB, below glibc's 32 MiB ceiling


def mapped_bytes() -> int:
    """Bytes malloc holds in mmap'd chunks of their own (glibc's mallinfo2().hblkhd)."""

    class MallInfo2(ctypes.Structure):
        _fields_ = [  # all ten: the struct is returned by value
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    return int(libc.mallinfo2().hblkhd)


def is_own_mapping(nbytes: int = BIG) -> bool:
    """Whether an array of `nbytes` gets a mapping of its own (else it comes from the heap)."""
    before = mapped_bytes()
    a = np.ones(nbytes, np.uint8)
    return mapped_bytes() - before >= a.nbytes


def in_fresh_process(body: str) -> None:
    """Run `body` (this module's names in scope) in a new interpreter. malloc serves a request from a
    free chunk of the heap whenever one is large enough, whatever the mmap threshold (which only
    decides how the heap grows), and earlier tests leave such chunks behind: in CI a 24 MiB array
    inside a generator fit once came from one. A fresh process has none."""
    code = f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\nfrom test_heap import *\n{body}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_inside_a_generator_fit_large_arrays_are_mapped_and_on_the_heap_after():
    in_fresh_process(
        # the worker's and training's setting first (what the fit changes and restores)
        "assert arrays_on_heap()\n"
        "with generator_fit():\n    assert is_own_mapping()\n"
        "assert not is_own_mapping()"
    )


def test_the_heap_comes_back_when_the_fit_raises():
    with pytest.raises(RuntimeError), generator_fit():
        raise RuntimeError("soft time limit")
    assert not is_own_mapping()


def rss_mb() -> float:
    """Resident memory of this process (/proc/self/statm), MiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_freed_heap_pages_go_back():
    assert arrays_on_heap()
    block = np.ones(BIG, np.uint8)  # on the heap, and kept there once freed (24 < 64 MiB trim threshold)
    del block
    before = rss_mb()
    assert release_free()
    assert before - rss_mb() >= 20  # the block's pages, touched by np.ones
