"""Settings: the one reader of the environment; to_env() hands settings to a child process."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from ml.config import REPO_ROOT, Settings


def test_defaults_without_environment():
    s = Settings.from_env({})
    assert s == Settings()
    assert s.models_dir == REPO_ROOT / "var" / "models" and s.max_top == 100


def test_every_setting_has_its_own_variable():
    names = [f.metadata.get("env") for f in fields(Settings)]
    assert all(names) and len(set(names)) == len(names)


def test_var_dir_moves_the_paths_under_it_unless_they_are_set(tmp_path):
    s = Settings.from_env({"RECSYS_VAR_DIR": str(tmp_path), "RECSYS_CACHE_DIR": str(tmp_path / "elsewhere")})
    assert s.models_dir == tmp_path / "models"
    assert s.redis_password_file == tmp_path / "redis" / "password"
    assert s.cache_dir == tmp_path / "elsewhere"


def test_to_env_round_trips_every_field(tmp_path):
    s = Settings.from_env(
        {
            "RECSYS_VAR_DIR": str(tmp_path),
            "RECSYS_MAX_TOP": "7",
            "RECSYS_SYNC_WAIT_S": "0.25",
            "FLOWER_USER": "ops",
            "RECSYS_WORKER_POOL": "solo",
            "RECSYS_CACHE_VERIFY_SAMPLE": "0",
        }
    )
    assert (s.max_top, s.sync_wait_s, s.flower_user, s.worker_pool, s.cache_verify_sample) == (
        7,
        0.25,
        "ops",
        "solo",
        0,
    )
    env = s.to_env()
    assert env["RECSYS_MAX_TOP"] == "7" and env["RECSYS_MODELS_DIR"] == str(tmp_path / "models")
    assert Settings.from_env(env) == s
    assert isinstance(Settings.from_env(env).models_dir, Path)


@pytest.mark.parametrize(
    "name, raw, kind",
    [
        ("RECSYS_WEB_PORT", "x", "an integer"),
        ("RECSYS_SYNC_WAIT_S", "soon", "a number"),
        ("RECSYS_MAX_TOP", "1.5", "an integer"),
    ],
)
def test_a_value_that_does_not_parse_names_its_variable(name, raw, kind):
    with pytest.raises(ValueError, match=f"{name}='{raw}': expected {kind}"):
        Settings.from_env({name: raw})


def test_a_value_out_of_range_names_its_variable():
    with pytest.raises(ValueError, match="RECSYS_BATCH_THREADS=-1: expected 0"):
        Settings.from_env({"RECSYS_BATCH_THREADS": "-1"})
    assert Settings.from_env({"RECSYS_BATCH_THREADS": "3"}).batch_threads == 3


def test_empty_means_default():
    assert Settings.from_env({"RECSYS_WEB_PORT": "", "REDIS_URL": ""}) == Settings()


@pytest.mark.parametrize("raw", ["/etc", "../outside", "world/../../outside", "", "  ", "a\x00b", "x" * 1025])
def test_training_data_paths_outside_the_data_directories_are_refused(tmp_path, raw):
    s = Settings.from_env({"RECSYS_VAR_DIR": str(tmp_path)})
    with pytest.raises(ValueError, match="data_path"):
        s.training_data_path(raw)


def test_training_data_paths_inside_are_resolved(tmp_path):
    s = Settings.from_env({"RECSYS_VAR_DIR": str(tmp_path)})
    assert s.data_dir == tmp_path / "data" and s.demo_data_dir == tmp_path / "demo-world"
    assert s.training_data_path("shop/2026") == tmp_path / "data" / "shop" / "2026"
    assert s.training_data_path("shop/../other") == tmp_path / "data" / "other"
    assert s.training_data_path(str(tmp_path / "demo-world")) == tmp_path / "demo-world"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link").symlink_to("/etc")  # a link out of the directory is out
    with pytest.raises(ValueError):
        s.training_data_path("link")


def test_the_tests_themselves_keep_out_of_the_repositorys_var():
    """tests/conftest.py points RECSYS_VAR_DIR at a directory of the tests' own: nothing a test or a
    process it starts writes through the settings lands in the repository's var/."""
    s = Settings.from_env()
    for path in (s.var_dir, s.cache_dir, s.models_dir, s.data_dir, s.feedback_file):
        assert not Path(path).resolve().is_relative_to((REPO_ROOT / "var").resolve()), path
