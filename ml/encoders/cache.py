"""A persistent embedding cache, one folder per encoder name + version.

Layout: `cache_dir/embeddings/<encoder.name>-<encoder.version>/part-*.npz`; each part holds
`keys` (unicode array) and `vectors` (float32, (n, dim)). New rows are appended as a new part,
written to a temporary file in the same folder and moved into place with `os.replace`, so a
reader never sees a half-written part and concurrent writers (threads or processes) never
corrupt each other: at worst two of them compute the same key, and the later part wins.
When there are more than `max_parts` parts, they are merged into one (written atomically,
then the merged parts are removed); a reader that loses a part in that race rescans.

The key is the caller's choice: a product id, or an id plus a content hash when the content
may change under the same id.

A cached row is trusted only as far as it is checked. With content-hash keys a wrong row (written by
a caller that paired keys with the wrong items, a half-converted weight file, a bit flip) would be
served forever, so an `embed` call answered from the cache can re-encode a small random sample of
the rows it serves (`verify_sample`; training passes `Settings.cache_verify_sample`, 4) and compare
them with what is stored.
A mismatch moves the folder's parts aside into `quarantine/` (kept for inspection, never read) and
recomputes every row of the call. The cost is loading the encoder on a warm run and encoding a few
items; 0 turns the check off.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PART_PREFIX = "part-"
PART_SUFFIX = ".npz"
QUARANTINE_DIR = "quarantine"
# A re-encoded sample row matches its cached row when the cosine is at least this and the norms
# differ by at most NORM_TOL (relative): far above backend/batching noise (JAX vs TensorFlow agree
# to cos 0.999998), far below any wrong row (a row of another text has cos < 0.9).
VERIFY_MIN_COS = 0.99
VERIFY_NORM_TOL = 0.02


def _safe_dirname(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "encoder"


class _Store:
    """In-memory view of one encoder's folder: key -> row vector, plus the parts it came from."""

    def __init__(self, folder: Path, dim: int) -> None:
        self.folder = folder
        self.dim = dim
        self.vectors: dict[str, np.ndarray] = {}
        self.parts: set[str] = set()
        self.lock = threading.Lock()

    def _list_parts(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(
            p.name
            for p in self.folder.iterdir()
            if p.name.startswith(PART_PREFIX) and p.name.endswith(PART_SUFFIX)
        )

    def refresh(self) -> None:
        """Load parts written since the last refresh (by this or another process)."""
        for _attempt in range(3):
            lost = False
            names = self._list_parts()
            for name in names:
                if name in self.parts:
                    continue
                try:
                    with np.load(self.folder / name, allow_pickle=False) as data:
                        keys = data["keys"]
                        vectors = np.asarray(data["vectors"], dtype=np.float32)
                except FileNotFoundError:  # merged away meanwhile: rescan
                    lost = True
                    continue
                except Exception as exc:  # noqa: BLE001 - a bad part must not break embedding
                    log.warning("embedding cache: skipping unreadable part %s (%s)", name, exc)
                    self.parts.add(name)
                    continue
                if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(keys) != len(vectors):
                    log.warning(
                        "embedding cache: skipping part %s with shape %s (expected (%d, %d))",
                        name,
                        vectors.shape,
                        len(keys),
                        self.dim,
                    )
                    self.parts.add(name)
                    continue
                for key, row in zip(keys.tolist(), vectors):
                    self.vectors[key] = row
                self.parts.add(name)
            # Forget parts that were merged away (their rows live on in the merged part).
            self.parts.intersection_update(names)
            if not lost:
                return

    def write_part(self, keys: list[str], vectors: np.ndarray) -> str:
        """Atomically write a new part; returns its file name."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{PART_PREFIX}{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}{PART_SUFFIX}"
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    keys=np.asarray(keys, dtype=str),
                    vectors=np.asarray(vectors, dtype=np.float32).reshape(len(keys), self.dim),
                )
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.folder / name)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        self.parts.add(name)
        return name

    def quarantine(self) -> Path:
        """Move every part this store has read into `quarantine/<time>/` and forget their rows."""
        dest = self.folder / QUARANTINE_DIR / f"{time.time_ns():020d}-{os.getpid()}"
        dest.mkdir(parents=True, exist_ok=True)
        for name in sorted(self.parts):
            try:
                os.replace(self.folder / name, dest / name)
            except FileNotFoundError:  # merged or moved away by another process meanwhile
                pass
        self.parts.clear()
        self.vectors.clear()
        return dest

    def compact(self, max_parts: int) -> None:
        """Merge all loaded parts into one when there are more than `max_parts`."""
        names = [n for n in self._list_parts() if n in self.parts]
        if len(names) <= max_parts:
            return
        keys = list(self.vectors)
        matrix = (
            np.stack([self.vectors[k] for k in keys]) if keys else np.zeros((0, self.dim), dtype=np.float32)
        )
        merged = self.write_part(keys, matrix)
        for name in names:
            if name == merged:
                continue
            try:
                os.unlink(self.folder / name)
            except FileNotFoundError:
                pass
            self.parts.discard(name)
        # The rows now point into the merged matrix (frees the old parts' arrays).
        self.vectors = dict(zip(keys, matrix))


class EmbeddingCache:
    """Persistent key -> embedding cache for any encoder with `.name`, `.version`, `.dim`,
    `.encode(items) -> (n, dim)`.

    `embed(encoder, keys, items)` returns the rows for `keys` (in that order), computing only the
    keys not stored yet, in chunks of `chunk_size` items with a tqdm progress bar, and saving
    new rows at least every `flush_rows` rows (so an interrupted run keeps its work).
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        chunk_size: int = 256,
        flush_rows: int = 8192,
        max_parts: int = 16,
        verify_sample: int = 0,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.root = self.cache_dir / "embeddings"
        self.chunk_size = max(1, int(chunk_size))
        self.flush_rows = max(1, int(flush_rows))
        self.max_parts = max(1, int(max_parts))
        self._stores: dict[str, _Store] = {}
        self._stores_lock = threading.Lock()
        self.verify_sample = max(0, int(verify_sample))
        self.last_computed = 0  # how many keys the last `embed` call had to encode
        self.last_verified = 0  # how many cached rows the last `embed` call re-encoded to check
        self.last_corrupt = False  # whether that check found a wrong row (and recomputed the call)

    def folder(self, encoder: Any) -> Path:
        """Where `encoder`'s embeddings are stored."""
        return self.root / _safe_dirname(f"{encoder.name}-{encoder.version}")

    def _store(self, encoder: Any) -> _Store:
        folder = self.folder(encoder)
        dim = int(encoder.dim)
        key = f"{folder}|{dim}"
        with self._stores_lock:
            store = self._stores.get(key)
            if store is None:
                store = self._stores[key] = _Store(folder, dim)
        return store

    def would_encode(self, encoder: Any, keys: Sequence[Any]) -> bool:
        """Whether `embed(encoder, keys, ...)` would call the encoder: a key ("" = a row without
        one) not stored yet, or a stored one to re-encode for the check (`verify_sample`)."""
        keys = {str(k) for k in keys if k}
        if not keys:
            return False
        if self.verify_sample:
            return True
        store = self._store(encoder)
        with store.lock:
            store.refresh()
            return not keys.issubset(store.vectors)

    def embed(
        self, encoder: Any, keys: Sequence[Any], items: Sequence[Any], progress: bool = True, desc: str = ""
    ) -> np.ndarray:
        """Embeddings for `keys` (float32, (len(keys), encoder.dim)), in the order of `keys`.

        `items[i]` is what `encoder.encode` gets for `keys[i]`; it is only used when the key is
        not cached yet. A key repeated in one call is computed once (from its first item).
        """
        keys = [str(k) for k in keys]
        items = list(items)
        if len(keys) != len(items):
            raise ValueError(f"keys and items differ in length: {len(keys)} != {len(items)}")
        dim = int(encoder.dim)
        if not keys:
            return np.zeros((0, dim), dtype=np.float32)

        store = self._store(encoder)
        with store.lock:
            store.refresh()
            first_items: dict[str, Any] = {}  # key -> its first item, in the order of `keys`
            for key, item in zip(keys, items):
                first_items.setdefault(key, item)
            missing = {k: v for k, v in first_items.items() if k not in store.vectors}
            hits = [k for k in first_items if k not in missing]
            self.last_computed = len(missing)
            if missing:
                self._compute(encoder, store, missing, progress, desc)
            self.last_verified, self.last_corrupt = 0, False
            if hits and self.verify_sample and not self._verify(encoder, store, hits, first_items):
                self.last_corrupt = True
                moved = store.quarantine()
                log.error(
                    "embedding cache: cached %s rows do not match a fresh encoding; parts moved to %s, "
                    "recomputing the %d rows of this call",
                    encoder.name,
                    moved,
                    len(first_items),
                )
                self.last_computed = len(first_items)
                self._compute(encoder, store, first_items, progress, desc)
            out = np.empty((len(keys), dim), dtype=np.float32)
            for i, key in enumerate(keys):
                out[i] = store.vectors[key]
        return out

    def _verify(self, encoder: Any, store: _Store, hits: list[str], items: dict[str, Any]) -> bool:
        """Re-encode a random sample of the cached rows `hits` and compare with the stored rows."""
        sample = random.sample(hits, min(self.verify_sample, len(hits)))
        fresh = np.asarray(encoder.encode([items[k] for k in sample]), dtype=np.float32)
        self.last_verified = len(sample)
        for key, new in zip(sample, fresh):
            old = store.vectors[key]
            n_old, n_new = float(np.linalg.norm(old)), float(np.linalg.norm(new))
            if n_old == 0.0 or n_new == 0.0:
                ok = n_old == n_new
            else:
                ok = float(old @ new) / (n_old * n_new) >= VERIFY_MIN_COS and abs(
                    n_old - n_new
                ) <= VERIFY_NORM_TOL * max(n_old, n_new)
            if not ok:
                log.warning("embedding cache: %s row %s differs from a fresh encoding", encoder.name, key)
                return False
        return True

    def _compute(
        self, encoder: Any, store: _Store, missing: dict[str, Any], progress: bool, desc: str
    ) -> None:
        from tqdm.auto import tqdm

        todo_keys = list(missing)
        todo_items = [missing[k] for k in todo_keys]
        pending_keys: list[str] = []
        pending_vecs: list[np.ndarray] = []
        pending_rows = 0

        def flush() -> None:
            nonlocal pending_keys, pending_vecs, pending_rows
            if pending_keys:
                store.write_part(pending_keys, np.concatenate(pending_vecs))
                pending_keys, pending_vecs, pending_rows = [], [], 0

        bar = tqdm(
            total=len(todo_keys),
            desc=desc or f"embedding ({encoder.name})",
            unit="item",
            disable=not progress,
            leave=False,
        )
        try:
            for start in range(0, len(todo_keys), self.chunk_size):
                chunk_keys = todo_keys[start : start + self.chunk_size]
                vectors = np.asarray(
                    encoder.encode(todo_items[start : start + self.chunk_size]), dtype=np.float32
                )
                if vectors.shape != (len(chunk_keys), store.dim):
                    raise ValueError(
                        f"{encoder.name}.encode returned shape {vectors.shape}, "
                        f"expected {(len(chunk_keys), store.dim)}"
                    )
                for key, row in zip(chunk_keys, vectors):
                    store.vectors[key] = row
                pending_keys.extend(chunk_keys)
                pending_vecs.append(vectors)
                pending_rows += len(chunk_keys)
                if pending_rows >= self.flush_rows:
                    flush()
                bar.update(len(chunk_keys))
        finally:
            bar.close()
            flush()  # keep what was computed, even when a later chunk failed
        store.compact(self.max_parts)
