"""Versioned model artifacts on disk: models_dir/<version>/ plus a CURRENT pointer file.

Training writes a new version directory, then `publish()` swaps CURRENT atomically (write + rename),
so a serving process that polls `current_version()` picks the new model up without a restart and a
reader never sees a half-written pointer.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from ml.artifact import read_manifest

CURRENT_FILE = "CURRENT"


class ModelRegistry:
    def __init__(self, models_dir: str | Path) -> None:
        self.models_dir = Path(models_dir)

    def new_version(self) -> str:
        """A sortable, unique version name (UTC time to the microsecond)."""
        return datetime.now(UTC).strftime("v%Y%m%dT%H%M%S%fZ")

    def path_for(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise ValueError(f"invalid model version: {version!r}")
        return self.models_dir / version

    def current_version(self) -> str | None:
        try:
            version = (self.models_dir / CURRENT_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def current_path(self) -> Path | None:
        version = self.current_version()
        return None if version is None else self.path_for(version)

    def publish(self, version: str) -> None:
        """Make `version` the live model (atomic pointer swap)."""
        target = self.path_for(version)
        if not (target / "manifest.json").is_file():
            raise FileNotFoundError(f"{target} has no manifest.json: not a model artifact")
        self.models_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.models_dir, prefix=".CURRENT.")
        with os.fdopen(fd, "w") as fh:
            fh.write(version + "\n")
        os.replace(tmp, self.models_dir / CURRENT_FILE)

    def versions(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if (p / "manifest.json").is_file())

    def summary(self, version: str) -> dict:
        """What an operator needs to pick a version: created time, the data it was trained on (path,
        fingerprint, counts), its metrics, and whether this code can serve it (`servable`, with the
        reason when not). FileNotFoundError when `version` is no artifact here."""
        path = self.path_for(version)
        try:
            manifest, servable, problem = read_manifest(path), True, None
        except ValueError as exc:  # an artifact format this code does not read
            manifest = json.loads((path / "manifest.json").read_text())
            servable, problem = False, str(exc).replace(str(path), version)
        out = {
            "version": version,
            "created": manifest.get("created"),
            "format": manifest.get("format"),
            "data": manifest.get("data", {}),
            "metrics": manifest.get("metrics", {}),
            "training_seconds": manifest.get("training_seconds"),
            "servable": servable,
            "current": version == self.current_version(),
        }
        if problem:
            out["problem"] = problem
        return out
