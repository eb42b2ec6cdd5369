"""Hybrid fashion recommender: the library (data, encoders, model, training, evaluation, serving).

Nothing in here imports Flask or Celery; `tasks/` and `web/` are thin adapters over it.
"""

import os as _os

# TensorFlow's oneDNN kernels, before anything imports TensorFlow. TensorFlow turns them on by
# default only on CPUs it deems to benefit (AVX-512 and newer); on this AVX2 machine they double the
# image encoder (EfficientNet-Lite0: 26.5 -> 41.2 images/s in `bench encoders`, 28 -> 53 on synthetic
# 224x224 batches; MiniLM 112 -> 119 texts/s). An explicit TF_ENABLE_ONEDNN_OPTS=0 still wins.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
