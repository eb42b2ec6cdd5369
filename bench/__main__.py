"""Benchmarks (timing lives here, not in the tests): `make bench` or `python -m bench [what ...]`.

- `encoders`: TextEncoder texts/s on real 2018 reviews, ImageEncoder images/s on real photos as 224x224
  JPEGs, both image runtimes (TFLite, Keras) side by side;
- `train`: wall time of `python -m ml train` on the real 2023 ratings (issue: <= 10 minutes);
- `quality`: the README's claims on the REAL data sets, each against its paired-bootstrap interval
  (bench/quality.py; too slow for `make test`); exit status 1 when one fails;
- `training`: training wall time, peak RSS and stage breakdown at 1,000 and 10,000 SYNTHETIC products,
  photos fetched from a local HTTP server, cold and warm cache (bench/training.py);
- `catalog`: serving against catalog size (10k-1M SYNTHETIC products), exact and two-stage (bench/catalog.py);
- `jobs`: single and batch jobs through the whole service on the 100k `catalog` artifact: HTTP and Celery
  against in-process p50, one batch job against sequential single jobs (bench/jobs_at_scale.py);
- `two_stage`: two-stage against exact serving on the REAL data, leave-last-out, with intervals
  (bench/two_stage.py);
- `faults`: worker kill -9 (pool child, main process) and a Redis crash with 100 jobs, 10k jobs of
  bounded state (bench/faults.py);
- `load`: N concurrent HTTP clients for D seconds against the whole stack on the demo catalog, errors,
  throughput, latency percentiles (bench/load.py; `python -m bench load --clients 50 --seconds 60
  --workers 1 --json PATH`);
- `similar`: similar products on REAL photos: share of the top-5 content neighbours with the same
  articleType against random neighbours, and query cost against catalog size (bench/similar.py);
- `reasons`: in-process latency with reasons and filters on vs off, interleaved (bench/reasons.py);
- `feedback`: POST /feedback to a recommendation that reflects it, p50 over 100 trials, two workers
  (bench/feedback.py);
- `peer`: our synchronous GET /recommendation next to Cornac's BPR served by `cornac.serving` under
  gunicorn, same workers/threads, same 100 customers, REAL 2023 ratings (bench/peer.py; Cornac in a
  throwaway venv under var/bench/peer);
- `serving`: latency of N sequential recommendations three ways on one catalog and machine:
  in-process `Recommender.recommend`, Celery alone (apply_async + get through Redis), and the
  whole HTTP path three ways: POST /jobs then poll GET /jobs/<id> every 5 ms; POST /jobs then
  long-poll GET /jobs/<id>?wait=10; the synchronous GET /recommendation.
Results are printed and written to var/bench/<what>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from ml.config import REPO_ROOT, Settings

SHARED = REPO_ROOT.parent / "shared" / "data"
OUT = REPO_ROOT / "var" / "bench"


def _pct(samples_s: list[float]) -> dict:
    ms = np.asarray(samples_s) * 1000.0
    return {
        "n": int(len(ms)),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


def _jpegs_224(photos: list[Path], out: Path) -> list[Path]:
    """The real photos as 224x224 JPEGs (the network's input size, what a shop's photos decode to
    after the training path's resize; the subset's own files are 60x80), written under `out`."""
    paths = []
    for p in photos:
        dest = out / p.name
        Image.open(p).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC).save(dest, quality=90)
        paths.append(dest)
    return paths


def _alternated(runners: dict, items: list, rounds: int = 2) -> tuple[dict, dict]:
    """items/s of each runner (an object with `encode`), run alternately `rounds` times over
    `items` so that a noisy minute of this shared machine hits all of them; each is warmed first.
    Also returns each runner's output."""
    seconds = {name: 0.0 for name in runners}
    out = {}
    for enc in runners.values():
        enc.encode(items[:32])
    for _ in range(rounds):
        for name, enc in runners.items():
            t = time.perf_counter()
            out[name] = enc.encode(items)
            seconds[name] += time.perf_counter() - t
    return {name: round(rounds * len(items) / s, 1) for name, s in seconds.items()}, out


