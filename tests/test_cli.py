"""`python -m ml`: clear one-line errors and non-zero exits on bad input, never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ml.config import REPO_ROOT


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ml", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


def test_missing_path(tmp_path):
    r = run("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m"))
    assert r.returncode == 2
    assert "error:" in r.stderr and "Traceback" not in r.stderr


def test_unknown_format(tmp_path):
    bad = tmp_path / "data.bin"
    bad.write_bytes(b"\x00\x01 not a data set")
    r = run("describe", "--data", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "error:" in r.stderr


@pytest.mark.parametrize("args", [["train"], ["demo-data", "--out", "x", "--customers", "0"], ["evaluate", "--data", "x"], ["fly"]])
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

    env = dict(os.environ, RECSYS_MODELS_DIR=str(tmp_path / "models"))
    r = run("train", "--data", str(world_dir), "--epochs", "1", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    from ml.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "models")
    assert reg.current_version() is not None and reg.versions() == [reg.current_version()]
    assert "published model version" in r.stdout
