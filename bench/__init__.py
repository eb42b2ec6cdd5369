"""Benchmarks: `python -m bench [what ...]` (bench/__main__.py), `make bench`."""

import ml  # noqa: F401  first: its process defaults (OpenBLAS's thread spin) must precede numpy
