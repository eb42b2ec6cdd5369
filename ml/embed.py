"""Turn a dataset's products and reviews into embeddings, through the on-disk embedding cache.

Encoders are loaded only when something needs encoding, so a ratings-only data set (no text, no
images) never loads TensorFlow models it does not use.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


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


def _readable_images(paths: list[str]) -> np.ndarray:
    """Which image references are local files PIL can open (URLs must be localised first)."""
    from PIL import Image

    ok = np.zeros(len(paths), bool)
    for k, ref in enumerate(paths):
        if not ref or "://" in ref or not Path(ref).is_file():
            continue
        try:
            with Image.open(ref) as im:
                im.verify()
            ok[k] = True
        except Exception as exc:  # a corrupt file is a missing modality, not a failure
            log.warning("unreadable image %s: %s", ref, exc)
    return ok


def embed_dataset(
    products: pd.DataFrame,
    reviews: pd.DataFrame,
    cache_dir: Path,
    use_images: bool = True,
    use_text: bool = True,
    progress: bool = True,
) -> Embeddings:
    """Embeddings for every product and for the given (training) reviews."""
    encoders: dict = {}
    p_ids = products["product_id"].astype(str).tolist()

    image_refs = products["image"].fillna("").astype(str).tolist() if use_images else [""] * len(p_ids)
    has_image = _readable_images(image_refs)
    image_vecs = None
    if has_image.any():
        from ml.encoders.cache import EmbeddingCache
        from ml.encoders.image import ImageEncoder

        cache = EmbeddingCache(cache_dir)
        enc = ImageEncoder()
        idx = np.flatnonzero(has_image)
        keys = [f"{p_ids[k]}|{_digest(image_refs[k])}" for k in idx]
        vecs = cache.embed(enc, keys, [image_refs[k] for k in idx], progress=progress, desc="product images")
        image_vecs = np.zeros((len(p_ids), vecs.shape[1]), np.float32)
        image_vecs[idx] = vecs
        encoders["image"] = f"{enc.name}-{enc.version}"

    ptext = product_text(products).tolist() if use_text else [""] * len(p_ids)
    rtext = review_text(reviews["title"], reviews["text"]).tolist() if use_text else [""] * len(reviews)
    has_ptext = np.array([bool(t) for t in ptext])
    has_rtext = np.array([bool(t) for t in rtext], dtype=bool)
    ptext_vecs = rtext_vecs = None
    if has_ptext.any() or has_rtext.any():
        from ml.encoders.cache import EmbeddingCache
        from ml.encoders.text import TextEncoder

        cache = EmbeddingCache(cache_dir)
        enc = TextEncoder()
        encoders["text"] = f"{enc.name}-{enc.version}"

        def run(ids: list[str], texts: list[str], mask: np.ndarray, desc: str) -> np.ndarray:
            out = np.zeros((len(texts), enc.dim), np.float32)
            idx = np.flatnonzero(mask)
            if len(idx):
                keys = [f"{ids[k]}|{_digest(texts[k])}" for k in idx]
                out[idx] = cache.embed(enc, keys, [texts[k] for k in idx], progress=progress, desc=desc)
            return out

        ptext_vecs = run(p_ids, ptext, has_ptext, "product texts")
        r_ids = (reviews["customer_id"].astype(str) + "|" + reviews["product_id"].astype(str)).tolist()
        rtext_vecs = run(r_ids, rtext, has_rtext, "review texts")
    return Embeddings(image_vecs, has_image, ptext_vecs, has_ptext, rtext_vecs, has_rtext, encoders)
