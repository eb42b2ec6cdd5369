"""Turn a dataset's products and reviews into embeddings, through the on-disk embedding cache.

Encoders are loaded only when something needs encoding, so a ratings-only data set (no text, no
images) never loads TensorFlow models it does not use.

Cache keys are content hashes: an image is keyed by the SHA-1 of its file's bytes, a text by the
SHA-1 of the text. So a product whose photo or text did not change is never embedded again (whatever
its id or file path), a photo or text shared by many products or reviews is embedded once (the
distinct contents go to the encoder, the rows are scattered back), and an edited text or a new
photo under the same id is embedded afresh. Image files are read, hashed and checked in a thread
pool; the image encoder decodes and resizes its next batches in threads while the network runs.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ml.config import Settings

log = logging.getLogger(__name__)

IMAGE_KEY_PREFIX = "sha1:"  # image cache keys: "sha1:<hex of the file's bytes>"
TEXT_KEY_PREFIX = "sha1:"  # text cache keys: "sha1:<hex of the UTF-8 text>"
# what `Embeddings.stats["seconds"]` times: the encoders built side by side before any encodes
# (`_build_side_by_side`), the photos fetched (beside encoders and embed_texts), each modality's pass
STAGES = ("encoders", "fetch", "embed_images", "embed_texts")
_IO_THREADS = 8  # file reads + hashes + header checks (I/O bound; PIL releases the GIL)


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def text_key(text: str) -> str:
    return TEXT_KEY_PREFIX + hashlib.sha1(text.encode("utf-8")).hexdigest()


def review_text(title: pd.Series, text: pd.Series) -> pd.Series:
    """The text a review contributes: its title and body."""
    t = title.fillna("").astype(str).str.strip()
    b = text.fillna("").astype(str).str.strip()
    return (t + ". " + b).str.strip(". ").where((t != "") | (b != ""), "")


def product_text(products: pd.DataFrame) -> pd.Series:
    """Title, features and description of a product as one string."""
    return review_text(products["title"], products["text"])


@dataclass
class Embeddings:
    product_image: np.ndarray | None  # (P, 1280) or None when no product has an image
    has_image: np.ndarray  # (P,) bool
    product_text: np.ndarray | None  # (P, 384)
    has_product_text: np.ndarray  # (P,) bool
    review_text: np.ndarray | None  # (R, 384) for the given reviews
    has_review_text: np.ndarray  # (R,) bool
    encoders: dict  # modality -> "name-version"
    # what embedding did: seconds per stage, rows, distinct contents and how many were encoded now
    stats: dict = field(default_factory=dict)


@functools.cache
def shared_encoder(cls, version: str | None = None, precision: str | None = None):
    """One instance of an encoder class (per version, for an encoder whose version follows the
    settings) per process, built on first use and kept: building one loads a network (MiniLM and
    EfficientNet-Lite0 together ~6 s on this 2-core machine), and a process that trains more than
    once (a training worker, the test session: ~10 trainings) paid it every time, even on a warm
    cache, for the few rows the cache check re-encodes. With the default settings a process keeps
    two text encoders: float32 for product texts, int8 for reviews (`Settings`)."""
    enc = cls() if precision is None else cls(precision=precision)
    if version is not None and enc.version != version:  # the settings changed in between
        raise RuntimeError(f"{cls.__name__} built as version {enc.version!r}, expected {version!r}")
    return enc


class _LazyEncoder:
    """An encoder built on its first `encode` call, or before it by `build` (what embedding will
    call, `_encoders_ahead`): with everything cached (a warm run, cache check off), the networks are
    never loaded. `name`, `version`, `dim` (what keys the cache) come from
    the class (`cache_version()` when it has one: the version the settings, or `precision`, give)."""

    def __init__(self, cls, precision: str | None = None):
        # an encoder whose vectors depend on settings (the encoders' precisions) says so; one
        # without `cache_version` has a single version, and `precision` means nothing to it
        if not hasattr(cls, "cache_version"):
            version, precision = cls.version, None
        else:  # (None: the settings' precision)
            version = cls.cache_version(precision=precision)
        self._cls, self._precision = cls, precision
        self.name, self.version, self.dim = cls.name, version, int(cls.dim)
        self._built = None  # the shared encoder, once this one has built (or found) it

    def build(self) -> None:
        """Get (build, or find built) the shared encoder now rather than at the first `encode`."""
        if self._built is None:
            self._built = shared_encoder(self._cls, self.version, self._precision)

    def encode(self, items):
        self.build()
        return self._built.encode(items)

    def release_arena(self) -> None:
        """Once a dataset is embedded: the shared encoder (when this one got it) lets go of its
        runtime's activation memory, which would otherwise stay through training (MiniLM's TFLite
        arena: ~245 MB after long texts); the network stays, and the next encode rebuilds the arena
        (~0.4 s). Never builds one: called in a `finally`, after a build that a time limit stopped, a
        second build would run into the hard limit."""
        release = getattr(self._built, "release_arena", None)
        if release is not None:  # (an encoder without runtime memory to let go has none)
            release()


def _image_key(ref: str) -> str:
    """The cache key of a local image file ("" when it is missing or not a readable image)."""
    from PIL import Image

    if not ref or "://" in ref:
        return ""
    try:
        data = Path(ref).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except FileNotFoundError:
        return ""
    except Exception as exc:  # a corrupt file is a missing modality, not a failure
        log.warning("unreadable image %s: %s", ref, exc)
        return ""
    return IMAGE_KEY_PREFIX + hashlib.sha1(data).hexdigest()


def image_keys(refs: list[str]) -> list[str]:
    """Content keys of image references, read and checked in a thread pool ("" = no usable image)."""
    if len(refs) < 64:
        return [_image_key(r) for r in refs]
    with ThreadPoolExecutor(max_workers=_IO_THREADS, thread_name_prefix="image-key") as pool:
        return list(pool.map(_image_key, refs, chunksize=64))


def _readable_images(paths: list[str]) -> np.ndarray:
    """Which image references are local files PIL can open (URLs must be localised first)."""
    return np.array([bool(k) for k in image_keys(paths)], dtype=bool)


def _embed_unique(
    cache, enc, keys: list[str], items: list, progress: bool, desc: str, out: np.ndarray, stats: dict
) -> None:
    """out[k] = embedding of items[k] for every k with a key; each distinct key is encoded at most
    once (and not at all when cached). Rows without a key are left as they are (zeros). `enc` (a
    `_LazyEncoder`) lets go of its runtime's activation memory after, also when encoding fails (the
    worker serves on)."""
    try:
        _encode_distinct(cache, enc, keys, items, progress, desc, out, stats)
    finally:
        enc.release_arena()


def _encode_distinct(
    cache, enc, keys: list[str], items: list, progress: bool, desc: str, out: np.ndarray, stats: dict
) -> None:
    first: dict[str, int] = {}  # distinct key -> its position among the distinct keys
    first_row: list[int] = []  # the row where each distinct key occurs first
    inverse = np.full(len(keys), -1, np.int64)
    for k, key in enumerate(keys):
        if key:
            pos = first.setdefault(key, len(first))
            if pos == len(first_row):
                first_row.append(k)
            inverse[k] = pos
    rows = np.flatnonzero(inverse >= 0)
    stats.update(rows=int(len(rows)), distinct=len(first))
    if not first:
        return
    uniq_keys = list(first)
    uniq_items = [items[k] for k in first_row]
    if all(isinstance(x, str) for x in uniq_items):
        # texts go to the encoder in chunks (EmbeddingCache.chunk_size): sorted by length, each chunk
        # pads its batches to similar lengths (the encoder sorts only within what it is given)
        by_len = sorted(range(len(uniq_items)), key=lambda k: len(uniq_items[k]))
        vecs = np.empty((len(uniq_items), out.shape[1]), np.float32)
        vecs[by_len] = cache.embed(
            enc, [uniq_keys[k] for k in by_len], [uniq_items[k] for k in by_len], progress=progress, desc=desc
        )
    else:
        vecs = cache.embed(enc, uniq_keys, uniq_items, progress=progress, desc=desc)
    stats["encoded"] = int(cache.last_computed)
    stats["verified"] = int(cache.last_verified)  # cached rows re-encoded to check the cache
    if cache.last_corrupt:
        stats["cache_corrupt"] = True
    out[rows] = vecs[inverse[rows]]


def embed_dataset(
    products: pd.DataFrame,
    reviews: pd.DataFrame,
    cache_dir: Path,
    use_images: bool = True,
    use_text: bool = True,
    progress: bool = True,
    verify_sample: int = Settings.cache_verify_sample,
    localize: Callable[[pd.DataFrame, threading.Event], pd.DataFrame] | None = None,
) -> Embeddings:
    """Embeddings for every product and for the given (training) reviews.

    `products["image"]` must hold local paths, or `localize(products, stop)` turns its URLs into
    local paths (`ml.data.images.fetch_images`; a URL left here counts as no image). `localize` runs
    in a thread while the encoders are built (`_build_side_by_side`) and the texts embedded, which
    need no photo: downloading a catalog's photos (network bound) hides behind the text encoder (CPU
    bound), and the images are embedded once both are done. If the texts fail, `stop` is set: the
    downloads not yet started are cancelled.
    `verify_sample` cached rows per modality (per text role when product and review texts are
    embedded in different precisions) are re-encoded to check the cache (see
    `ml.encoders.cache`). `stats["seconds"]`: the STAGES (fetch when localizing images)."""
    from ml.encoders.cache import EmbeddingCache

    cache = EmbeddingCache(cache_dir, verify_sample=verify_sample)
    stats: dict = {"seconds": {}}
    fetching = bool(localize and use_images)
    pool = ThreadPoolExecutor(1, thread_name_prefix="fetch-images") if fetching else None
    stop = threading.Event()
    images_plan, images_s = None, 0.0  # (the plans' seconds count in their modality's stage)
    try:
        fetched = pool.submit(_timed, localize, products, stop) if pool is not None else None
        texts_plan, texts_s = _timed(_TextPlan.of, products, reviews, use_text)
        if not fetching:
            images_plan, images_s = _timed(_ImagePlan.of, products, use_images)
        ahead = _encoders_ahead(cache, texts_plan, images_plan, products if fetching else None)
        stats["seconds"]["encoders"] = _timed(_build_side_by_side, ahead)[1]
        texts = _embed_texts(cache, texts_plan, progress, stats, texts_s)
        if fetched is not None:
            products, stats["seconds"]["fetch"] = fetched.result()
    finally:
        stop.set()  # after a failure: what is not downloaded yet is cancelled, and the thread ends
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    if images_plan is None:
        images_plan, images_s = _timed(_ImagePlan.of, products, use_images)
    image_vecs, has_image, image_encoder = _embed_images(cache, images_plan, progress, stats, images_s)
    stats["seconds"] = {k: stats["seconds"][k] for k in STAGES if k in stats["seconds"]}
    log.info(
        "embeddings: images %s, texts %s, seconds %s", stats["images"], stats.get("texts"), stats["seconds"]
    )
    return Embeddings(
        image_vecs,
        has_image,
        texts.product,
        texts.has_product,
        texts.review,
        texts.has_review,
        {**image_encoder, **texts.encoder},
        stats,
    )


def _add_counts(total: dict, part: dict) -> None:
    """Sums `_embed_unique`'s counts over passes (a flag such as cache_corrupt: any pass)."""
    for k, v in part.items():
        total[k] = (total.get(k, False) or v) if isinstance(v, bool) else total.get(k, 0) + v


