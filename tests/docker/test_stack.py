"""The compose stack against its API contract, under faults (a killed worker, a scale-up while
serving, a Redis restart). The tests share one stack and run in file order: contract, latency,
images, then the faults, which change the stack."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from compose_stack import IMAGE_NAME, ROOT, report

TOP = 5
FINISHED = ("succeeded", "failed")


def customers(stack, n: int) -> list[str]:
    status, body = stack.web.get(f"/customers?limit={n}")
    assert status == 200, body
    assert body["customers"], body
    return body["customers"]


def submit(stack, customer: str, top: int = TOP) -> str | None:
    """POST /jobs; the job id when accepted (202), else None (e.g. 503 while Redis is down)."""
    status, body = stack.web.post("/jobs", {"customer_id": customer, "top": top})
    return body["job_id"] if status == 202 else None


def poll(stack, job_id: str, timeout_s: float = 300.0, interval_s: float = 0.005) -> dict:
    deadline = time.monotonic() + timeout_s
    job: dict = {}
    while time.monotonic() < deadline:
        status, job = stack.web.get(f"/jobs/{job_id}")
        if status == 200 and job.get("state") in FINISHED:
            return job
        time.sleep(interval_s)
    raise AssertionError(f"job {job_id} not finished after {timeout_s} s: {job}\n{stack.logs('worker')}")


def wait_all(stack, job_ids: list[str], timeout_s: float) -> dict[str, dict]:
    """Every job's final state (GET /jobs/<id>?wait=... so no busy polling)."""
    deadline = time.monotonic() + timeout_s
    done: dict[str, dict] = {}
    while len(done) < len(job_ids) and time.monotonic() < deadline:
        for job_id in job_ids:
            if job_id in done:
                continue
            status, job = stack.web.get(f"/jobs/{job_id}?wait=5", timeout=30)
            if status == 200 and job.get("state") in FINISHED:
                done[job_id] = job
            elif status == 404:
                done[job_id] = {"state": "lost (404)"}
    missing = [j for j in job_ids if j not in done]
    assert not missing, f"{len(missing)} jobs unfinished after {timeout_s} s\n{stack.logs('worker', 'redis')}"
    return done


def worker_names(stack) -> dict[str, str]:
    """celery@<hostname> -> container id, for the running worker containers (hostname = id[:12])."""
    return {f"celery@{cid[:12]}": cid for cid in stack.containers("worker")}


def flower_task_workers(stack, job_ids: set[str]) -> dict[str, str]:
    status, tasks = stack.flower.get("/api/tasks?limit=100000", timeout=60)
    assert status == 200, tasks
    return {tid: t.get("worker") for tid, t in tasks.items() if tid in job_ids}


# ------------------------------------------------------------------------------------------------
# contract


def test_job_succeeds_with_top_distinct_products(stack):
    job_id = submit(stack, customers(stack, 1)[0])
    assert job_id
    job = poll(stack, job_id)
    assert job["state"] == "succeeded", job
    ids = [item["product_id"] for item in job["result"]["items"]]
    assert len(ids) == TOP and len(set(ids)) == TOP, ids
    assert job["model_version"], job


def test_sync_recommendation_get(stack):
    cid = customers(stack, 1)[0]
    status, body = stack.web.get(f"/recommendation?customer_id={cid}&top=3")
    assert status == 200, body
    assert len({item["product_id"] for item in body["items"]}) == 3, body


def test_unknown_job_404_and_top_zero_400(stack):
    status, body = stack.web.get("/jobs/00000000-0000-0000-0000-000000000000")
    assert status == 404, body
    cid = customers(stack, 1)[0]
    status, body = stack.web.post("/jobs", {"customer_id": cid, "top": 0})
    assert status == 400 and body.get("status") == 400, body
    status, body = stack.web.get(f"/recommendation?customer_id={cid}&top=0")
    assert status == 400, body


def test_flower_auth_and_two_workers(stack):
    status, _ = stack.flower.get("/", auth=None)
    assert status == 401
    status, _ = stack.flower.get("/", auth=(stack.flower_user, "wrong-password"))
    assert status == 401
    status, _ = stack.flower.get("/")
    assert status == 200
    workers = stack.flower_workers()
    assert sorted(workers) == sorted(worker_names(stack)), (workers.keys(), worker_names(stack))
    assert len(workers) == 2


def test_compose_ps_healthy(stack):
    """Every long-running container is running and its health check says healthy; train exited 0."""

    def states():
        out = {}
        for service in ("redis", "web", "worker", "flower"):
            for cid in stack.containers(service):
                out[cid[:12]] = (
                    service,
                    subprocess.run(
                        ["docker", "inspect", "-f", "{{.State.Health.Status}}", cid],
                        capture_output=True,
                        text=True,
                    ).stdout.strip(),
                )
        return out

    # The worker's first health check runs 60 s after start (interval), the others' after 10-30 s.
    stack.wait("every container healthy", lambda: all(h == "healthy" for _, h in states().values()), 300, 5)
    assert len(states()) == 5, states()
    train = stack.containers("train", all_=True)
    assert len(train) == 1
    code = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.ExitCode}}", train[0]], capture_output=True, text=True
    ).stdout.strip()
    assert code == "0"


