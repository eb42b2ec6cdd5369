"""Hybrid fashion recommender: the library (data, encoders, model, training, evaluation, serving).

Nothing in here imports Flask or Celery; `tasks/` and `web/` are thin adapters over it.
"""
