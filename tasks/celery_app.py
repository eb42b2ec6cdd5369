"""The Celery application: `make_celery(settings)` and the module-level `app`.

    celery -A tasks.celery_app:app worker -Q inference,training --pool prefork

Broker and result backend are the Redis at `Settings.redis_url` (REDIS_URL). All configuration comes
from one dict, `celery_config(settings)`, so the worker and the web front end agree on it.
"""
from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from ml.config import Settings, get_settings
from tasks import names

TASK_MODULES = ("tasks.recommend", "tasks.training")


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings (lower-case, new-style names) derived from `settings`."""
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        # JSON only: a pickle payload is refused by the worker and by result readers.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # At-least-once: the message is acknowledged after the task ran, and requeued if the pool
        # child dies mid-task (OOM, hard time limit kill).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        "result_expires": settings.result_expires_s,
        "result_extended": True,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        # Training has its own (longer) limits.
        "task_annotations": {
            names.TRAIN: {
                "soft_time_limit": settings.train_soft_time_limit_s,
                "time_limit": settings.train_time_limit_s,
                # A training run that kills its process (OOM) must not be redelivered forever.
                "reject_on_worker_lost": False,
            },
        },
        "task_queues": (
            Queue(names.INFERENCE_QUEUE, routing_key=names.INFERENCE_QUEUE),
            Queue(names.TRAINING_QUEUE, routing_key=names.TRAINING_QUEUE),
        ),
        "task_default_queue": names.INFERENCE_QUEUE,
        "task_routes": {
            "recsys.recommend*": {"queue": names.INFERENCE_QUEUE},
            names.CUSTOMERS: {"queue": names.INFERENCE_QUEUE},
            names.TRAIN: {"queue": names.TRAINING_QUEUE},
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 2.0,
        # A producer (the web app) gives up quickly when Redis is down and answers 503.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "redis_socket_connect_timeout": 2.0,
        "redis_socket_timeout": 30.0,
        "redis_retry_on_timeout": True,
        # Model load happens in worker_process_init; Celery kills a child that is slower than this.
        "worker_proc_alive_timeout": settings.worker_init_timeout_s,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
    }


def make_celery(settings: Settings | None = None, main: str = "recsys") -> Celery:
    """A configured Celery app. The worker's app includes the task modules."""
    settings = settings or get_settings()
    celery = Celery(main, include=list(TASK_MODULES))
    celery.conf.update(celery_config(settings))
    celery.recsys_settings = settings  # type: ignore[attr-defined]
    return celery


app = make_celery()