def _timed(fn: Callable, *args):
    t0 = time.perf_counter()
    return fn(*args), round(time.perf_counter() - t0, 2)


class _Pass(NamedTuple):
    """One encoder's share of embedding: `items` (rows; "" keys are rows without one) into `rows`
    of the output."""

    enc: _LazyEncoder
    keys: list[str]
    items: list
    rows: slice
    desc: str


def _encoders_ahead(
    cache, texts: _TextPlan, images: _ImagePlan | None, fetching: pd.DataFrame | None
) -> list[_LazyEncoder]:
    """The encoders embedding will call (`EmbeddingCache.would_encode`), to build before any
    encodes. Photos still to fetch (`fetching`, the products) have no content key yet: their
    encoder counts when some product has a photo and the cache check re-encodes cached rows (a
    warm run without the check loads no network)."""
    passes = [*(images.passes if images else []), *texts.passes]  # the longest conversion first
    out = [p.enc for p in passes if cache.would_encode(p.enc, p.keys)]
    if fetching is not None and cache.verify_sample and any(_image_refs(fetching, True)):
        out.insert(0, _image_encoder())
    return out


def _build_side_by_side(encoders: list[_LazyEncoder]) -> None:
    """Build `encoders` together: a cold cache's TFLite conversions (MiniLM float32 and int8,
    EfficientNet-Lite0 int8: ~20-35 s each, one core each) then run side by side
    (`ml.encoders.lite.side_by_side`) instead of one after another."""
    if not encoders:
        return
    from ml.encoders import lite

    with lite.side_by_side():
        for enc in encoders:
            enc.build()


