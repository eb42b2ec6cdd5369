"""demo: the synthetic Amazon_Fashion (2023 format) world is deterministic, complete and coherent."""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo import (
    COLD_RATINGS_FILE,
    IMAGES_DIR,
    META_FILE,
    README_FILE,
    REVIEWS_FILE,
    TRUTH_DIR,
    WORLD_FILE,
    find_fashion_mnist,
    generate_world,
)
from demo.vocabulary import COLOURS, GARMENTS

SMALL = {"n_customers": 120, "n_products": 60, "seed": 3, "image_size": 48, "image_source": "rendered"}
USER_ID = re.compile(r"^A[A-Z0-9]{27}$")
PARENT_ASIN = re.compile(r"^B0[A-Z0-9]{8}$")
POSITIVE = ("love", "perfect", "beautiful", "gorgeous", "highly recommend", "so happy")
NEGATIVE = (
    "disappointed",
    "cheap",
    "terrible",
    "waste",
    "returned",
    "returning",
    "flimsy",
    "uncomfortable",
    "unflattering",
    "avoid",
)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "world"
    summary = generate_world(out, **SMALL)
    return {
        "dir": out,
        "summary": summary,
        "reviews": read_jsonl(out / REVIEWS_FILE),
        "meta": read_jsonl(out / META_FILE),
        "truth": read_jsonl(out / TRUTH_DIR / COLD_RATINGS_FILE),
        "world": json.loads((out / TRUTH_DIR / WORLD_FILE).read_text()),
    }


def test_same_seed_gives_byte_identical_files(tmp_path, world):
    again = generate_world(tmp_path / "again", **SMALL)
    first, second = all_files(world["dir"]), all_files(tmp_path / "again")
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []
    assert {k: v for k, v in again.items() if k not in ("out_dir", "paths")} == {
        k: v for k, v in world["summary"].items() if k not in ("out_dir", "paths")
    }


def test_another_seed_gives_another_world(tmp_path, world):
    generate_world(tmp_path / "other", **{**SMALL, "seed": 4})
    assert (tmp_path / "other" / REVIEWS_FILE).read_bytes() != (world["dir"] / REVIEWS_FILE).read_bytes()


@pytest.mark.parametrize("image_source", ["rendered", "auto"])
def test_output_is_byte_identical_for_the_same_seed(tmp_path, image_source):
    """Every file, pictures included, is a function of the seed and parameters alone: the same seed
    gives the same bytes (also after another world was made in the same process), another seed other
    bytes. "auto" takes Fashion-MNIST's pictures when it is installed."""
    params = {"n_customers": 16, "n_products": 12, "image_size": 32, "image_source": image_source}
    generate_world(tmp_path / "a", seed=11, **params)
    generate_world(tmp_path / "b", seed=12, **params)
    generate_world(tmp_path / "c", seed=11, **params)
    a, b, c = (all_files(tmp_path / name) for name in "abc")
    assert len(a) == 12 + 5 and sorted(a) == sorted(c)
    assert [name for name in a if a[name] != c[name]] == []
    # another seed: other products (picture names) and every data file different
    assert not {n for n in a if n.startswith(IMAGES_DIR)} & {n for n in b if n.startswith(IMAGES_DIR)}
    data_files = [
        REVIEWS_FILE,
        META_FILE,
        README_FILE,
        f"{TRUTH_DIR}/{COLD_RATINGS_FILE}",
        f"{TRUTH_DIR}/{WORLD_FILE}",
    ]
    assert [name for name in data_files if a[name] == b[name]] == []


def test_summary(world):
    s = world["summary"]
    assert s["synthetic"] is True
    assert s["image_source"] == "rendered" and s["image_source_path"] is None
    assert s["n_products"] == 60 and s["n_customers"] == 120 and s["seed"] == 3
    assert s["n_cold_products"] == round(0.15 * 60) == 9
    assert s["n_warm_products"] + s["n_cold_products"] == 60
    assert s["n_reviews"] == len(world["reviews"]) == sum(s["rating_histogram"].values())
    json.dumps(s)  # serialisable
    for path in s["paths"].values():
        assert Path(path).exists()


