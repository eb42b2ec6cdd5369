"""EmbeddingCache: computes only missing keys, keeps the order of the keys, persists atomically."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

from ml.encoders.cache import EmbeddingCache


class FakeEncoder:
    """Deterministic tiny encoder that records every call."""

    def __init__(self, name: str = "fake", version: str = "1", dim: int = 8, fail_on_call: int | None = None):
        self.name = name
        self.version = version
        self.dim = dim
        self.calls: list[list] = []
        self.fail_on_call = fail_on_call
        self.releases = 0

    def release_arena(self) -> None:
        self.releases += 1

    @property
    def n_encoded(self) -> int:
        return sum(len(c) for c in self.calls)

    def vector(self, item) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(f"{self.version}:{item}".encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def encode(self, items: list) -> np.ndarray:
        items = list(items)
        if self.fail_on_call is not None and len(self.calls) + 1 == self.fail_on_call:
            self.calls.append(items)
            raise RuntimeError("boom")
        self.calls.append(items)
        if not items:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.vector(i) for i in items])


def expected(enc: FakeEncoder, items) -> np.ndarray:
    return np.stack([enc.vector(i) for i in items])


def test_computes_once_and_persists(tmp_path):
    enc = FakeEncoder()
    cache = EmbeddingCache(tmp_path)
    keys = ["p1", "p2", "p3"]
    items = ["red dress", "blue jeans", "hat"]
    first = cache.embed(enc, keys, items, progress=False)
    assert first.shape == (3, 8) and first.dtype == np.float32
    np.testing.assert_array_equal(first, expected(enc, items))
    assert enc.n_encoded == 3

    again = cache.embed(enc, keys, items, progress=False)
    np.testing.assert_array_equal(again, first)
    assert enc.n_encoded == 3, "cached keys must not be recomputed"

    # A brand-new instance (another process, a restart) reads the stored rows.
    fresh_enc = FakeEncoder()
    reread = EmbeddingCache(tmp_path).embed(fresh_enc, keys, items, progress=False)
    np.testing.assert_array_equal(reread, first)
    assert fresh_enc.n_encoded == 0

    folder = tmp_path / "embeddings" / "fake-1"
    assert folder.is_dir() and list(folder.glob("part-*.npz"))
    assert not list(folder.glob(".tmp-*")), "no temporary files left behind"


def test_only_new_keys_are_computed_and_order_is_kept(tmp_path):
    enc = FakeEncoder()
    cache = EmbeddingCache(tmp_path)
    cache.embed(enc, ["a", "b"], ["item a", "item b"], progress=False)
    enc.calls.clear()

    keys = ["c", "b", "d", "a"]
    items = ["item c", "item b", "item d", "item a"]
    out = cache.embed(enc, keys, items, progress=False)
    assert enc.calls == [["item c", "item d"]]
    np.testing.assert_array_equal(out, expected(enc, items))

    # Same again through a new instance, in yet another order.
    enc2 = FakeEncoder()
    keys2 = ["d", "a", "c", "b"]
    out2 = EmbeddingCache(tmp_path).embed(
        enc2, keys2, ["item d", "item a", "item c", "item b"], progress=False
    )
    assert enc2.n_encoded == 0
    np.testing.assert_array_equal(out2, out[[2, 3, 0, 1]])


def test_duplicate_keys_in_one_call(tmp_path):
    enc = FakeEncoder()
    out = EmbeddingCache(tmp_path).embed(enc, ["x", "y", "x", "x"], ["X", "Y", "X", "X"], progress=False)
    assert enc.calls == [["X", "Y"]]
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[0], out[3])
    np.testing.assert_array_equal(out, expected(enc, ["X", "Y", "X", "X"]))


def test_empty_and_mismatched_input(tmp_path):
    enc = FakeEncoder()
    cache = EmbeddingCache(tmp_path)
    out = cache.embed(enc, [], [], progress=False)
    assert out.shape == (0, 8) and out.dtype == np.float32
    assert enc.calls == []
    with pytest.raises(ValueError):
        cache.embed(enc, ["a", "b"], ["only one"], progress=False)


def test_encoder_name_and_version_are_separate_caches(tmp_path):
    cache = EmbeddingCache(tmp_path)
    v1 = FakeEncoder(version="1")
    v2 = FakeEncoder(version="2")
    other = FakeEncoder(name="other/model", version="1", dim=4)
    a = cache.embed(v1, ["k"], ["text"], progress=False)
    b = cache.embed(v2, ["k"], ["text"], progress=False)
    c = cache.embed(other, ["k"], ["text"], progress=False)
    assert v1.n_encoded == v2.n_encoded == other.n_encoded == 1
    assert not np.array_equal(a, b)
    assert c.shape == (1, 4)
    names = sorted(p.name for p in (tmp_path / "embeddings").iterdir())
    assert names == ["fake-1", "fake-2", "other_model-1"]


def test_batches_progress_and_flush(tmp_path, capsys):
    enc = FakeEncoder()
    cache = EmbeddingCache(tmp_path, chunk_size=2, flush_rows=2)
    keys = [f"k{i}" for i in range(5)]
    out = cache.embed(enc, keys, keys, progress=True, desc="fake items")
    assert [len(c) for c in enc.calls] == [2, 2, 1]
    np.testing.assert_array_equal(out, expected(enc, keys))
    assert "fake items" in capsys.readouterr().err
    assert len(list((tmp_path / "embeddings" / "fake-1").glob("part-*.npz"))) == 3


def test_interrupted_run_keeps_finished_chunks(tmp_path):
    keys = [f"k{i}" for i in range(6)]
    failing = FakeEncoder(fail_on_call=2)
    with pytest.raises(RuntimeError):
        EmbeddingCache(tmp_path, chunk_size=2).embed(failing, keys, keys, progress=False)
    enc = FakeEncoder()
    out = EmbeddingCache(tmp_path, chunk_size=2).embed(enc, keys, keys, progress=False)
    assert enc.calls == [["k2", "k3"], ["k4", "k5"]], "the first chunk was saved before the failure"
    np.testing.assert_array_equal(out, expected(enc, keys))


def test_parts_are_compacted(tmp_path):
    enc = FakeEncoder()
    cache = EmbeddingCache(tmp_path, max_parts=3)
    for i in range(10):
        cache.embed(enc, [f"k{i}"], [f"item {i}"], progress=False)
    folder = tmp_path / "embeddings" / "fake-1"
    assert len(list(folder.glob("part-*.npz"))) <= 3
    keys = [f"k{i}" for i in range(10)]
    items = [f"item {i}" for i in range(10)]
    fresh = FakeEncoder()
    out = EmbeddingCache(tmp_path).embed(fresh, keys, items, progress=False)
    assert fresh.n_encoded == 0
    np.testing.assert_array_equal(out, expected(enc, items))


def test_writers_in_parallel_share_results(tmp_path):
    """Several instances (standing in for processes) write at once; nothing is lost or torn."""
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            enc = FakeEncoder()
            cache = EmbeddingCache(tmp_path, chunk_size=3, flush_rows=3, max_parts=4)
            keys = [f"w{w}-{i}" for i in range(12)] + [f"shared-{i}" for i in range(6)]
            out = cache.embed(enc, keys, keys, progress=False)
            np.testing.assert_array_equal(out, expected(enc, keys))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors

    enc = FakeEncoder()
    keys = [f"w{w}-{i}" for w in range(4) for i in range(12)] + [f"shared-{i}" for i in range(6)]
    out = EmbeddingCache(tmp_path).embed(enc, keys, keys, progress=False)
    assert enc.n_encoded == 0
    np.testing.assert_array_equal(out, expected(enc, keys))


# ---------------------------------------------------------------- ml.embed over the cache

PHOTOS_DIR = (
    __import__("ml.config", fromlist=["REPO_ROOT"]).REPO_ROOT.parent
    / "shared"
    / "data"
    / "fashion-product-images-small-subset"
    / "images"
)


def _photos(n: int) -> list:
    photos = sorted(PHOTOS_DIR.glob("*.jpg"))[:n]
    if len(photos) < n:
        pytest.skip(f"real photos not present: {PHOTOS_DIR}")
    return photos


class FakeImageEncoder(FakeEncoder):
    """Stands in for ImageEncoder in ml.embed: a 'vector' per file content, records what it got."""

    name, version, dim = "fake-image", "1", 6  # ml.embed reads these from the class
    instances: list = []

    def __init__(self):
        super().__init__(name="fake-image", dim=6)
        FakeImageEncoder.instances.append(self)

    def vector(self, item) -> np.ndarray:
        return super().vector(hashlib.sha256(open(item, "rb").read()).hexdigest())


class FakeTextEncoder(FakeEncoder):
    name, version, dim = "fake-text", "1", 5
    instances: list = []

    def __init__(self):
        super().__init__(name="fake-text", dim=5)
        FakeTextEncoder.instances.append(self)


@pytest.fixture
def fake_encoders(monkeypatch):
    import ml.encoders.image
    import ml.encoders.text
    from ml.embed import shared_encoder

    FakeImageEncoder.instances, FakeTextEncoder.instances = [], []
    monkeypatch.setattr(ml.encoders.image, "ImageEncoder", FakeImageEncoder)
    monkeypatch.setattr(ml.encoders.text, "TextEncoder", FakeTextEncoder)
    shared_encoder.cache_clear()  # each test counts the instances its own run builds
    yield FakeImageEncoder.instances, FakeTextEncoder.instances
    shared_encoder.cache_clear()  # no fake outlives the test


def _frames(images, ptitles, rtexts):
    import pandas as pd

    products = pd.DataFrame(
        {
            "product_id": [f"P{k}" for k in range(len(images))],
            "title": ptitles,
            "text": "",
            "image": [str(p) for p in images],
        }
    )
    reviews = pd.DataFrame(
        {
            "customer_id": [f"C{k}" for k in range(len(rtexts))],
            "product_id": [f"P{k % len(images)}" for k in range(len(rtexts))],
            "title": "",
            "text": rtexts,
        }
    )
    return products, reviews


def test_embed_dataset_encodes_each_distinct_content_once_and_scatters(tmp_path, fake_encoders):
    import shutil

    from ml.embed import embed_dataset

    img_encs, txt_encs = fake_encoders
    a, b = _photos(2)
    copy = tmp_path / "copy-of-a.jpg"  # the same photo under another path (another product)
    shutil.copy(a, copy)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    images = [a, b, copy, broken, ""]
    ptitles = ["red dress", "blue jeans", "red dress", "", "hat"]
    rtexts = ["Great fit."] * 25 + ["Too small."] * 10 + ["", "red dress"]
    products, reviews = _frames(images, ptitles, rtexts)
    emb = embed_dataset(products, reviews, tmp_path / "cache", progress=False, verify_sample=0)

    # images: two distinct files among three readable ones; the broken one and "" are missing
    assert emb.has_image.tolist() == [True, True, True, False, False]
    assert [len(c) for c in img_encs[0].calls] == [2]
    ienc = img_encs[0]
    np.testing.assert_array_equal(emb.product_image[0], ienc.vector(a))
    np.testing.assert_array_equal(emb.product_image[2], ienc.vector(a))
    np.testing.assert_array_equal(emb.product_image[1], ienc.vector(b))
    assert not emb.product_image[3:].any()
    # texts: 36 review rows and 4 product rows with text, 5 distinct non-empty texts, each encoded once
    tenc = txt_encs[0]
    assert sorted(x for c in tenc.calls for x in c) == sorted(
        {"red dress", "blue jeans", "hat", "Great fit", "Too small"}
    )  # review_text drops the final "."
    assert emb.has_product_text.tolist() == [True, True, True, False, True]
    assert emb.has_review_text.sum() == 36
    for k, t in enumerate(rtexts):
        np.testing.assert_array_equal(
            emb.review_text[k], tenc.vector(t.rstrip(".")) if t else np.zeros(5, np.float32)
        )
    np.testing.assert_array_equal(emb.product_text[2], tenc.vector("red dress"))
    assert emb.stats["texts"] == {"rows": 40, "distinct": 5, "encoded": 5, "verified": 0}
    assert emb.stats["images"] == {"rows": 3, "distinct": 2, "encoded": 2, "verified": 0}
    # once embedded, each encoder lets go of its runtime's activation memory (ml/encoders/lite.py)
    assert (ienc.releases, tenc.releases) == (1, 1)

    # Second run, one product's text edited and one photo replaced: only those are encoded.
    c = _photos(3)[2]
    products2, reviews2 = _frames(
        [a, b, c, broken, ""], ["red dress", "blue jeans!", "red dress", "", "hat"], rtexts
    )
    emb2 = embed_dataset(products2, reviews2, tmp_path / "cache", progress=False, verify_sample=0)
    # one encoder instance per class and process (ml.embed.shared_encoder): the same ones, called again
    assert len(img_encs) == 1 and len(txt_encs) == 1
    assert img_encs[0].calls[1:] == [[str(c)]]
    assert txt_encs[0].calls[1:] == [["blue jeans!"]]
    np.testing.assert_array_equal(emb2.review_text, emb.review_text)
    np.testing.assert_array_equal(emb2.product_image[:2], emb.product_image[:2])
    assert emb2.stats["images"]["encoded"] == 1 and emb2.stats["texts"]["encoded"] == 1

    # Third run, nothing changed, as a fresh process (no encoder built yet): a warm run builds none
    from ml.embed import shared_encoder

    shared_encoder.cache_clear()
    emb3 = embed_dataset(products2, reviews2, tmp_path / "cache", progress=False, verify_sample=0)
    assert len(img_encs) == 1 and len(txt_encs) == 1  # (and releasing built none either)
    np.testing.assert_array_equal(emb3.product_image, emb2.product_image)
    assert (
        emb3.encoders
        == emb2.encoders
        == {"image": "fake-image-1", "text": "fake-text-1", "review_text": "fake-text-1"}
    )


def test_image_batches_decoded_in_threads_match_the_sequential_path():
    from ml.encoders.image import ImageEncoder

    photos = _photos(11)
    enc = ImageEncoder.__new__(ImageEncoder)  # no network needed for the input pipeline
    enc.batch_size = 4
    enc.loader_threads = 0
    sequential = list(enc._batches(photos))
    enc.loader_threads = 2
    threaded = list(enc._batches(photos))
    assert [len(b) for b in threaded] == [4, 4, 3]
    for x, y in zip(sequential, threaded):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(threaded[0][0], threaded[0][1])


def _poison(cache_dir, enc: FakeEncoder, keys: list[str], items: list[str]) -> None:
    """Store rows under `keys` that belong to other items: what a caller pairing keys with the wrong
    items leaves behind (the 2018 texts of session 4: every row another text's, cos ~0.35)."""
    from ml.encoders.cache import _Store

    store = _Store(EmbeddingCache(cache_dir).folder(enc), enc.dim)
    store.write_part(keys, expected(enc, items[1:] + items[:1]))


def test_a_poisoned_cache_is_detected_quarantined_and_recomputed(tmp_path):
    enc = FakeEncoder()
    keys = [f"sha1:{k}" for k in range(6)]
    items = [f"text {k}" for k in range(6)]
    _poison(tmp_path, enc, keys, items)
    assert not np.allclose(
        EmbeddingCache(tmp_path).embed(enc, keys, items, progress=False), expected(enc, items)
    )

    cache = EmbeddingCache(tmp_path, verify_sample=2)
    out = cache.embed(enc, keys, items, progress=False)
    np.testing.assert_array_equal(out, expected(enc, items))
    assert cache.last_corrupt and cache.last_verified >= 1 and cache.last_computed == 6
    folder = cache.folder(enc)
    assert len(list((folder / "quarantine").glob("*/part-*.npz"))) == 1  # kept aside, never read again
    # a fresh reader (another process) gets the recomputed rows and finds them right
    again = EmbeddingCache(tmp_path, verify_sample=6)
    np.testing.assert_array_equal(again.embed(enc, keys, items, progress=False), expected(enc, items))
    assert not again.last_corrupt and again.last_verified == 6 and again.last_computed == 0


def test_verification_encodes_only_a_sample_and_tolerates_numeric_noise(tmp_path):
    enc = FakeEncoder()
    keys = [f"k{k}" for k in range(50)]
    items = [f"item {k}" for k in range(50)]
    from ml.encoders.cache import _Store

    noisy = expected(enc, items) * (1 + 1e-4 * np.random.default_rng(0).standard_normal((50, 1)))
    _Store(EmbeddingCache(tmp_path).folder(enc), enc.dim).write_part(keys, noisy.astype(np.float32))
    cache = EmbeddingCache(tmp_path, verify_sample=3)
    out = cache.embed(enc, keys, items, progress=False)
    assert [len(c) for c in enc.calls] == [3]  # three rows re-encoded, nothing recomputed
    assert not cache.last_corrupt and cache.last_computed == 0
    np.testing.assert_array_equal(out, noisy.astype(np.float32))
    assert not (cache.folder(enc) / "quarantine").exists()


def test_embed_dataset_does_not_serve_rows_stored_under_the_wrong_text(tmp_path, fake_encoders):
    from ml.embed import embed_dataset, text_key

    _, txt_encs = fake_encoders
    rtexts = ["Great fit", "Too small", "Runs large", "Love it"]
    products, reviews = _frames([""], ["hat"], rtexts)
    texts = ["hat"] + rtexts
    _poison(tmp_path / "cache", FakeEncoder(name="fake-text", dim=5), [text_key(t) for t in texts], texts)

    emb = embed_dataset(products, reviews, tmp_path / "cache", progress=False, verify_sample=1)
    tenc = txt_encs[0]
    for k, t in enumerate(rtexts):
        np.testing.assert_array_equal(emb.review_text[k], tenc.vector(t))
    assert emb.stats["texts"]["cache_corrupt"] is True and emb.stats["texts"]["encoded"] == 5


class PrecisionTextEncoder(FakeEncoder):
    """A text encoder whose vectors depend on a setting, as TextEncoder's on RECSYS_TEXT_PRECISION."""

    name, version, dim = "fake-text", "1", 5
    instances: list = []

    @classmethod
    def cache_version(cls, precision: str | None = None) -> str:
        import os

        precision = precision or os.environ.get("RECSYS_TEXT_PRECISION", "float32")
        return cls.version if precision == "float32" else f"{cls.version}-{precision}"

    def __init__(self, precision: str | None = None):
        super().__init__(name="fake-text", version=self.cache_version(precision), dim=5)
        PrecisionTextEncoder.instances.append(self)


def test_text_vectors_of_two_precisions_are_cached_apart(tmp_path, monkeypatch):
    """Switching RECSYS_TEXT_PRECISION never serves the other precision's cached vectors: each has
    its own cache folder, manifest name and encoder instance (ml.embed.shared_encoder per version)."""
    import ml.encoders.text
    from ml.embed import embed_dataset, shared_encoder

    monkeypatch.setattr(ml.encoders.text, "TextEncoder", PrecisionTextEncoder)
    PrecisionTextEncoder.instances = []
    shared_encoder.cache_clear()
    try:
        products, reviews = _frames(["", ""], ["red dress", "hat"], ["Great fit."])
        runs = {}
        for precision in ("float32", "int8", "float32"):
            monkeypatch.setenv("RECSYS_TEXT_PRECISION", precision)
            monkeypatch.setenv("RECSYS_REVIEW_TEXT_PRECISION", precision)
            emb = embed_dataset(products, reviews, tmp_path / "cache", progress=False, verify_sample=0)
            runs.setdefault(precision, []).append(emb)
    finally:
        shared_encoder.cache_clear()
    assert [e.encoders["text"] for e in runs["float32"]] == ["fake-text-1"] * 2
    assert runs["int8"][0].encoders["text"] == "fake-text-1-int8"
    assert [enc.version for enc in PrecisionTextEncoder.instances] == ["1", "1-int8"]
    assert [len(enc.calls) for enc in PrecisionTextEncoder.instances] == [1, 1]  # the rerun: from cache
    assert not np.allclose(runs["float32"][0].product_text, runs["int8"][0].product_text)
    np.testing.assert_array_equal(runs["float32"][1].product_text, runs["float32"][0].product_text)
    assert sorted(p.name for p in (tmp_path / "cache" / "embeddings").iterdir()) == [
        "fake-text-1",
        "fake-text-1-int8",
    ]


def _embed_texts_with(encoder_cls, monkeypatch, tmp_path, ptitles: list, rtexts: list):
    """embed_dataset of products titled `ptitles` (no photo) and reviews `rtexts`, `encoder_cls` as
    the text encoder, product texts float32 and review texts int8; (embeddings, encoders built)."""
    import ml.encoders.text
    from ml.embed import embed_dataset, shared_encoder

    monkeypatch.setattr(ml.encoders.text, "TextEncoder", encoder_cls)
    monkeypatch.setenv("RECSYS_TEXT_PRECISION", "float32")
    monkeypatch.setenv("RECSYS_REVIEW_TEXT_PRECISION", "int8")
    PrecisionTextEncoder.instances = []
    shared_encoder.cache_clear()
    try:
        products, reviews = _frames([""] * len(ptitles), ptitles, rtexts)
        emb = embed_dataset(products, reviews, tmp_path / "cache", progress=False, verify_sample=0)
    finally:
        shared_encoder.cache_clear()
    return emb, PrecisionTextEncoder.instances


def test_product_and_review_texts_follow_their_own_precision(tmp_path, monkeypatch):
    """Product texts in RECSYS_TEXT_PRECISION, review texts in RECSYS_REVIEW_TEXT_PRECISION: two
    encoders, each text of a role encoded once by its own, the manifest naming both; a text that is
    both a product's and a review's is encoded by each (their vectors differ)."""
    emb, (f32, i8) = _embed_texts_with(
        PrecisionTextEncoder,
        monkeypatch,
        tmp_path,
        ["red dress", "hat", ""],
        ["Great fit.", "red dress", "Great fit."],
    )
    assert (f32.version, i8.version) == ("1", "1-int8")
    assert f32.calls == [["hat", "red dress"]] and i8.calls == [["Great fit", "red dress"]]
    assert emb.encoders["text"] == "fake-text-1" and emb.encoders["review_text"] == "fake-text-1-int8"
    np.testing.assert_array_equal(emb.product_text[0], f32.vector("red dress"))
    np.testing.assert_array_equal(emb.review_text[1], i8.vector("red dress"))
    np.testing.assert_array_equal(emb.review_text[2], i8.vector("Great fit"))
    assert not emb.product_text[2].any() and emb.has_product_text.tolist() == [True, True, False]
    assert emb.stats["texts"] == {"rows": 5, "distinct": 4, "encoded": 4, "verified": 0}
    assert (f32.releases, i8.releases) == (1, 1)


def test_encoders_are_built_side_by_side_before_any_encodes(tmp_path, monkeypatch):
    """Every encoder embedding will call is built inside `lite.side_by_side` (where a cold cache's
    TFLite conversions run at once) before any of them encodes, the image one first (the longest
    conversion); photos still to fetch count when the cache check re-encodes; a warm run without
    the check builds none."""
    import ml.encoders.image
    import ml.encoders.text
    from ml.embed import embed_dataset, shared_encoder
    from ml.encoders import lite

    built: list[tuple[str, bool, int]] = []  # (name, inside side_by_side, encode calls so far)

    def recording(cls):
        class Recording(cls):
            def __init__(self, *args, **kwargs):
                inside = getattr(lite._side_by_side, "pending", None) is not None
                calls = sum(len(e.calls) for e in FakeImageEncoder.instances + PrecisionTextEncoder.instances)
                built.append((cls.name, inside, calls))
                super().__init__(*args, **kwargs)

        return Recording

    monkeypatch.setattr(ml.encoders.image, "ImageEncoder", recording(FakeImageEncoder))
    monkeypatch.setattr(ml.encoders.text, "TextEncoder", recording(PrecisionTextEncoder))
    monkeypatch.setenv("RECSYS_TEXT_PRECISION", "float32")
    monkeypatch.setenv("RECSYS_REVIEW_TEXT_PRECISION", "int8")
    FakeImageEncoder.instances, PrecisionTextEncoder.instances = [], []
    products, reviews = _frames(_photos(2), ["red dress", "hat"], ["Great fit.", "red dress"])

    def embed(verify_sample: int, localize=None):
        shared_encoder.cache_clear()
        try:
            return embed_dataset(
                products,
                reviews,
                tmp_path / "cache",
                progress=False,
                verify_sample=verify_sample,
                localize=localize,
            )
        finally:
            shared_encoder.cache_clear()

    emb = embed(0)
    assert built == [("fake-image", True, 0), ("fake-text", True, 0), ("fake-text", True, 0)]
    assert emb.stats["seconds"]["encoders"] >= 0
    built.clear()
    embed(0)  # all cached, no check: no network
    assert built == []
    embed(1, localize=lambda frame, stop: frame)  # the photos' keys unknown until fetched
    assert [(name, inside) for name, inside, _ in built] == [("fake-image", True), *[("fake-text", True)] * 2]


def test_two_precision_settings_of_one_version_take_one_pass(tmp_path, monkeypatch):
    """Where the settings' precisions give one version (the Keras runtime is always float32), the
    product and review texts go through one encoder in one pass, a text shared by both once."""

    class KerasRuntimeText(PrecisionTextEncoder):
        @classmethod
        def cache_version(cls, precision: str | None = None) -> str:
            return cls.version

    emb, built = _embed_texts_with(
        KerasRuntimeText, monkeypatch, tmp_path, ["red dress", "hat"], ["Great fit.", "red dress"]
    )
    [enc] = built
    assert enc.calls == [["hat", "red dress", "Great fit"]]
    assert emb.encoders["text"] == emb.encoders["review_text"] == "fake-text-1"
    np.testing.assert_array_equal(emb.review_text[1], emb.product_text[0])


def test_photos_are_localised_while_the_texts_are_embedded(tmp_path, fake_encoders, monkeypatch):
    """`localize` (fetching photo URLs) runs beside the text encoder: each waits until the other has
    started, which one after the other never happens. The images are embedded from what it returns;
    a failure in it is raised; a failure in the texts sets its `stop` event."""
    import threading

    from ml.embed import embed_dataset

    texts_started, fetch_started = threading.Event(), threading.Event()
    encode = FakeTextEncoder.encode

    def encode_and_wait(self, items):
        texts_started.set()
        assert fetch_started.wait(20), "the photos were not fetched while the texts were embedded"
        return encode(self, items)

    monkeypatch.setattr(FakeTextEncoder, "encode", encode_and_wait)
    a, b = _photos(2)
    urls = ["https://shop.test/a.jpg", "https://shop.test/b.jpg"]
    products, reviews = _frames(urls, ["red dress", "hat"], ["Fit."])

    def localize(frame, stop):
        fetch_started.set()
        assert texts_started.wait(20), "the photos were fetched before the texts were embedded, not beside"
        return frame.assign(image=[str(a), str(b)])

    emb = embed_dataset(
        products, reviews, tmp_path / "cache", progress=False, verify_sample=0, localize=localize
    )
    assert emb.has_image.tolist() == [True, True]
    np.testing.assert_array_equal(emb.product_image[1], fake_encoders[0][0].vector(b))
    assert list(emb.stats["seconds"]) == ["encoders", "fetch", "embed_images", "embed_texts"]

    def broken(frame, stop):
        raise OSError("image cache not writable")

    with pytest.raises(OSError, match="not writable"):
        embed_dataset(
            products, reviews, tmp_path / "cache2", progress=False, verify_sample=0, localize=broken
        )

    def failing_texts(self, items):
        raise RuntimeError("text encoder crashed")

    stopped = threading.Event()

    def slow_fetch(frame, stop):
        stopped.set() if stop.wait(20) else None
        return frame

    monkeypatch.setattr(FakeTextEncoder, "encode", failing_texts)
    with pytest.raises(RuntimeError, match="crashed"):
        embed_dataset(
            products, reviews, tmp_path / "cache3", progress=False, verify_sample=0, localize=slow_fetch
        )
    assert stopped.wait(20)  # the fetch was told to stop, and did not hold the caller up


def test_releasing_after_a_build_that_failed_builds_nothing():
    """`release_arena` runs in a `finally`: after a build a time limit stopped, building the encoder
    again there ran the training task into its hard limit (tests/test_tasks.py's soft-limit test)."""
    from ml.embed import _LazyEncoder, shared_encoder

    class Stopped(Exception):
        pass

    class SlowToBuild:
        name, version, dim = "slow", "1", 3
        builds = 0

        def __init__(self):
            SlowToBuild.builds += 1
            raise Stopped("the soft limit, mid-build")

    lazy = _LazyEncoder(SlowToBuild)
    try:
        with pytest.raises(Stopped):
            lazy.encode(["x"])
        lazy.release_arena()
        assert SlowToBuild.builds == 1
    finally:
        shared_encoder.cache_clear()