def bench_encoders(n_texts: int = 1024, n_images: int = 1000) -> dict:
    """Both text precisions, and the image encoder's TFLite precisions and Keras, side by side, on
    real texts (2018 reviews) and real photos (as 224x224 JPEGs, the training path's input)."""
    from ml.data import load_dataset
    from ml.encoders import ImageEncoder, TextEncoder

    reviews = load_dataset(SHARED / "amazon-fashion-2018-5core").reviews
    texts = (reviews["title"] + ". " + reviews["text"]).tolist()[:n_texts]
    text_encoders = {p: TextEncoder(precision=p) for p in ("int8", "float32")}
    text_rates, vectors = _alternated(text_encoders, texts)
    cosine = np.sum(vectors["int8"] * vectors["float32"], axis=1)
    photos = sorted((SHARED / "fashion-product-images-small-subset" / "images").glob("*.jpg"))[:n_images]
    jpegs = tempfile.TemporaryDirectory(prefix="bench-encoders-")
    images = _jpegs_224(photos, Path(jpegs.name))
    # the image runtimes (ml.encoders.lite) and TFLite precisions, alternated twice so a noisy minute
    # hits each; each encoder is built and warmed first (a TFLite file is converted once, before timing)
    image_encoders = {
        "tflite int8": ImageEncoder(runtime="tflite", precision="int8"),
        "tflite float32": ImageEncoder(runtime="tflite", precision="float32"),
        "keras": ImageEncoder(runtime="keras"),
    }
    rates, features = _alternated(image_encoders, images)
    from ml.scoring import unit_rows

    image_cosine = np.sum(unit_rows(features["tflite int8"]) * unit_rows(features["tflite float32"]), axis=1)
    image_size = list(Image.open(images[0]).size) if images else None
    jpegs.cleanup()
    return {
        "texts": len(texts),
        "mean_chars": round(float(np.mean([len(x) for x in texts])), 1),
        "texts_per_s": text_rates,  # by precision of the TFLite weights
        "text_int8_cosine": {"min": round(float(cosine.min()), 5), "mean": round(float(cosine.mean()), 5)},
        "text_batch": text_encoders["int8"].batch_size,
        "images": len(images),
        "image_size": image_size,
        "images_per_s": rates,
        "image_int8_cosine": (
            {"min": round(float(image_cosine.min()), 5), "mean": round(float(image_cosine.mean()), 5)}
            if len(images)
            else None
        ),
        "image_batch": 32,
        "cpu_count": os.cpu_count(),
    }


def bench_train() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, RECSYS_MODELS_DIR=tmp, TF_CPP_MIN_LOG_LEVEL="2")
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ml",
                "train",
                "--data",
                str(SHARED / "amazon-fashion-2023-ratings-blair"),
            ],
            cwd=REPO_ROOT,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - t
        manifest = json.loads(
            (Path(tmp) / open(Path(tmp) / "CURRENT").read().strip() / "manifest.json").read_text()
        )
    return {
        "data": "amazon-fashion-2023-ratings-blair (real)",
        "wall_s": round(wall, 1),
        "training_seconds_in_manifest": manifest["training_seconds"],
        "epochs_run": manifest["metrics"]["epochs_run"],
        "cpu_count": os.cpu_count(),
    }


def _model_dir(settings: Settings, tmp: Path) -> Path:
    """The published model if there is one, else a model of the demo world built now."""
    from ml.registry import ModelRegistry

    current = ModelRegistry(settings.models_dir).current_path()
    if current is not None:
        return settings.models_dir
    models = tmp / "models"
    world = settings.demo_data_dir
    if not (world / "SYNTHETIC.md").is_file():
        subprocess.run(
            [sys.executable, "-m", "ml", "demo-data", "--out", str(world)], cwd=REPO_ROOT, check=True
        )
    env = dict(os.environ, RECSYS_MODELS_DIR=str(models))
    subprocess.run(
        [sys.executable, "-m", "ml", "train", "--data", str(world)], cwd=REPO_ROOT, env=env, check=True
    )
    return models


