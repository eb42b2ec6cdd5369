"""Training at catalog size, end to end: `python -m bench training [--sizes 1000,10000]`.

For each size N: a SYNTHETIC world of N products and about 3N reviews with 224x224 JPEG pictures
(`demo.generate_world(..., image_format="jpg")`, kept under var/bench/training/ and reused),
a copy whose meta lines give every photo as an URL (`with_image_urls`), those photos served by a
threading http.server on 127.0.0.1 in this process, and `python -m ml train` run twice in a
subprocess against a fresh cache folder:
- cold: every photo fetched over HTTP, every image and text embedded;
- warm: the same command again (photos and embeddings cached).
Each run reports wall time, CPU seconds and peak RSS of the training process (`wait4` rusage), the
CPU seconds of this process meanwhile (the photo server, sharing the cores), the stage breakdown
from the manifest (`stages_s`: load, encoders (built side by side), fetch beside them and
embed_texts, embed_images, fit, and the fit's parts:
rows, network, validation, ranking, retriever) and the image embedding rate (images encoded /
embed_images seconds). Table to stdout, JSON to
var/bench/training.json. The load average before and after is recorded: on a shared machine the
figures are only as good as the idle cores.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ml.config import REPO_ROOT

OUT = REPO_ROOT / "var" / "bench"
WORK = OUT / "training"
REVIEWS_PER_PRODUCT = 3  # ~30,000 reviews for 10,000 products (customers write 8 on average)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _world(n_products: int, seed: int = 0) -> Path:
    from demo import generate_world

    n_customers = max(10, n_products * REVIEWS_PER_PRODUCT // 8)
    out = WORK / f"world-{n_products}"
    stamp = out / ".bench-params.json"
    params = {"n_products": n_products, "n_customers": n_customers, "seed": seed, "image_format": "jpg"}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == params):
        t = time.perf_counter()
        generate_world(out, n_customers=n_customers, n_products=n_products, seed=seed, image_format="jpg")
        stamp.write_text(json.dumps(params))
        print(f"generated {out} in {time.perf_counter() - t:.1f}s", flush=True)
    return out


def _serve(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def _train(data: Path, out: Path, cache: Path, log: Path) -> dict:
    env = dict(os.environ, RECSYS_CACHE_DIR=str(cache), TF_CPP_MIN_LOG_LEVEL="2")
    weights = REPO_ROOT / "var" / "cache" / "weights"
    if weights.is_dir() and not (cache / "weights").exists():  # converted weights are not what is measured
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copytree(weights, cache / "weights")
    t, served = time.perf_counter(), _own_cpu_s()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ml", "train", "--data", str(data), "--out", str(out)],
            cwd=REPO_ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall, served = time.perf_counter() - t, _own_cpu_s() - served
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({proc.returncode}); see {log}")
    manifest = json.loads((out / "manifest.json").read_text())
    emb = manifest.get("embedding", {})
    stages = manifest.get("stages_s", {})
    encoded = (emb.get("images") or {}).get("encoded", 0)
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 0),
        # CPU seconds of the training process (user + system), and of this process meanwhile: the
        # photo server, whose work a real shop's CDN does elsewhere but which shares these cores
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "server_cpu_s": round(served, 1),
        "stages_s": stages,
        "encoders": manifest.get("encoders"),  # names and versions: "-int8" where the weights are int8
        "images": manifest.get("images"),
        "embedding": emb,
        "image_embed_per_s": round(encoded / stages["embed_images"], 1)
        if encoded and stages.get("embed_images")
        else None,
        "epochs_run": manifest["metrics"].get("epochs_run"),
        "log": str(log),
    }


def _own_cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def run(sizes: list[int]) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    results: dict = {"load_before": os.getloadavg(), "cpu_count": os.cpu_count(), "sizes": {}}
    for n in sizes:
        world = _world(n)
        httpd, base = _serve(world / "images")
        try:
            from demo import with_image_urls

            data = with_image_urls(world, WORK / f"urls-{n}", base)
            cache = WORK / f"cache-{n}"
            shutil.rmtree(cache, ignore_errors=True)
            row = {"n_products": n, "n_reviews": sum(1 for _ in open(data / "Amazon_Fashion.jsonl"))}
            for phase in ("cold", "warm"):
                row[phase] = _train(data, WORK / f"model-{n}-{phase}", cache, WORK / f"train-{n}-{phase}.log")
                print(json.dumps({"n": n, phase: row[phase]}), flush=True)
            results["sizes"][str(n)] = row
        finally:
            httpd.shutdown()
            httpd.server_close()
    results["load_after"] = os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "training.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return results


def table(results: dict) -> str:
    cols = ("load", "encoders", "embed_texts", "fetch", "embed_images", "fit")  # fetch: beside the two before
    lines = [
        "| products | reviews | run | wall s | CPU s (server) | peak RSS MB | "
        + " | ".join(cols)
        + " | fit parts | images/s |",
        "|---" * (8 + len(cols)) + "|",
    ]
    for n, row in results["sizes"].items():
        for phase in ("cold", "warm"):
            r = row[phase]
            st = r["stages_s"]
            lines.append(
                f"| {n} | {row['n_reviews']} | {phase} | {r['wall_s']} | {r.get('cpu_s', '-')} "
                f"({r.get('server_cpu_s', '-')}) | {r['peak_rss_mb']:.0f} | "
                + " | ".join(str(st.get(c, "")) for c in cols)
                + " | "
                + ", ".join(f"{k} {v}" for k, v in st.get("fit_parts", {}).items())
                + f" | {r['image_embed_per_s'] or '-'} |"
            )
    lines.append(
        "fetch (photo URLs into the image cache) runs beside encoders and embed_texts: "
        "stages add up to more than the wall"
    )
    lines.append(
        f"load average before {results['load_before']}, after {results['load_after']}, "
        f"{results['cpu_count']} CPUs"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000")
    args = p.parse_args(argv)
    run([int(s) for s in args.sizes.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
