"""ml/artifact.py, the one owner of the artifact format: what training writes a worker reads back
unchanged, the write is atomic (all of it or nothing), and an older format is refused."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest

from ml.artifact import ARTIFACT_FORMAT, MANIFEST, Artifact, read_manifest
from ml.registry import ModelRegistry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def artifact(models_dir) -> Artifact:
    return Artifact.read(ModelRegistry(models_dir).current_path())


def test_what_is_written_reads_back_the_same(artifact, tmp_path):
    out = artifact.write(tmp_path / "copy")
    again = Artifact.read(out)
    assert again.manifest == artifact.manifest and again.products == artifact.products
    for f in fields(artifact.tables):
        np.testing.assert_array_equal(getattr(again.tables, f.name), getattr(artifact.tables, f.name), f.name)
    np.testing.assert_array_equal(again.seen_u, artifact.seen_u)
    np.testing.assert_array_equal(again.seen_i, artifact.seen_i)
    for a, b in zip(again.model.weights, artifact.model.weights, strict=True):  # same variables, in order
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), a.path)
    assert (again.retriever is None) == (artifact.retriever is None)
    if artifact.retriever is not None:
        np.testing.assert_array_equal(again.retriever.product_vecs, artifact.retriever.product_vecs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no temporary sibling left


def test_a_failed_write_leaves_what_was_there(artifact, tmp_path, monkeypatch):
    out = artifact.write(tmp_path / "v1")
    before = (out / MANIFEST).read_text()

    def broken(path):
        raise OSError("disk full")

    monkeypatch.setattr(artifact.tables, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        artifact.write(out)
    assert (out / MANIFEST).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]


def test_an_older_format_is_refused(artifact, tmp_path):
    out = artifact.write(tmp_path / "old")
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "format": ARTIFACT_FORMAT - 1}))
    with pytest.raises(ValueError, match="train the model again"):
        Artifact.read(out)
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "nothing-here")
