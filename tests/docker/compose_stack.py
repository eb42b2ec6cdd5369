"""Helpers of tests/docker: the throwaway-.env compose stack, a small HTTP client, the report file."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "var" / "docker" / "report.json"
IMAGE_NAME = os.environ.get("RECSYS_TEST_IMAGE", "recsys-local")
COMPOSE_TIMEOUT_S = 3600


def report(key: str, value) -> None:
    """Merge one figure into var/docker/report.json."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data[key] = value
    REPORT.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Http:
    """Tiny JSON client (status, body) that never raises on HTTP errors."""

    def __init__(self, base: str, auth: tuple[str, str] | None = None) -> None:
        self.base = base
        self.auth = auth

    def request(self, method: str, path: str, payload=None, auth=..., timeout: float = 30.0):
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        auth = self.auth if auth is ... else auth
        if auth:
            headers["Authorization"] = "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw, status = r.read(), r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        except OSError as e:  # connection refused/reset while a container restarts
            return 0, {"error": repr(e)}
        try:
            return status, json.loads(raw) if raw else {}
        except ValueError:
            return status, {"raw": raw[:500].decode(errors="replace")}

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, payload, **kw):
        return self.request("POST", path, payload, **kw)


class Stack:
    def __init__(self, workdir: Path, base_image: str, redis_image: str) -> None:
        self.project = f"recsys-test-{secrets.token_hex(4)}"
        self.flower_user = f"admin-{secrets.token_hex(3)}"
        self.flower_password = secrets.token_hex(24)
        self.web_port, self.flower_port = free_port(), free_port()
        self.env_file = workdir / ".env"
        self.env_file.write_text(
            "\n".join(
                [
                    f"REDIS_PASSWORD={secrets.token_hex(32)}",
                    f"FLOWER_USER={self.flower_user}",
                    f"FLOWER_PASSWORD={self.flower_password}",
                    f"RECSYS_WEB_PORT={self.web_port}",
                    f"RECSYS_FLOWER_PORT={self.flower_port}",
                    f"RECSYS_IMAGE={IMAGE_NAME}",
                    f"RECSYS_BASE_IMAGE={base_image}",
                    f"REDIS_IMAGE={redis_image}",
                    # Redelivery of a killed worker's jobs in seconds, not the production 600 s: short task
                    # limits, and a visibility timeout above the hard limit and a model load here.
                    "RECSYS_TASK_SOFT_LIMIT_S=20",
                    "RECSYS_TASK_HARD_LIMIT_S=30",
                    "RECSYS_BROKER_VISIBILITY_TIMEOUT_S=90",
                    "RECSYS_BROKER_RESTORE_INTERVAL_S=2",
                ]
            )
            + "\n"
        )
        self.env_file.chmod(0o600)
        self.web = Http(f"http://127.0.0.1:{self.web_port}")
        self.flower = Http(f"http://127.0.0.1:{self.flower_port}", (self.flower_user, self.flower_password))
        # Only what compose needs: no developer shell variable may override the throwaway .env.
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "DOCKER_HOST", "DOCKER_CONFIG")
        }
        self.env.update(
            {
                "COMPOSE_PROJECT_NAME": self.project,
                "COMPOSE_HTTP_TIMEOUT": "600",
                "DOCKER_CLIENT_TIMEOUT": "600",
            }
        )

    def compose(
        self, *args: str, timeout: float = COMPOSE_TIMEOUT_S, check: bool = True, capture: bool = False
    ) -> subprocess.CompletedProcess:
        cmd = [
            "docker-compose",
            "--project-directory",
            str(ROOT),
            "-f",
            str(ROOT / "docker-compose.yml"),
            "--env-file",
            str(self.env_file),
            "-p",
            self.project,
            *args,
        ]
        proc = subprocess.run(cmd, cwd=ROOT, env=self.env, timeout=timeout, text=True, capture_output=capture)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({proc.returncode}): {(proc.stderr or '')[-3000:]}"
            )
        return proc

    def containers(self, service: str, all_: bool = False) -> list[str]:
        """Full ids of the service's containers (running ones unless all_)."""
        cmd = [
            "docker",
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            f"label=com.docker.compose.project={self.project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ]
        if all_:
            cmd.insert(2, "-a")
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()

    def logs(self, *services: str, tail: int = 80) -> str:
        return self.compose(
            "logs", "--no-color", f"--tail={tail}", *services, check=False, capture=True, timeout=120
        ).stdout

    def flower_workers(self) -> dict:
        status, body = self.flower.get("/api/workers?refresh=1", timeout=30)
        return body if status == 200 else {}

    def wait(self, what: str, predicate, timeout_s: float, interval_s: float = 2.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval_s)
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{self.logs()}")