def _image_encoder() -> _LazyEncoder:
    from ml.encoders.image import ImageEncoder

    return _LazyEncoder(ImageEncoder, Settings.from_env().image_precision)


class _ImagePlan(NamedTuple):
    """The products' photos: their content keys ("" = no usable image) and one pass, or none when
    no product has a photo."""

    keys: list[str]
    passes: list[_Pass]

    @classmethod
    def of(cls, products: pd.DataFrame, use_images: bool) -> _ImagePlan:
        refs = _image_refs(products, use_images)
        keys = image_keys(refs)
        if not any(keys):
            return cls(keys, [])
        return cls(keys, [_Pass(_image_encoder(), keys, refs, slice(0, len(refs)), "embed images")])


def _image_refs(products: pd.DataFrame, use_images: bool) -> list[str]:
    """Each product's photo reference (a path or URL; "" for none, and for all when not `use_images`)."""
    if not use_images:
        return [""] * len(products)
    return products["image"].fillna("").astype(str).tolist()


def _embed_images(cache, plan: _ImagePlan, progress: bool, stats: dict, spent: float = 0.0):
    """(vectors or None, has_image, {"image": encoder name} or {}) of the products' local photos;
    `spent`: seconds the plan took, counted in the stage."""
    t0 = time.perf_counter()
    has_image = np.array([bool(k) for k in plan.keys], dtype=bool)
    image_vecs, encoder = None, {}
    stats["images"] = {"rows": int(has_image.sum())}
    if plan.passes:
        [p] = plan.passes
        image_vecs = np.zeros((len(plan.keys), p.enc.dim), np.float32)
        _embed_unique(cache, p.enc, p.keys, p.items, progress, p.desc, image_vecs, stats["images"])
        encoder = {"image": f"{p.enc.name}-{p.enc.version}"}
    stats["seconds"]["embed_images"] = round(time.perf_counter() - t0 + spent, 2)
    return image_vecs, has_image, encoder


