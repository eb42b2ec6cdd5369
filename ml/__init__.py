"""Hybrid fashion recommender: the library (data, encoders, model, training, evaluation, serving).

Nothing in here imports Flask or Celery; `tasks/` and `web/` are thin adapters over it.
"""

import os as _os

# TensorFlow's oneDNN kernels, before anything imports TensorFlow. TensorFlow turns them on by
# default only on CPUs it deems to benefit (AVX-512 and newer); on this AVX2 machine they double the
# image encoder (EfficientNet-Lite0: 26.5 -> 41.2 images/s in `bench encoders`, 28 -> 53 on synthetic
# 224x224 batches; MiniLM 112 -> 119 texts/s). An explicit TF_ENABLE_ONEDNN_OPTS=0 still wins.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# OpenBLAS (numpy's BLAS) keeps each of its helper threads spinning for 2^28 cycles (~0.1 s of a core
# each) after every multi-threaded matrix product. Everything else on the host waits for those cores:
# another pool child or worker serving, the Celery parent, Redis, the web server. 2^22 cycles (~1.6 ms)
# instead; not shorter, because a training process alone on the cores reuses the spinning threads
# between back-to-back products (the ranking choice: +6% at 2^22, +14% at 2^18). Measurements:
# docs/HISTORY.md, session 18. OpenBLAS reads this when numpy loads it, so before anything imports numpy (the
# worker, `python -m ml` and `python -m bench` import `ml` first; child processes inherit it). A value
# set (not empty) in the environment wins.
if not _os.environ.get("OPENBLAS_THREAD_TIMEOUT"):
    _os.environ["OPENBLAS_THREAD_TIMEOUT"] = "22"
