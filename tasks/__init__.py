"""Celery adapters over `ml/`: the app (`tasks.celery_app`), the per-process model holder and the tasks.

Run a worker with `celery -A tasks.celery_app:app worker -Q inference,training`. Nothing here imports
Flask; nothing imports TensorFlow at module import time (the model is loaded in each pool child).
"""