class _Texts(NamedTuple):
    product: np.ndarray | None
    has_product: np.ndarray
    review: np.ndarray | None
    has_review: np.ndarray
    encoder: dict  # {"text": product texts' encoder, "review_text": reviews'} or {}


class _TextPlan(NamedTuple):
    """The products' and reviews' texts (one list, products first) and their passes: one over all
    their distinct texts, or two (products, reviews) when the settings give them different
    precisions; none when there is no text."""

    texts: list[str]
    n_products: int
    passes: list[_Pass]
    encoder: dict  # as _Texts.encoder

    @classmethod
    def of(cls, products: pd.DataFrame, reviews: pd.DataFrame, use_text: bool) -> _TextPlan:
        ptext = product_text(products).tolist() if use_text else [""] * len(products)
        rtext = review_text(reviews["title"], reviews["text"]).tolist() if use_text else [""] * len(reviews)
        texts, n = ptext + rtext, len(ptext)
        if not any(texts):
            return cls(texts, n, [], {})
        from ml.encoders.text import TextEncoder

        settings = Settings.from_env()
        penc = _LazyEncoder(TextEncoder, settings.text_precision)
        renc = _LazyEncoder(TextEncoder, settings.review_text_precision)
        keys = [text_key(t) if t else "" for t in texts]
        if penc.version == renc.version:
            parts = [(penc, slice(0, len(texts)), "embed texts")]
        else:
            parts = [(penc, slice(0, n), "embed product texts"), (renc, slice(n, None), "embed review texts")]
        passes = [_Pass(enc, keys[rows], texts[rows], rows, desc) for enc, rows, desc in parts]
        encoder = {"text": f"{penc.name}-{penc.version}", "review_text": f"{renc.name}-{renc.version}"}
        return cls(texts, n, passes, encoder)


def _embed_texts(cache, plan: _TextPlan, progress: bool, stats: dict, spent: float = 0.0) -> _Texts:
    """The products' and reviews' text vectors (see `_TextPlan`): each pass over its distinct
    texts, then scattered; `spent`: seconds the plan took, counted in the stage."""
    t0 = time.perf_counter()
    has = np.array([bool(t) for t in plan.texts], dtype=bool)
    n = plan.n_products
    out = _Texts(None, has[:n], None, has[n:], {})
    if plan.passes:
        both = np.zeros((len(plan.texts), plan.passes[0].enc.dim), np.float32)
        stats["texts"] = {}
        for p in plan.passes:
            got: dict = {}
            _embed_unique(cache, p.enc, p.keys, p.items, progress, p.desc, both[p.rows], got)
            _add_counts(stats["texts"], got)
        out = _Texts(both[:n], has[:n], both[n:], has[n:], plan.encoder)
    stats["seconds"]["embed_texts"] = round(time.perf_counter() - t0 + spent, 2)
    return out
