"""The `ml` package's process defaults for native libraries, set before they load: OpenBLAS's helper
threads stop spinning soon after a matrix product (see ml/__init__.py), and an explicit value wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ml.config import REPO_ROOT

# A process that imports `ml` (or not) before numpy, runs a 2-thread matrix product, then sleeps: the
# CPU time it uses while asleep is what OpenBLAS's idle threads burn spinning.
IDLE_CPU = """
import json, os, sys, time
if sys.argv[1] == "ml":
    import ml
import numpy as np
from threadpoolctl import threadpool_info
threads = max((p["num_threads"] for p in threadpool_info() if p["internal_api"] == "openblas"), default=0)
a = np.ones((1500, 1500), np.float32)
idle = 0.0
for _ in range(3):
    a @ a
    t = time.process_time()
    time.sleep(0.3)
    idle += time.process_time() - t
timeout = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
print(json.dumps({"threads": threads, "idle_cpu_s": idle, "timeout": timeout}))
"""


def idle_cpu(first: str, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run(
        [sys.executable, "-c", IDLE_CPU, first],
        env={**base, "OPENBLAS_NUM_THREADS": "2", **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def spinning() -> dict:
    """A process that loads numpy without `ml`: OpenBLAS's own spin (~0.1 s of a core per idle)."""
    plain = idle_cpu("plain")
    if plain["threads"] < 2:
        pytest.skip(
            f"OpenBLAS runs {plain['threads']} thread(s) here (CPUs: {os.cpu_count()}): nothing spins"
        )
    return plain


def test_ml_stops_openblas_spinning_between_products(spinning):
    # without the default, each idle 0.3 s costs ~0.1 s of a core: 3 of them ~0.3 s; with it ~2 ms each
    assert spinning["timeout"] is None
    assert spinning["idle_cpu_s"] > 0.06, spinning
    quiet = idle_cpu("ml")
    assert quiet["timeout"] == "22"
    assert quiet["idle_cpu_s"] < 0.05, quiet


def test_an_explicit_openblas_thread_timeout_wins(spinning):
    explicit = idle_cpu("ml", OPENBLAS_THREAD_TIMEOUT="28")
    assert explicit["timeout"] == "28"
    assert explicit["idle_cpu_s"] > 0.06, explicit


def test_an_empty_openblas_thread_timeout_gets_the_default(spinning):
    # OpenBLAS reads "" as 0, its own 2^28: empty means unset, as for every setting here
    empty = idle_cpu("ml", OPENBLAS_THREAD_TIMEOUT="")
    assert empty["timeout"] == "22"
    assert empty["idle_cpu_s"] < 0.05, empty
