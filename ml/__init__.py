"""Hybrid fashion recommender: the library (data, encoders, model, training, evaluation, serving).

Nothing in here imports Flask or Celery; `tasks/` and `web/` are thin adapters over it.
"""

import os as _os

# TensorFlow's oneDNN kernels, before anything imports TensorFlow. TensorFlow turns them on by
# default only on CPUs it deems to benefit (AVX-512 and newer); on this AVX2 machine they double the
# image encoder (EfficientNet-Lite0: 26.5 -> 41.2 images/s in `bench encoders`, 28 -> 53 on synthetic
# 224x224 batches; MiniLM 112 -> 119 texts/s). An explicit TF_ENABLE_ONEDNN_OPTS=0 still wins.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# OpenBLAS (numpy's BLAS) keeps its helper threads spinning for 2^28 cycles (~0.1 s of a whole core)
# after every matrix product. Where processes share the cores (prefork children, workers scaled on one
# host, a worker beside training or a benchmark) those spins take the core the next request needs:
# the REAL 2023 catalog served by 2 prefork children, `bench serving` interleaved, Celery p50 / p99
# 33.6 / 95.6 ms against 11.5 / 19.5 ms with 2^18 cycles (~0.1 ms: the threads stay hot across one
# pass's back-to-back products, then sleep). OpenBLAS reads this when numpy loads it, so before anything
# imports numpy (the worker, `python -m ml` and `python -m bench` import `ml` first); an explicit
# OPENBLAS_THREAD_TIMEOUT still wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")
