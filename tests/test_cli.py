"""`python -m ml`: clear one-line errors and non-zero exits on bad input, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ml.config import REPO_ROOT


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "ml", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_missing_path(tmp_path):
    r = run("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m"))
    assert r.returncode == 2
    assert "error:" in r.stderr and "Traceback" not in r.stderr


def test_unknown_format(tmp_path):
    bad = tmp_path / "data.bin"
    bad.write_bytes(b"\x00\x01 not a data set")
    r = run("describe", "--data", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "error:" in r.stderr


@pytest.mark.parametrize(
    "args", [["train"], ["demo-data", "--out", "x", "--customers", "0"], ["evaluate", "--data", "x"], ["fly"]]
)
def test_bad_arguments(args):
    r = run(*args)
    assert r.returncode == 2 and "usage:" in r.stderr and "Traceback" not in r.stderr


def test_demo_data_then_describe(tmp_path):
    out = tmp_path / "w"
    r = run("demo-data", "--out", str(out), "--customers", "20", "--products", "15", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert (out / "SYNTHETIC.md").is_file()
    r = run("describe", "--data", str(out))
    assert r.returncode == 0, r.stderr
    described = json.loads(r.stdout)
    assert described["products"] == 15


@pytest.mark.slow
def test_train_publishes_into_the_registry(world_dir, tmp_path):
    import os

    # no cache check (RECSYS_CACHE_VERIFY_SAMPLE=0): what is tested here is publishing, and the
    # check would build both encoders in this subprocess (test_embedding_cache tests the check)
    env = dict(os.environ, RECSYS_MODELS_DIR=str(tmp_path / "models"), RECSYS_CACHE_VERIFY_SAMPLE="0")
    r = run("train", "--data", str(world_dir), "--epochs", "1", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    from ml.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "models")
    assert reg.current_version() is not None and reg.versions() == [reg.current_version()]
    assert "published model version" in r.stdout


def test_fetch_images_reports_failures_by_reason(tmp_path):
    """`fetch-images` against the local photo server of test_images_download: a report with the
    counts by reason the server was told to fail, then a second run that fetches nothing new."""
    import os
    import threading
    from http.server import ThreadingHTTPServer

    from test_images_download import FAULTS, _Handler, _photos, _State, expected_failures

    _photos()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = _State()
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        faults = {
            k: v for k, v in FAULTS.items() if k not in ("slow", "huge")
        }  # defaults: 10 s timeout, 40 Mpx
        data = tmp_path / "data"
        data.mkdir()
        metas = [
            {"parent_asin": f"OK{k}", "title": f"ok {k}", "images": [{"large": f"{base}/ok/{k}.jpg"}]}
            for k in range(6)
        ]
        metas += [
            {"parent_asin": f"{kind}{k}", "title": kind, "images": [{"hi_res": f"{base}/{kind}/{k}.jpg"}]}
            for kind, n in faults.items()
            for k in range(n)
        ]
        (data / "meta_Amazon_Fashion.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metas))
        (data / "Amazon_Fashion.jsonl").write_text(
            "".join(
                json.dumps(
                    {
                        "rating": 4.0,
                        "title": "t",
                        "text": "x",
                        "user_id": f"U{k}",
                        "parent_asin": m["parent_asin"],
                        "asin": m["parent_asin"],
                        "timestamp": 1_600_000_000_000 + k,
                    }
                )
                + "\n"
                for k, m in enumerate(metas)
            )
        )
        env = dict(os.environ, RECSYS_CACHE_DIR=str(tmp_path / "cache"))
        r = run(
            "fetch-images",
            "--data",
            str(data),
            "--retries",
            "1",
            "--no-progress",
            "--report",
            str(tmp_path / "report.json"),
            env=env,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        report = json.loads(r.stdout)
        assert report == json.loads((tmp_path / "report.json").read_text())
        want = {
            reason: n
            for reason, n in expected_failures().items()
            if reason not in ("timeout", "too_many_pixels")
        }
        assert report["failed_by_reason"] == want
        assert report["products"] == len(metas) and report["with_photo"] == 6 and report["fetched"] == 6
        assert report["failed"] == sum(faults.values())
        assert "failed" in r.stderr  # the log line with the counts
        again = json.loads(
            run("fetch-images", "--data", str(data), "--retries", "0", "--no-progress", env=env).stdout
        )
        assert again["fetched"] == 0 and again["cached"] == 6 and again["failed_by_reason"] == want
        assert sum(n for p, n in httpd.state.requests.items() if p.startswith("/ok/")) == 6
    finally:
        httpd.shutdown()
        httpd.server_close()
