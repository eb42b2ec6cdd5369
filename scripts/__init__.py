"""Operational scripts: `python -m scripts.run_stack` (what `make run` starts)."""
