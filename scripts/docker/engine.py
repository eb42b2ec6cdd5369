"""The Docker engine for `make test-docker`: tools present, an engine answering.

    python -m scripts.docker.engine check      # tools installed? engine answering? (exit 0/1)
    python -m scripts.docker.engine install    # apt-get install what is missing (root)

`ensure_tools()` installs the missing tools with apt-get (Debian's docker.io, debootstrap,
docker-compose) when running as root, and raises with the reason otherwise. `Engine.start()` returns
at once when an engine already answers (and will not stop it); else it starts `dockerd` with the
first option set that comes up (see DOCKERD_ATTEMPTS), logging to var/docker/, and `stop()` stops
only that daemon (SIGTERM; dockerd stops the containerd it started).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = ROOT / "var" / "docker"
# binary -> Debian package
TOOLS = {
    "dockerd": "docker.io",
    "containerd": "containerd",
    "runc": "runc",
    "docker": "docker.io",
    "debootstrap": "debootstrap",
    "docker-compose": "docker-compose",
}
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Tried in order until one answers; each is (name, extra dockerd arguments). The first is the
# normal daemon (overlay2, bridge network with iptables NAT); the others drop what a sandbox may lack.
DOCKERD_ATTEMPTS: list[tuple[str, list[str]]] = [
    ("default", []),
    ("vfs", ["--storage-driver=vfs"]),
    ("vfs-no-iptables", ["--storage-driver=vfs", "--iptables=false", "--ip-masq=false"]),
]


class EngineUnavailable(RuntimeError):
    """No Docker engine can run here; the message says why (with the daemon's own error)."""


def which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":" + SBIN_PATH)


def missing_tools() -> list[str]:
    return [name for name in TOOLS if which(name) is None]


def ensure_tools() -> list[str]:
    """Install the missing tools with apt-get; return what was installed. Raises when impossible."""
    missing = missing_tools()
    if not missing:
        return []
    packages = sorted({TOOLS[name] for name in missing})
    if os.geteuid() != 0:
        raise EngineUnavailable(
            f"missing {', '.join(missing)} and not root: apt-get install -y {' '.join(packages)} needs root"
        )
    if which("apt-get") is None:
        raise EngineUnavailable(f"missing {', '.join(missing)} and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": SBIN_PATH}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *packages]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise EngineUnavailable(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    still = missing_tools()
    if still:
        raise EngineUnavailable(f"still missing after apt-get install: {', '.join(still)}")
    return packages


def engine_answers(timeout_s: float = 10.0) -> bool:
    try:
        return (
            subprocess.run(
                ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=timeout_s
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def engine_info() -> dict[str, str]:
    fmt = (
        "{{.ServerVersion}}|{{.Driver}}|{{.CgroupDriver}}|{{.CgroupVersion}}|{{.NCPU}}|"
        "{{.MemTotal}}|{{.KernelVersion}}"
    )
    out = (
        subprocess.run(["docker", "info", "--format", fmt], capture_output=True, text=True, timeout=30)
        .stdout.strip()
        .split("|")
    )
    keys = (
        "server_version",
        "storage_driver",
        "cgroup_driver",
        "cgroup_version",
        "ncpu",
        "mem_total",
        "kernel",
    )
    return dict(zip(keys, out))


def _container_runs(timeout_s: float = 120.0) -> tuple[bool, str]:
    """Can this engine run a container with a network? Uses any local image (no registry)."""
    images = subprocess.run(
        ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True
    ).stdout.split()
    images = [i for i in images if not i.endswith(":<none>")]
    if not images:
        return True, "no local image yet to try a container with"
    proc = subprocess.run(
        ["docker", "run", "--rm", images[0], "/bin/sh", "-c", "echo ok"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return proc.returncode == 0 and "ok" in proc.stdout, proc.stderr.strip()[-500:]


@dataclass
class Engine:
    started: bool = False
    attempt: str = "already running"
    proc: subprocess.Popen | None = None
    log_file: Path | None = None
    errors: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, start_timeout_s: float = 90.0) -> Engine:
        if engine_answers():
            return cls()
        if which("dockerd") is None:
            raise EngineUnavailable("no engine answers and dockerd is not installed")
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        errors = []
        for name, extra in DOCKERD_ATTEMPTS:
            log_file = LOG_DIR / f"dockerd-{name}.log"
            cmd = [
                which("dockerd"),
                "--host",
                "unix:///var/run/docker.sock",
                "--data-root",
                os.environ.get("RECSYS_DOCKER_DATA_ROOT", "/var/lib/docker"),
                "--exec-root",
                "/var/run/docker",
                "--pidfile",
                "/var/run/docker.pid",
                *extra,
            ]
            with open(log_file, "ab") as out:
                proc = subprocess.Popen(
                    cmd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env={**os.environ, "PATH": SBIN_PATH + ":" + os.environ.get("PATH", "")},
                )
            engine = cls(started=True, attempt=name, proc=proc, log_file=log_file, errors=errors)
            deadline = time.monotonic() + start_timeout_s
            while time.monotonic() < deadline and proc.poll() is None and not engine_answers(5):
                time.sleep(1)
            if proc.poll() is None and engine_answers():
                ok, why = _container_runs()
                if ok:
                    return engine
                errors.append(f"{name}: dockerd up but a container does not run: {why}")
            else:
                tail = log_file.read_text(errors="replace").splitlines()[-8:]
                errors.append(
                    f"{name} ({' '.join(extra) or 'no extra options'}): "
                    f"{'exited ' + str(proc.returncode) if proc.poll() is not None else 'no answer'}"
                    f"\n    " + "\n    ".join(tail)
                )
            engine.stop()
        raise EngineUnavailable("dockerd could not be started with any option set:\n" + "\n".join(errors))

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the daemon this object started (nothing when it found one running)."""
        if not self.started or self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def main(argv: list[str]) -> int:
    what = argv[1] if len(argv) > 1 else "check"
    if what == "install":
        print("installed:", ensure_tools() or "nothing (all present)")
        return 0
    missing = missing_tools()
    print("missing tools:", ", ".join(missing) or "none")
    answers = engine_answers()
    print("engine answers:", answers, engine_info() if answers else "")
    return 0 if answers and not missing else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