def test_meta_lines(world):
    meta = world["meta"]
    assert len(meta) == 60
    asins = [m["parent_asin"] for m in meta]
    assert len(set(asins)) == 60
    colour_names = {c[0] for c in COLOURS}
    nouns = {g.noun for g in GARMENTS}
    for m in meta:
        assert PARENT_ASIN.match(m["parent_asin"])
        assert m["main_category"] == "AMAZON FASHION"
        assert isinstance(m["title"], str) and m["title"]
        assert isinstance(m["features"], list) and all(isinstance(f, str) for f in m["features"])
        assert isinstance(m["description"], list) and all(isinstance(d, str) for d in m["description"])
        assert isinstance(m["price"], float) and m["price"] > 0
        assert isinstance(m["store"], str) and m["store"]
        assert isinstance(m["categories"], list) and isinstance(m["details"], dict)
        [image] = m["images"]
        assert image["variant"] == "MAIN" and image["hi_res"] is None
        assert image["large"] == f"images/{m['parent_asin']}.png"
        # visual attributes are written in the text
        title = m["title"].lower()
        assert any(c in title for c in colour_names)
        assert any(n in title for n in nouns)


def test_text_states_the_latent_attributes(world):
    products = {p["parent_asin"]: p for p in world["world"]["products"]}
    for m in world["meta"]:
        p = products[m["parent_asin"]]
        text = " ".join([m["title"], *m["features"], *m["description"]]).lower()
        assert p["colour"] in text
        assert p["style"] in text
        if p["pattern"] != "plain":
            assert p["pattern"] in text


def test_every_product_has_an_image_of_the_right_size(world):
    for m in world["meta"]:
        path = world["dir"] / m["images"][0]["large"]
        assert path.is_file()
        with Image.open(path) as im:
            im.load()
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (48, 48)
    assert len(list((world["dir"] / "images").glob("*.png"))) == 60


def test_images_show_the_colour(world):
    """The garment's colour is among the two commonest palette colours of the picture (white is left
    out: it is close to the light background, and it is the ink of stripes and dots)."""
    products = {p["parent_asin"]: p for p in world["world"]["products"]}
    palette = {name: rgb for name, rgb in COLOURS if name != "white"}
    checked = right = 0
    for asin, p in products.items():
        if p["colour"] == "white":
            continue
        with Image.open(world["dir"] / "images" / f"{asin}.png") as im:
            arr = np.asarray(im.convert("RGB"), dtype=float).reshape(-1, 3)
        counts = {
            name: int((np.linalg.norm(arr - np.array(rgb), axis=1) < 40).sum())
            for name, rgb in palette.items()
        }
        top2 = sorted(counts, key=counts.get, reverse=True)[:2]
        checked += 1
        right += p["colour"] in top2
    assert checked > 20 and right >= 0.9 * checked


def test_cold_products_have_no_reviews_and_warm_ones_do(world):
    cold = {p["parent_asin"] for p in world["world"]["products"] if p["cold"]}
    assert len(cold) == 9
    reviewed = collections.Counter(r["parent_asin"] for r in world["reviews"])
    assert not cold & set(reviewed)
    assert set(reviewed) == {m["parent_asin"] for m in world["meta"]} - cold
    for m in world["meta"]:
        assert m["rating_number"] == reviewed.get(m["parent_asin"], 0)
        if m["parent_asin"] in cold:
            assert m["average_rating"] is None
        else:
            assert 1.0 <= m["average_rating"] <= 5.0


def test_review_lines(world):
    reviews = world["reviews"]
    asins = {m["parent_asin"] for m in world["meta"]}
    for r in reviews:
        assert set(r) == {
            "rating",
            "title",
            "text",
            "images",
            "asin",
            "parent_asin",
            "user_id",
            "timestamp",
            "helpful_vote",
            "verified_purchase",
        }
        assert isinstance(r["rating"], float) and r["rating"] in (1.0, 2.0, 3.0, 4.0, 5.0)
        assert USER_ID.match(r["user_id"]), r["user_id"]
        assert r["parent_asin"] in asins and r["asin"] == r["parent_asin"]
        assert r["images"] == [] and r["title"] and r["text"]
        assert isinstance(r["timestamp"], int)
        assert 1_577_836_800_000 <= r["timestamp"] < 1_893_456_000_000  # 2020 .. 2030, in ms
        assert isinstance(r["helpful_vote"], int) and r["helpful_vote"] >= 0
        assert isinstance(r["verified_purchase"], bool)
    pairs = [(r["user_id"], r["parent_asin"]) for r in reviews]
    assert len(set(pairs)) == len(pairs)


