"""The registry of submitted job ids, in Redis with a TTL.

Celery reports PENDING for any id, known or not; this registry is how `GET /jobs/<id>` tells a
queued job from an id that was never submitted (404).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import redis

KEY_PREFIX = "recsys:job:"
JOB_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class JobStore:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = int(ttl_s)

    def add(self, job_id: str, kind: str, **meta: Any) -> None:
        record = {"kind": kind, "submitted_at": time.time(), **meta}
        self.client.set(KEY_PREFIX + job_id, json.dumps(record), ex=self.ttl_s)

    def get(self, job_id: str) -> dict[str, Any] | None:
        if not JOB_ID_RE.fullmatch(job_id or ""):
            return None
        raw = self.client.get(KEY_PREFIX + job_id)
        return None if raw is None else json.loads(raw)

    def discard(self, job_id: str) -> None:
        try:
            self.client.delete(KEY_PREFIX + job_id)
        except redis.RedisError:
            pass