@contextlib.contextmanager
def service(models: Path, tmp: Path, hostname: str):
    """The service as `make run` serves it, on free ports: Redis, one Celery worker (the default pool
    and concurrency) over `models`, the web app under gunicorn. Yields (settings, stack, celery) once
    the worker answers a ping; stops everything on exit. Logs under tmp/logs."""
    from scripts.procs import free_port, redis_reachable, start_redis, stop_group, wait_until
    from scripts.run_stack import Stack, web_command, worker_command
    from tasks.celery_app import make_celery

    settings = replace(
        Settings.from_env(),
        models_dir=models,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        web_port=free_port(),
    )
    log_dir = tmp / "logs"
    log_dir.mkdir(exist_ok=True)
    stack = Stack(settings, log_dir)
    port = int(settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    redis_proc = start_redis(port, tmp / "redis", log_file=log_dir / "redis.log")
    celery = None
    try:
        wait_until(lambda: redis_reachable(settings.redis_url, 0.5), 15, proc=redis_proc, what="redis")
        env = stack.env(
            RECSYS_MODELS_DIR=str(models),
            REDIS_URL=settings.redis_url,
            RECSYS_WEB_PORT=str(settings.web_port),
        )
        stack.spawn("worker", worker_command(settings, hostname), env)
        stack.spawn("web", web_command(settings), env)
        celery = make_celery(settings)
        wait_until(lambda: bool(celery.control.ping(timeout=0.5)), 300, interval_s=0.5, what="worker")
        yield settings, stack, celery
    finally:
        if celery is not None:
            celery.close()
        stack.stop_all()
        stop_group(redis_proc, timeout_s=5)


def bench_serving(n_jobs: int = 200, top: int = 10) -> dict:
    from ml.recommender import Recommender
    from ml.registry import ModelRegistry
    from scripts.procs import wait_until
    from tasks import names

    base = Settings.from_env()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = _model_dir(base, tmp)
        rec = Recommender.load(ModelRegistry(models).current_path())
        customers = rec.customers(n_jobs)
        customers = (customers * (n_jobs // max(len(customers), 1) + 1))[:n_jobs]
        rec.recommend(customers[0], top)

        with service(models, tmp, "bench@%h") as (settings, _, celery):
            celery.send_task(names.RECOMMEND, args=[customers[0], top]).get(timeout=300)  # model loaded
            url = f"http://127.0.0.1:{settings.web_port}"
            wait_until(lambda: _get(url + "/healthz")[0] == 200, 60, interval_s=0.5, what="web")
            paths = {
                "in_process": lambda c: rec.recommend(c, top),
                "celery": lambda c: celery.send_task(names.RECOMMEND, args=[c, top]).get(
                    timeout=60, interval=0.005
                ),
                "http": lambda c: _http_post_and_poll(url, c, top),
                "http_longpoll": lambda c: _http_post_and_longpoll(url, c, top),
                "http_sync": lambda c: _http_sync_get(url, c, top),
            }
            samples = _interleaved(paths, customers)
    return {
        "catalog_products": rec.n_products,
        "top": top,
        "model_version": rec.version,
        "synthetic_catalog": bool(rec.manifest["data"].get("synthetic")),
        **{name: _pct(times) for name, times in samples.items()},
        "minus_in_process": {
            name: _pct(np.subtract(times, samples["in_process"]).tolist())
            for name, times in samples.items()
            if name != "in_process"
        },
        "notes": {
            "celery": "send_task + get through Redis",
            "http": "POST /jobs then poll GET /jobs/<id> every 5 ms until succeeded",
            "http_longpoll": f"POST /jobs then GET /jobs/<id>?wait={LONGPOLL_S:g}",
            "http_sync": "GET /recommendation (200 with the list)",
            "minus_in_process": "per customer: the path's time minus the in-process time "
            "measured next to it (the paths run interleaved, in a "
            "rotating order, so machine load hits them alike)",
        },
        "web": f"gunicorn gthread -w {settings.web_workers} --threads {settings.web_threads}",
        "cpu_count": os.cpu_count(),
    }


LONGPOLL_S = 10.0


def _interleaved(paths: dict, customers: list[str]) -> dict[str, list[float]]:
    """Seconds of each path per customer; for each customer all paths run back to back, starting
    one further along each time, so load from other processes falls on every path alike."""
    names_ = list(paths)
    samples: dict[str, list[float]] = {name: [] for name in names_}
    for i, customer in enumerate(customers):
        for name in names_[i % len(names_) :] + names_[: i % len(names_)]:
            t = time.perf_counter()
            paths[name](customer)
            samples[name].append(time.perf_counter() - t)
    return samples


def _job_url(url: str, body: dict) -> str:
    return url + body["status_url"] if body["status_url"].startswith("/") else body["status_url"]


def _http_post_and_poll(url: str, customer: str, top: int) -> None:
    """POST /jobs, then GET /jobs/<id> every 5 ms until it has finished."""
    status, body = _post(url + "/jobs", {"customer_id": customer, "top": top})
    assert status == 202, (status, body)
    while True:
        status, job = _get(_job_url(url, body))
        if job.get("state") in ("succeeded", "failed"):
            break
        time.sleep(0.005)
    assert job["state"] == "succeeded", job


def _http_post_and_longpoll(url: str, customer: str, top: int) -> None:
    """POST /jobs, then GET /jobs/<id>?wait=LONGPOLL_S (again while not finished)."""
    status, body = _post(url + "/jobs", {"customer_id": customer, "top": top})
    assert status == 202, (status, body)
    while True:
        status, job = _get(f"{_job_url(url, body)}?wait={LONGPOLL_S:g}")
        assert status == 200, (status, job)
        if job.get("state") in ("succeeded", "failed"):
            break
    assert job["state"] == "succeeded", job


def _http_sync_get(url: str, customer: str, top: int) -> None:
    """The synchronous GET /recommendation (must answer 200 with the list)."""
    status, body = _get(f"{url}/recommendation?customer_id={customer}&top={top}")
    assert status == 200 and len(body["items"]) == top, (status, body)


def _post(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read())


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except OSError:
        return 0, {}


def bench_catalog(sizes: str = "10000,100000,1000000") -> dict:
    """Serving against catalog size, exact and two-stage (bench/catalog.py; SYNTHETIC catalogs)."""
    from bench.catalog import run

    return run([int(s) for s in sizes.split(",")])


def bench_quality() -> dict:
    """The README's real-data claims against their intervals (bench/quality.py)."""
    from bench.quality import bench_quality as run

    return run()


def bench_two_stage() -> dict:
    """Two-stage vs exact serving, leave-last-out on the real data (bench/two_stage.py)."""
    from bench.two_stage import bench_two_stage as run

    return run()


def bench_faults() -> dict:
    """Worker kills, a Redis crash and 10k jobs of bounded state (bench/faults.py)."""
    from bench.faults import bench_faults as run

    return run()


def bench_load() -> dict:
    """50 concurrent clients for 60 s against the whole stack (bench/load.py; options:
    python -m bench load -h)."""
    from bench.load import bench_load as run

    return run()


def bench_similar() -> dict:
    """Similar products on the real photos, and their query cost (bench/similar.py)."""
    from bench.similar import bench_similar as run

    return run()


def bench_reasons() -> dict:
    """Latency with reasons and filters on vs off (bench/reasons.py)."""
    from bench.reasons import bench_reasons as run

    return run()


def bench_training() -> dict:
    """Training at 1,000 and 10,000 products, photos over local HTTP, cold and warm cache
    (bench/training.py)."""
    from bench.training import run

    return run([1000, 10000])


def bench_peer() -> dict:
    """Our synchronous GET next to Cornac's BPR under cornac.serving, REAL 2023 ratings (bench/peer.py)."""
    from bench.peer import run

    return run()


def bench_jobs(sizes: str = "10000,100000,1000000") -> dict:
    """Single and batch jobs through the service on a `catalog` artifact (bench/jobs_at_scale.py): the
    100k one when 100000 is among `sizes`, else the largest of them; skipped when it is not built."""
    from bench.jobs_at_scale import artifact_of, missing, run

    wanted = sorted(int(x) for x in sizes.split(",") if x.strip())
    products = 100_000 if 100_000 in wanted else wanted[-1]
    artifact = artifact_of(products)
    return {"skipped": missing(products)} if artifact is None else run(artifact)


def bench_feedback() -> dict:
    """Live feedback: POST /feedback to a recommendation that reflects it, 2 workers (bench/feedback.py)."""
    from bench.feedback import run

    return run()


BENCHES = {
    "encoders": bench_encoders,
    "train": bench_train,
    "serving": bench_serving,
    "catalog": bench_catalog,
    "jobs": bench_jobs,
    "quality": bench_quality,
    "two_stage": bench_two_stage,
    "faults": bench_faults,
    "training": bench_training,
    "load": bench_load,
    "similar": bench_similar,
    "reasons": bench_reasons,
    "feedback": bench_feedback,
    "peer": bench_peer,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["load"]:  # its own options (--clients, --seconds, --workers, --json)
        from bench.load import main as load_main

        return load_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="*", choices=list(BENCHES), default=list(BENCHES))
    p.add_argument(
        "--sizes",
        default="10000,100000,1000000",
        help="catalog: product counts, comma-separated (jobs: the 100k artifact, else the largest)",
    )
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    failed = False
    for name in args.what or list(BENCHES):
        result = BENCHES[name](**({"sizes": args.sizes} if name in ("catalog", "jobs") else {}))
        (OUT / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"== {name}\n{json.dumps(result, indent=2)}", flush=True)
        failed = failed or result.get("all_hold") is False
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