def test_customers(world):
    per_user = collections.defaultdict(list)
    for r in world["reviews"]:
        per_user[r["user_id"]].append(r["timestamp"])
    assert len(per_user) == 120
    for times in per_user.values():
        assert 4 <= len(times) <= 12
        assert len(set(times)) == len(times)
    # the file is in time order
    stamps = [r["timestamp"] for r in world["reviews"]]
    assert stamps == sorted(stamps)


def test_ratings_span_one_to_five_with_a_sensible_mean(world):
    ratings = np.array([r["rating"] for r in world["reviews"]])
    assert set(ratings.tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 3.5 <= ratings.mean() <= 4.2
    assert world["summary"]["rating_histogram"] == {str(k): int((ratings == k).sum()) for k in range(1, 6)}


def test_review_texts_agree_with_ratings(world):
    def has(r, words):
        text = (r["title"] + " " + r["text"]).lower()
        return any(w in text for w in words)

    pos = [r["rating"] for r in world["reviews"] if has(r, POSITIVE) and not has(r, NEGATIVE)]
    neg = [r["rating"] for r in world["reviews"] if has(r, NEGATIVE) and not has(r, POSITIVE)]
    assert len(pos) > 50 and len(neg) > 20
    assert np.mean(pos) >= 4.0 and np.mean(neg) <= 2.5
    assert np.mean(pos) - np.mean(neg) > 1.5


def test_review_texts_mention_the_product(world):
    products = {p["parent_asin"]: p for p in world["world"]["products"]}
    pattern_words = {"striped": "stripes", "polka dot": "dot", "plain": "solid"}
    mentioned = 0
    for r in world["reviews"]:
        p = products[r["parent_asin"]]
        text = (r["title"] + " " + r["text"]).lower()
        mentioned += p["colour"] in text or pattern_words[p["pattern"]] in text or p["style"] in text
    assert mentioned >= 0.4 * len(world["reviews"])


def test_popular_products_get_more_reviews(world):
    products = world["world"]["products"]
    counts = collections.Counter(r["parent_asin"] for r in world["reviews"])
    warm = [p for p in products if not p["cold"]]
    pop = np.array([p["log_popularity"] for p in warm])
    n = np.array([counts[p["parent_asin"]] for p in warm])
    assert np.corrcoef(pop, n)[0, 1] > 0.3


def test_cold_truth(world):
    cold = {p["parent_asin"] for p in world["world"]["products"] if p["cold"]}
    users = {r["user_id"] for r in world["reviews"]}
    truth = world["truth"]
    assert len(truth) == 120 * 9
    assert {t["parent_asin"] for t in truth} == cold
    assert {t["user_id"] for t in truth} == users
    assert len({(t["user_id"], t["parent_asin"]) for t in truth}) == len(truth)
    ratings = np.array([t["rating"] for t in truth])
    assert ratings.min() >= 1.0 and ratings.max() <= 5.0 and ratings.std() > 0.3
    # expected rating is increasing in the latent score
    latent = np.array([t["latent"] for t in truth])
    order = np.argsort(latent)
    assert np.all(np.diff(ratings[order]) >= -1e-3)


def test_world_json(world):
    w = world["world"]
    assert w["synthetic"] is True
    assert w["parameters"]["seed"] == 3
    assert len(w["products"]) == 60 and len(w["customers"]) == 120
    assert sum(p["cold"] for p in w["products"]) == 9


def test_readme_says_synthetic(world):
    text = (world["dir"] / README_FILE).read_text()
    assert "synthetic" in text.lower()
    assert "demo.generate_world" in text
    assert "seed=3" in text and "n_customers=120" in text and "n_products=60" in text


def test_rerun_in_the_same_folder_replaces_the_world(tmp_path):
    out = tmp_path / "w"
    generate_world(out, **{**SMALL, "n_products": 20, "n_customers": 20})
    s = generate_world(out, **{**SMALL, "n_products": 20, "n_customers": 20, "seed": 9})
    pngs = {p.stem for p in (out / "images").glob("*.png")}
    assert pngs == {m["parent_asin"] for m in read_jsonl(out / META_FILE)}
    assert s["seed"] == 9 and not list(out.rglob("*.tmp"))


def test_edge_sizes(tmp_path):
    s = generate_world(
        tmp_path / "tiny",
        n_customers=3,
        n_products=4,
        seed=0,
        cold_fraction=0.0,
        reviews_per_customer=(2, 2),
        image_size=32,
        image_source="rendered",
    )
    assert s["n_cold_products"] == 0
    assert (tmp_path / "tiny" / TRUTH_DIR / COLD_RATINGS_FILE).read_text() == ""
    reviewed = {r["parent_asin"] for r in read_jsonl(tmp_path / "tiny" / REVIEWS_FILE)}
    assert len(reviewed) == 4  # every warm product is reviewed
    with pytest.raises(ValueError):
        generate_world(tmp_path / "bad", n_products=1)
    with pytest.raises(ValueError):
        generate_world(tmp_path / "bad", cold_fraction=1.0)
    with pytest.raises(ValueError):
        generate_world(tmp_path / "bad", reviews_per_customer=(5, 2))
    with pytest.raises(ValueError):
        generate_world(tmp_path / "bad", image_source="photos")


def test_auto_falls_back_to_rendered_pictures(tmp_path):
    empty = tmp_path / "no-fashion-mnist"
    empty.mkdir()
    s = generate_world(
        tmp_path / "w",
        **{**SMALL, "n_products": 12, "n_customers": 10, "image_source": "auto"},
        fashion_mnist_dir=empty,
    )
    assert s["image_source"] == "rendered"
    with pytest.raises(FileNotFoundError):
        generate_world(tmp_path / "w2", **{**SMALL, "image_source": "fashion-mnist"}, fashion_mnist_dir=empty)


@pytest.mark.skipif(find_fashion_mnist() is None, reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_pictures(tmp_path):
    params = {**SMALL, "n_products": 30, "n_customers": 30, "image_source": "fashion-mnist"}
    a = generate_world(tmp_path / "a", **params)
    generate_world(tmp_path / "b", **params)
    assert a["image_source"] == "fashion-mnist" and a["image_source_path"]
    assert all_files(tmp_path / "a") == all_files(tmp_path / "b")
    for png in (tmp_path / "a" / "images").glob("*.png"):
        with Image.open(png) as im:
            assert im.mode == "RGB" and im.size == (48, 48)
    assert "Fashion-MNIST" in (tmp_path / "a" / README_FILE).read_text()
    # the ratings do not depend on where the pictures came from
    rendered = generate_world(tmp_path / "c", **{**params, "image_source": "rendered"})
    assert (tmp_path / "a" / REVIEWS_FILE).read_bytes() == (tmp_path / "c" / REVIEWS_FILE).read_bytes()
    assert rendered["rating_histogram"] == a["rating_histogram"]


def test_jitter_variation_jpeg_and_truth_cap(tmp_path):
    """The large-world options on a small world: JPEG pictures, one base picture per garment/colour/
    pattern with a distinct cheap variant per product, and the cold truth capped to whole customers."""
    import hashlib

    from PIL import Image

    out = tmp_path / "w"
    s = generate_world(
        out, **{**SMALL, "image_size": 64}, image_format="jpg", image_variation="jitter", truth_max_pairs=100
    )
    metas = read_jsonl(out / META_FILE)
    files = sorted((out / IMAGES_DIR).iterdir())
    assert {f.suffix for f in files} == {".jpg"} and len(files) == SMALL["n_products"]
    for m in metas:
        rel = m["images"][0]["large"]
        assert rel == f"{IMAGES_DIR}/{m['parent_asin']}.jpg"
        with Image.open(out / rel) as im:
            assert im.format == "JPEG" and im.size == (64, 64)
    assert len({hashlib.sha1(f.read_bytes()).hexdigest() for f in files}) == len(files)  # all distinct
    assert s["image_variation"] == "jitter" and s["image_format"] == "jpg"
    truth = read_jsonl(out / TRUTH_DIR / COLD_RATINGS_FILE)
    n_cold = s["n_cold_products"]
    assert s["truth_customers"] == 100 // n_cold and len(truth) == s["truth_customers"] * n_cold
    assert "variant" in (out / "SYNTHETIC.md").read_text()
    # same seed and options, same bytes
    generate_world(
        tmp_path / "again",
        **{**SMALL, "image_size": 64},
        image_format="jpg",
        image_variation="jitter",
        truth_max_pairs=100,
    )
    assert all_files(out) == all_files(tmp_path / "again")