# ------------------------------------------------------------------------------------------------
# latency (reported, not asserted)


def test_latency_post_and_poll(stack):
    """100 sequential jobs: POST /jobs, then GET /jobs/<id> every 5 ms until succeeded (the same
    method as `python -m bench serving`'s "http" path)."""
    cids = customers(stack, 100)
    cids = (cids * 100)[:100]
    poll(stack, submit(stack, cids[0]))  # warm
    times = []
    for cid in cids:
        t = time.perf_counter()
        job = poll(stack, submit(stack, cid), timeout_s=60)
        times.append(time.perf_counter() - t)
        assert job["state"] == "succeeded", job
    ms = np.array(times) * 1000
    figures = {
        "n": len(ms),
        "top": TOP,
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "workers": 2,
        "method": "POST /jobs then poll GET /jobs/<id> every 5 ms",
    }
    report("latency_http_post_poll", figures)
    print("latency through the containers:", figures)


# ------------------------------------------------------------------------------------------------
# images


def _inspect(tag: str) -> dict:
    return json.loads(
        subprocess.run(["docker", "image", "inspect", tag], capture_output=True, text=True, check=True).stdout
    )[0]


def test_images_non_root_with_health_checks_and_sizes(stack):
    sizes = {}
    for target in ("web", "worker"):
        info = _inspect(f"{IMAGE_NAME}:{target}")
        assert info["Config"]["User"] not in ("", "root", "0", "0:0"), info["Config"]["User"]
        assert info["Config"].get("Healthcheck", {}).get("Test"), f"{target}: no health check"
        sizes[target] = round(info["Size"] / 1e6, 1)
    report("image_sizes_mb", sizes)
    print("image sizes (MB):", sizes)


def test_worker_image_needs_no_network(stack):
    """Both pretrained encoders load from the image alone: no network at all, an empty cache."""
    code = (
        "import numpy as np\n"
        "from ml.encoders.text import TextEncoder\n"
        "from ml.encoders.image import ImageEncoder\n"
        "t = TextEncoder().encode(['a red leather ankle boot'])\n"
        "i = ImageEncoder().encode([np.full((224, 224, 3), 128, np.uint8)])\n"
        "print('shapes', t.shape, i.shape, float(np.abs(t).sum()) > 0, float(np.abs(i).sum()) > 0)\n"
    )
    proc = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--tmpfs",
            "/data/cache:uid=10001",
            "--entrypoint",
            "python",
            f"{IMAGE_NAME}:worker",
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shapes (1, 384) (1, 1280) True True" in proc.stdout, proc.stdout


# ------------------------------------------------------------------------------------------------
# faults


def test_killed_worker_loses_no_job(stack):
    """50 jobs in flight, one worker container killed (SIGKILL): every job still succeeds
    (acks_late + reject_on_worker_lost: the broker redelivers what the dead worker held)."""
    cids = customers(stack, 50)
    cids = (cids * 50)[:50]
    victim = stack.containers("worker")[0]
    killed = threading.Event()

    def submit_and_kill(i_cid):
        i, cid = i_cid
        job_id = submit(stack, cid)
        if i == 10:  # kill while the rest are still being submitted and served
            subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
            killed.set()
        return job_id

    with ThreadPoolExecutor(8) as pool:
        job_ids = list(pool.map(submit_and_kill, enumerate(cids)))
    assert killed.is_set() and all(job_ids), job_ids
    unfinished_at_kill_end = sum(stack.web.get(f"/jobs/{j}")[1].get("state") not in FINISHED for j in job_ids)
    t0 = time.monotonic()
    done = wait_all(stack, job_ids, 600)
    states = [j["state"] for j in done.values()]
    assert states.count("succeeded") == 50, states
    ran_on = flower_task_workers(stack, set(job_ids))
    report(
        "fault_kill_worker",
        {
            "jobs": 50,
            "succeeded": states.count("succeeded"),
            "unfinished_after_submission": unfinished_at_kill_end,
            "seconds_to_finish_after_submission": round(time.monotonic() - t0, 1),
            "killed": victim[:12],
            "jobs_run_by_killed_worker": sum(w == f"celery@{victim[:12]}" for w in ran_on.values()),
        },
    )


