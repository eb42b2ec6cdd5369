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

TASK_MODULES = ("tasks.recommend", "tasks.training", "tasks.feedback")


def check_visibility_timeout(settings: Settings) -> int:
    """The broker visibility timeout, refused when a task could still be running after it.

    With the Redis transport an unacknowledged message goes back to its queue once it is older than
    the visibility timeout, whether or not the worker that took it is alive: a task that runs longer
    than the timeout is delivered and run a second time (celery #5935). Inference tasks are
    acknowledged after they ran (acks_late) and end at the hard limit at the latest; training is
    acknowledged on receipt, so its hour-long limit does not count here."""
    timeout = int(settings.broker_visibility_timeout_s)
    if timeout <= settings.task_time_limit_s:
        raise ValueError(
            f"RECSYS_BROKER_VISIBILITY_TIMEOUT_S={timeout} must be longer than the hard task time "
            f"limit RECSYS_TASK_HARD_LIMIT_S={settings.task_time_limit_s}: a task still running at "
            "the visibility timeout is delivered again"
        )
    return timeout


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings (lower-case, new-style names) derived from `settings`."""
    visibility_timeout = check_visibility_timeout(settings)
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        # JSON only: a pickle payload is refused by the worker and by result readers.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # At-least-once (docs/SERVICE.md, "Faults"): the message is acknowledged after the task
        # ran. A pool child that dies mid-task (kill -9, OOM) has its message requeued at once
        # (reject_on_worker_lost; without it acks_late does not cover a lost child, celery #6178).
        # A worker whose main process dies acknowledges nothing: its unacked message goes back
        # after the visibility timeout, swept by any live worker (celery #4984).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A redelivered message whose job already succeeded (the main process died between the
        # stored result and the ack) is acknowledged without running again: one result per job.
        "worker_deduplicate_successful_tasks": True,
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout,
            # sweep every broker_restore_interval_s (kombu scans on every Nth sweep; N = 1)
            "unacked_restore_interval": max(1, int(settings.broker_restore_interval_s)),
            "unacked_restore_throttle": 1,
        },
        "worker_prefetch_multiplier": 1,
        # No STARTED state for inference: a recommendation runs for milliseconds, and storing and
        # publishing the state before it runs is a Redis round trip in front of every answer
        # (~2 ms of a ~10 ms hop, measured). Training reports STARTED (annotation below) and its
        # epochs (PROGRESS).
        "task_track_started": False,
        "result_expires": settings.result_expires_s,
        # A result stored while Redis restarts is retried (backoff up to 2 s, about a minute in
        # all) instead of being lost after the task ran.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 40,
        "result_backend_max_sleep_between_retries_ms": 2000,
        "result_extended": True,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        # Training has its own (longer) limits.
        "task_annotations": {
            names.TRAIN: {
                "soft_time_limit": settings.train_soft_time_limit_s,
                "time_limit": settings.train_time_limit_s,
                # A training run that kills its process (OOM) must not be redelivered forever, and
                # it is acknowledged on receipt: an hour-long run must not outlive the visibility
                # timeout unacknowledged (it would be delivered again while running, celery #5935).
                "reject_on_worker_lost": False,
                "acks_late": False,
                "track_started": True,
            }
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
        # Task events (received/started/succeeded; "sent" from the web app) are what Flower shows,
        # and each is a Redis PUBLISH on the request's path: ~4 ms of a ~10 ms hop, measured. They
        # are off until a Flower is watching: Flower switches the workers' events on itself
        # (`enable_events`, every few seconds while it runs). The web app sends no "sent" event:
        # Flower lists a job once a worker has received it (queued jobs: the job store and the
        # queue length).
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": True,
        # A task running when the broker connection drops finishes (its result store is retried);
        # its message, not acknowledged on the lost connection, comes back after the visibility
        # timeout and is acknowledged without running again (worker_deduplicate_successful_tasks).
        # Cancelling it instead terminates the pool child: every Redis blip would cost a model
        # reload per busy child.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


def make_celery(settings: Settings | None = None, main: str = "recsys") -> Celery:
    """A configured Celery app. The worker's app includes the task modules."""
    settings = settings or get_settings()
    celery = Celery(main, include=list(TASK_MODULES))
    celery.conf.update(celery_config(settings))
    celery.recsys_settings = settings  # type: ignore[attr-defined]
    return celery


app = make_celery()
