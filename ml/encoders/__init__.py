"""Pretrained encoders (Keras 3, no PyTorch at run time) and the embedding cache.

Imported lazily: `from ml.encoders import TextEncoder` loads TensorFlow/keras-hub only then.
"""

from __future__ import annotations

__all__ = ["TextEncoder", "ImageEncoder", "EmbeddingCache"]


def __getattr__(name: str):
    if name == "TextEncoder":
        from ml.encoders.text import TextEncoder

        return TextEncoder
    if name == "ImageEncoder":
        from ml.encoders.image import ImageEncoder

        return ImageEncoder
    if name == "EmbeddingCache":
        from ml.encoders.cache import EmbeddingCache

        return EmbeddingCache
    raise AttributeError(name)