def test_scale_up_while_serving_new_worker_takes_jobs(stack):
    before = set(worker_names(stack))
    stop = threading.Event()
    accepted: list[str] = []
    cids = customers(stack, 50)

    def load():
        i = 0
        while not stop.is_set():
            job_id = submit(stack, cids[i % len(cids)])
            if job_id:
                accepted.append(job_id)
            i += 1
            time.sleep(0.05)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        stack.compose("up", "-d", "--no-recreate", "--scale", "worker=3")
        new = stack.wait(
            "3 running workers", lambda: len(worker_names(stack)) == 3 and worker_names(stack), 600
        )
        new_names = set(new) - before
        assert new_names, (before, new)

        def new_worker_took_jobs():
            return {w for w in flower_task_workers(stack, set(accepted)).values() if w in new_names}

        taken = stack.wait("a job run by the new worker", new_worker_took_jobs, 600, 5)
    finally:
        stop.set()
        thread.join(30)
    done = wait_all(stack, list(accepted), 600)
    assert all(j["state"] == "succeeded" for j in done.values())
    by_worker = {}
    for w in flower_task_workers(stack, set(accepted)).values():
        by_worker[w] = by_worker.get(w, 0) + 1
    report(
        "fault_scale_to_3",
        {
            "jobs_during_scale": len(accepted),
            "new_workers": sorted(new_names),
            "new_worker_jobs": sorted(taken),
            "jobs_by_worker": by_worker,
        },
    )
    assert len(stack.flower_workers()) >= 3


def test_redis_restart_loses_no_accepted_job(stack):
    """Jobs accepted before, during and after `docker-compose restart redis` all succeed (AOF keeps
    the queue and the job registry; web and workers reconnect). A POST while Redis is down may be
    refused (503): that job was never accepted."""
    cids = customers(stack, 50)
    accepted: list[str] = []
    refused = []
    stop = threading.Event()

    def load():
        i = 0
        while not stop.is_set():
            job_id = submit(stack, cids[i % len(cids)])
            (accepted if job_id else refused).append(job_id or i)
            i += 1
            time.sleep(0.02)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        time.sleep(3)
        t0 = time.monotonic()
        stack.compose("restart", "redis")
        restart_s = time.monotonic() - t0
        stack.wait("readyz 200 after the Redis restart", lambda: stack.web.get("/readyz")[0] == 200, 300)
        recovered_s = time.monotonic() - t0
        time.sleep(3)
    finally:
        stop.set()
        thread.join(60)
    done = wait_all(stack, list(accepted), 900)
    states = [j["state"] for j in done.values()]
    report(
        "fault_redis_restart",
        {
            "accepted": len(accepted),
            "refused_while_down": len(refused),
            "succeeded": states.count("succeeded"),
            "restart_s": round(restart_s, 1),
            "ready_again_s": round(recovered_s, 1),
        },
    )
    assert states.count("succeeded") == len(accepted), {s: states.count(s) for s in set(states)}
    # and the stack serves new jobs afterwards
    assert poll(stack, submit(stack, cids[0]))["state"] == "succeeded"


# ------------------------------------------------------------------------------------------------
# GPU image: built (it cannot run here: no GPU, no NVIDIA Container Toolkit)


def test_gpu_worker_image_builds(stack):
    """`docker-compose -f docker-compose.yml -f docker-compose.gpu.yml build worker` (GPU_STACK=jax):
    the image builds, runs Keras on JAX by default and has jax with its CUDA 12 plugin installed."""
    t0 = time.monotonic()
    cmd = [
        "docker-compose",
        "-f",
        "docker-compose.yml",
        "-f",
        "docker-compose.gpu.yml",
        "--env-file",
        str(stack.env_file),
        "-p",
        stack.project,
        "build",
        "worker",
    ]
    proc = subprocess.run(cmd, env=stack.env, capture_output=True, text=True, timeout=5400, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    tag = f"{IMAGE_NAME}:worker-gpu-jax"
    info = _inspect(tag)
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert env.get("GPU_STACK") == "jax", env
    assert info["Config"]["User"] == "10001:10001"
    check = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            tag,
            "python",
            "-c",
            "import importlib.metadata as m, os, keras; "
            "print(os.environ['KERAS_BACKEND'], keras.backend.backend(), m.version('jax'), "
            "sorted(d.metadata['Name'] for d in m.distributions() if 'cuda12' in d.metadata['Name']))",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    backend, keras_backend, jax_version, *plugins = check.stdout.split(maxsplit=3)
    assert backend == keras_backend == "jax", check.stdout
    assert "jax-cuda12" in check.stdout, check.stdout
    report(
        "gpu_image",
        {
            "tag": tag,
            "size_mb": round(info["Size"] / 1e6, 1),
            "jax": jax_version,
            "build_s": round(time.monotonic() - t0, 1),
            "runs_here": False,
            "why_not_run": "no GPU and no NVIDIA Container Toolkit on this machine",
        },
    )
