"""The artifact format, in one place: what a trained model directory holds, how it is written (once,
atomically) and how it is read back.

A directory holds
- `manifest.json`: format, version, data fingerprint, encoders, split, config, model spec (with the
  feature layout), metrics, ranking rule, timings, created time;
- `model.weights.h5`: the Keras weights (the network is rebuilt from the spec first);
- `tables.npz`: the feature sums and counts (`ml.features.FeatureTables`);
- `interactions.npz`: the training pairs (customer and product positions), for "exclude seen";
- `products.json`: title, image, category path and price of every product (what serving shows and
  filters on, so a worker needs no training data files);
- `history.json`: the Keras fit history;
- `retrieval/`: the two-tower vectors and ANN index, when the catalog is served two-stage
  (`ml.retrieval.Retriever` saves and loads its own folder).
It is written to a temporary sibling and renamed into place, so a reader never sees half of one.

Top-level imports are the standard library only: the worker's parent process (ml.registry,
tasks.model_holder) reads manifests without loading numpy or TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from ml.features import FeatureTables
    from ml.retrieval import Retriever

# 2: ratings in tables.npz, 3 pair-feature columns; 3: the model spec holds the named feature layout,
# the heads are "rating" and "pick" (was "interact").
ARTIFACT_FORMAT = 3

MANIFEST = "manifest.json"
WEIGHTS = "model.weights.h5"
TABLES = "tables.npz"
INTERACTIONS = "interactions.npz"
PRODUCTS = "products.json"
HISTORY = "history.json"


def read_manifest(path: str | Path) -> dict:
    """An artifact's manifest; FileNotFoundError if `path` is no artifact, ValueError if this code
    cannot read its format (an artifact from an older version: train again)."""
    manifest_file = Path(path) / MANIFEST
    if not manifest_file.is_file():
        raise FileNotFoundError(f"{path} is not a model artifact (no {MANIFEST})")
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("format") != ARTIFACT_FORMAT:
        raise ValueError(
            f"{path} has artifact format {manifest.get('format')}, this code reads "
            f"format {ARTIFACT_FORMAT}: train the model again"
        )
    return manifest


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@dataclass
class Artifact:
    """A trained model and what serving needs with it, in memory: what training builds (and hands
    to a Recommender to choose the ranking rule and distil the retriever) before writing it once,
    and what a worker reads."""

    manifest: dict
    model: Any  # ml.model.HybridModel, built from manifest["spec"]
    tables: FeatureTables
    seen_u: np.ndarray  # training pairs: customer positions ...
    seen_i: np.ndarray  # ... and product positions
    products: list[dict]  # per product: product_id, title, image, categories, price
    history: dict = field(default_factory=dict)  # Keras fit history (written, not read back)
    retriever: Retriever | None = None

    def write(self, out_dir: str | Path) -> Path:
        """Write the artifact to `out_dir` (replacing what is there) through a temporary sibling and
        one rename; the manifest is written once, last."""
        import numpy as np

        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            self.model.save_weights(tmp / WEIGHTS)
            self.tables.save(tmp / TABLES)
            np.savez_compressed(
                tmp / INTERACTIONS, u=self.seen_u.astype(np.int32), i=self.seen_i.astype(np.int32)
            )
            _write_json(tmp / PRODUCTS, self.products)
            _write_json(tmp / HISTORY, self.history)
            if self.retriever is not None:
                self.retriever.save(tmp)
            _write_json(tmp / MANIFEST, self.manifest)
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out_dir

    @classmethod
    def read(cls, path: str | Path) -> Artifact:
        """The artifact at `path` (its retriever when it has one). Raises as read_manifest does."""
        import numpy as np

        from ml.features import FeatureTables
        from ml.model import ModelSpec, build_model
        from ml.retrieval import Retriever

        path = Path(path)
        manifest = read_manifest(path)
        model = build_model(ModelSpec.from_dict(manifest["spec"]))
        model.load_weights(path / WEIGHTS)
        with np.load(path / INTERACTIONS) as z:
            seen_u, seen_i = z["u"].astype(np.int64), z["i"].astype(np.int64)
        return cls(
            manifest,
            model,
            FeatureTables.load(path / TABLES),
            seen_u,
            seen_i,
            json.loads((path / PRODUCTS).read_text()),
            retriever=Retriever.load(path) if Retriever.exists(path) else None,
        )
