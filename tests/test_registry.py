import json

import pytest

from ml.registry import ModelRegistry


def test_publish_swaps_current(tmp_path):
    reg = ModelRegistry(tmp_path)
    assert reg.current_version() is None and reg.versions() == []
    for v in ("v1", "v2"):
        (tmp_path / v).mkdir()
        (tmp_path / v / "manifest.json").write_text(json.dumps({"version": v}))
    reg.publish("v1")
    assert reg.current_version() == "v1"
    reg.publish("v2")
    assert reg.current_path() == tmp_path / "v2" and reg.versions() == ["v1", "v2"]
    assert not list(tmp_path.glob(".CURRENT.*"))


def test_publish_refuses_non_artifacts_and_bad_names(tmp_path):
    reg = ModelRegistry(tmp_path)
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError):
        reg.publish("half")
    with pytest.raises(ValueError):
        reg.path_for("../etc")
    assert reg.new_version() < ModelRegistry(tmp_path).new_version()


def test_read_manifest_refuses_other_artifact_formats(tmp_path):
    from ml.artifact import ARTIFACT_FORMAT, read_manifest

    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": ARTIFACT_FORMAT - 1, "version": "old"}))
    with pytest.raises(ValueError, match="train the model again"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": ARTIFACT_FORMAT, "version": "new"}))
    assert read_manifest(tmp_path)["version"] == "new"


def test_summary_says_what_an_operator_picks_by(tmp_path):
    from ml.artifact import ARTIFACT_FORMAT

    reg = ModelRegistry(tmp_path)
    data = {"path": "/data/x", "fingerprint": "abc", "n_ratings": 10}
    for v, fmt in (("v1", ARTIFACT_FORMAT - 1), ("v2", ARTIFACT_FORMAT)):
        (tmp_path / v).mkdir()
        (tmp_path / v / "manifest.json").write_text(
            json.dumps(
                {
                    "format": fmt,
                    "version": v,
                    "created": f"{v}-time",
                    "data": data,
                    "metrics": {"val_rmse": 1.0},
                    "training_seconds": 3.5,
                }
            )
        )
    reg.publish("v2")
    new, old = reg.summary("v2"), reg.summary("v1")
    assert new == {
        "version": "v2",
        "created": "v2-time",
        "format": ARTIFACT_FORMAT,
        "data": data,
        "metrics": {"val_rmse": 1.0},
        "training_seconds": 3.5,
        "servable": True,
        "current": True,
    }
    assert (old["servable"], old["current"]) == (False, False)
    assert "train the model again" in old["problem"] and str(tmp_path) not in old["problem"]
    with pytest.raises(FileNotFoundError):
        reg.summary("v3")
