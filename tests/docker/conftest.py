"""The Docker Compose stack for real: `make test-docker` (RECSYS_DOCKER_TESTS=1).

Not collected by `make test` (minutes of image builds, root, a Docker engine): without
RECSYS_DOCKER_TESTS=1 nothing here is collected, so the normal run neither runs nor skips it.

Session fixtures, in order:
- `engine`: the tools (apt-get installs docker.io, debootstrap, docker-compose when missing; a
  failure there fails the run) and an engine: one that answers is used as is, else `dockerd` is
  started and stopped again at the end. When no engine can run here, the tests skip with dockerd's
  own error.
- `base_images`: the local Python 3.11 bookworm base (debootstrap + host CA bundle) and a Redis image
  from Debian's redis-server, cached by tag.
- `stack`: the project's own docker-compose.yml with a throwaway `.env` (generated secrets, free
  host ports, a unique COMPOSE_PROJECT_NAME): `build`, then `up -d --scale worker=2` (the one-shot
  `train` service builds the first model into the `models` volume); `down -v` always, at the end.

Figures (timings, image sizes, latency) go to var/docker/report.json, not into assertions.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

if os.environ.get("RECSYS_DOCKER_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]
else:
    from compose_stack import Stack, report


@pytest.fixture(scope="session")
def engine():
    from scripts.docker import engine as eng

    t0 = time.monotonic()
    installed = eng.ensure_tools()  # raises (fails the run) when the tools cannot be installed
    try:
        handle = eng.Engine.start()
    except eng.EngineUnavailable as exc:
        pytest.skip(f"no Docker engine can run on this machine: {exc}")
    report(
        "engine",
        {
            **eng.engine_info(),
            "started_by_test": handle.started,
            "dockerd_options": handle.attempt,
            "installed_packages": installed,
            "seconds": round(time.monotonic() - t0, 1),
        },
    )
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def base_images(engine):
    from scripts.docker import base_images as bi

    info = bi.ensure()
    report("base_images", info)
    return bi.PYTHON_BASE, bi.REDIS_BASE


@pytest.fixture(scope="session")
def stack(base_images, tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("compose"), *base_images)
    timings = {}
    try:
        t0 = time.monotonic()
        s.compose("build")
        timings["build_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        # Blocks until `train` has exited 0 (the workers depend on it), then starts the rest.
        s.compose("up", "-d", "--scale", "worker=2")
        timings["up_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        s.wait("readyz 200", lambda: s.web.get("/readyz")[0] == 200, 600)
        # /readyz answers 200 once a worker answers a ping, before any has loaded the model
        # (/customers is 503 "no worker has loaded a model yet" until then).
        s.wait("a worker serving the model", lambda: s.web.get("/customers?limit=1")[0] == 200, 600)
        s.wait("Flower listing 2 workers", lambda: len(s.flower_workers()) == 2, 300, 5)
        timings["ready_after_up_s"] = round(time.monotonic() - t0, 1)
        report("stack", timings)
        yield s
    finally:
        t0 = time.monotonic()
        s.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False, timeout=600)
        left = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={s.project}"],
            capture_output=True,
            text=True,
        ).stdout.split()
        vols = subprocess.run(
            ["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={s.project}"],
            capture_output=True,
            text=True,
        ).stdout.split()
        report(
            "down",
            {"seconds": round(time.monotonic() - t0, 1), "containers_left": left, "volumes_left": vols},
        )
