"""Base images without a registry, built locally and cached by tag.

    python -m scripts.docker.base_images [--force]

- PYTHON_BASE (`recsys-local/python:3.11-bookworm`): a Debian bookworm root file system made by
  `debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates` (Python 3.11.2),
  imported with `docker import`. It carries the host's CA bundle (so pip works in image builds behind
  a TLS-inspecting proxy), `python` -> python3 (as in `python:3.11-slim-bookworm`), PATH and LANG.
  docker/Dockerfile takes it through `--build-arg BASE_IMAGE=...`; its default stays the official
  `python:3.11-slim-bookworm`.
- REDIS_BASE (`recsys-local/redis:7-bookworm`): Debian's `redis-server` (7.0) and `redis-cli` on the
  same minbase, running as the package's `redis` user in /data (like the official image). Compose
  takes it from `REDIS_IMAGE`.

An image whose tag `docker image inspect` finds is not rebuilt (unless --force).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON_BASE = os.environ.get("RECSYS_PYTHON_BASE_IMAGE", "recsys-local/python:3.11-bookworm")
REDIS_BASE = os.environ.get("RECSYS_REDIS_BASE_IMAGE", "recsys-local/redis:7-bookworm")
SUITE = "bookworm"
MIRROR = os.environ.get("RECSYS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
REDIS_DOCKERFILE = ROOT / "docker" / "redis.Dockerfile"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(msg: str) -> None:
    print(f"[base-images] {msg}", file=sys.stderr, flush=True)


def image_exists(tag: str) -> bool:
    """True when the engine has the tag; raises when the engine does not answer (not "missing")."""
    proc = subprocess.run(
        ["docker", "image", "inspect", tag], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if proc.returncode == 0:
        return True
    if "no such image" in proc.stderr.lower():
        return False
    raise RuntimeError(f"docker image inspect {tag} failed: {proc.stderr.strip()}")


def image_size_mb(tag: str) -> float:
    out = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Size}}", tag], check=True, capture_output=True, text=True
    ).stdout
    return int(out.strip()) / 1e6


def _trim_rootfs(rootfs: Path) -> None:
    """Drop what an image never needs: apt caches and lists, docs, man pages, locales."""
    for rel in ("var/cache/apt/archives", "var/lib/apt/lists", "var/cache/apt"):
        d = rootfs / rel
        if d.is_dir():
            for p in d.iterdir():
                if p.is_file() and p.name != "lock":
                    p.unlink()
    for rel in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale"):
        d = rootfs / rel
        if d.is_dir():
            shutil.rmtree(d)
            d.mkdir()
    for p in (rootfs / "var/cache/debconf").glob("*-old"):
        p.unlink()


def build_python_base(tag: str = PYTHON_BASE) -> None:
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install -y debootstrap)")
    if not HOST_CA_BUNDLE.is_file():
        raise RuntimeError(f"the host CA bundle {HOST_CA_BUNDLE} is missing")
    work = Path(tempfile.mkdtemp(prefix="recsys-rootfs-", dir=os.environ.get("RECSYS_DOCKER_TMP")))
    rootfs = work / "rootfs"
    try:
        t0 = time.monotonic()
        log(f"debootstrap {SUITE} ({MIRROR}) into {rootfs}")
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                SUITE,
                str(rootfs),
                MIRROR,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # The host CA bundle (a superset of Debian's where a proxy re-signs TLS) for pip in builds.
        shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        py = rootfs / "usr/local/bin/python"
        if not py.exists():
            py.symlink_to("/usr/bin/python3")
        # The same apt sources as the official Debian images, so derived images can apt-get install.
        (rootfs / "etc/apt/sources.list").write_text(
            f"deb {MIRROR} {SUITE} main\n"
            f"deb {MIRROR} {SUITE}-updates main\n"
            f"deb http://deb.debian.org/debian-security {SUITE}-security main\n"
        )
        (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(
            'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };\n'
            'APT::Install-Recommends "false";\n'
        )
        _trim_rootfs(rootfs)
        log(f"rootfs ready in {time.monotonic() - t0:.0f} s; docker import -> {tag}")
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        subprocess.run(
            [
                "docker",
                "import",
                "--change",
                f"ENV PATH={DEFAULT_PATH}",
                "--change",
                "ENV LANG=C.UTF-8",
                # pip (bookworm's ensurepip ships pip 23, which reads certifi, not the
                # system store) trusts the bundle above.
                "--change",
                "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                "--change",
                'CMD ["python3"]',
                "-",
                tag,
            ],
            stdin=tar.stdout,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tar.stdout.close()
        if tar.wait() != 0:
            raise RuntimeError("tar of the root file system failed")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_redis(tag: str = REDIS_BASE, base: str = PYTHON_BASE) -> None:
    log(f"docker build {REDIS_DOCKERFILE.name} FROM {base} -> {tag}")
    subprocess.run(
        [
            "docker",
            "build",
            "-q",
            "-f",
            str(REDIS_DOCKERFILE),
            "--build-arg",
            f"BASE_IMAGE={base}",
            "-t",
            tag,
            str(REDIS_DOCKERFILE.parent),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def ensure(force: bool = False) -> dict[str, dict]:
    """Build the missing base images; return {tag: {"built": bool, "seconds": s, "size_mb": mb}}."""
    report: dict[str, dict] = {}
    for tag, build in ((PYTHON_BASE, build_python_base), (REDIS_BASE, build_redis)):
        t0 = time.monotonic()
        built = force or not image_exists(tag)
        if built:
            build(tag)
        else:
            log(f"{tag}: cached")
        report[tag] = {
            "built": built,
            "seconds": round(time.monotonic() - t0, 1),
            "size_mb": round(image_size_mb(tag), 1),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="rebuild even when the tags exist")
    args = ap.parse_args(argv)
    for tag, info in ensure(args.force).items():
        print(f"{tag}: {'built' if info['built'] else 'cached'} in {info['seconds']} s, {info['size_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
