"""Writing a synthetic world to a folder: `generate_world` and `with_image_urls`.

`generate_world(out_dir, ...)` writes, in `out_dir`:

- `Amazon_Fashion.jsonl`       the reviews (rating, title, text, images, asin, parent_asin, user_id,
                               timestamp in ms, helpful_vote, verified_purchase);
- `meta_Amazon_Fashion.jsonl`  one line per product (main_category, title, average_rating,
                               rating_number, features, description, price, images, videos, store,
                               categories, details, parent_asin, bought_together); the image is a
                               path relative to `out_dir`: `images/<parent_asin>.png` (or .jpg);
- `images/<parent_asin>.png`   an RGB picture of the product (see `demo.images`);
- `SYNTHETIC.md`               a plain statement that the folder is synthetic, with seed and parameters;
- `truth/cold_ratings.jsonl`   for every customer and every never-rated ("cold") product the
                               noise-free expected rating (to evaluate cold-start ranking);
- `truth/world.json`           the latent parameters (product attributes, quality, popularity,
                               customer tastes and biases, model constants).

The truth files are the answers, for evaluation only (`ml.evaluate`'s cold-start check): they sit in
a subfolder because the data loaders read only a folder's top-level files, so training never sees them.
`SYNTHETIC.md` is written last, so a folder that has it is complete (`docker/train.sh` and the demo
launcher skip generating when it is there). Each file is written whole and renamed into place.

Same seed and parameters give byte-identical files; nothing depends on the wall clock.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from demo import world as model
from demo.images import Pictures, find_fashion_mnist
from demo.text import meta_line, review_line
from demo.vocabulary import COLOURS, GARMENTS, PATTERNS, STORES, STYLES
from demo.world import BASE_MS, DAY_MS, Streams, World, build_world, draw_rating, expected_rating

GENERATOR_VERSION = "1"
GENERATOR = f"demo v{GENERATOR_VERSION}"  # in world.json and the summary

REVIEWS_FILE = "Amazon_Fashion.jsonl"
META_FILE = "meta_Amazon_Fashion.jsonl"
IMAGES_DIR = "images"
# Above this many products, `image_variation="auto"` makes one picture per garment/colour/pattern and
# cheap per-product variants of it (a 10,000-product world in seconds instead of minutes).
VARY_ABOVE = 2000
# The cold-start truth file holds at most this many (customer, product) pairs (~100 bytes each).
TRUTH_MAX_PAIRS = 2_000_000
TRUTH_DIR = "truth"
COLD_RATINGS_FILE = "cold_ratings.jsonl"
WORLD_FILE = "world.json"
README_FILE = "SYNTHETIC.md"


@dataclass(frozen=True)
class Options:
    """generate_world's arguments, checked and resolved ("auto" image source and variation)."""

    n_customers: int
    n_products: int
    seed: int
    cold_fraction: float
    lo: int  # reviews per customer, at least
    hi: int  # and at most
    image_size: int
    source: str  # "rendered" | "fashion-mnist"
    fm_dir: Path | None
    image_format: str  # "png" | "jpg"
    variation: str  # "per-product" | "jitter"
    truth_max_pairs: int

    @property
    def n_cold(self) -> int:
        return min(int(round(self.cold_fraction * self.n_products)), self.n_products - 1)


def generate_world(
    out_dir: str | Path,
    n_customers: int = 400,
    n_products: int = 240,
    seed: int = 0,
    cold_fraction: float = 0.15,
    reviews_per_customer: tuple[int, int] = (4, 12),
    image_size: int = 224,
    image_source: str = "auto",
    fashion_mnist_dir: str | Path | None = None,
    image_format: str = "png",
    image_variation: str = "auto",
    truth_max_pairs: int = TRUTH_MAX_PAIRS,
) -> dict[str, Any]:
    """Write a synthetic Amazon_Fashion (2023 format) world into `out_dir`; return a summary.

    `image_source`: "auto" (Fashion-MNIST when installed, else drawn), "rendered" or
    "fashion-mnist" (raises FileNotFoundError when the files are missing). `fashion_mnist_dir`
    overrides where to look for the idx files. `image_format`: "png" or "jpg" (JPEG, quality 90).
    `image_variation`: "per-product" (each picture made from scratch, ~10-25 ms each), "jitter"
    (one picture per garment/colour/pattern, each product a cheap variant of it: flipped, shifted
    and lightened or darkened, so every product still has its own picture) or "auto" (per-product
    up to VARY_ABOVE products). `truth_max_pairs`: the cold-start truth covers every customer x
    cold product pair up to this many; above it, the first customers (in id order) that fit.
    """
    opts = _options(
        n_customers,
        n_products,
        seed,
        cold_fraction,
        reviews_per_customer,
        image_size,
        image_source,
        fashion_mnist_dir,
        image_format,
        image_variation,
        truth_max_pairs,
    )
    out = Path(out_dir)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (out / TRUTH_DIR).mkdir(parents=True, exist_ok=True)
    # the reviews draw from the time stream before the meta lines do (listing dates): keep the order
    streams = Streams.from_seed(opts.seed)
    world = build_world(streams, opts.n_customers, opts.n_products, opts.n_cold, opts.lo, opts.hi)
    reviews, first_review_ms = _reviews(world, streams)
    metas = _meta_lines(world, reviews, first_review_ms, streams.time, opts.image_format)
    _write_images(out / IMAGES_DIR, world.products, opts)
    truth, truth_customers = _cold_truth(world, opts.truth_max_pairs)
    params = _parameters(opts, truth_customers)
    stats = _rating_stats(reviews)
    # SYNTHETIC.md last: a folder that has it is complete
    _write_jsonl(out / REVIEWS_FILE, reviews)
    _write_jsonl(out / META_FILE, metas)
    _write_text(out / TRUTH_DIR / COLD_RATINGS_FILE, truth)
    world_json = _world_json(params, opts.source, world)
    _write_text(out / TRUTH_DIR / WORLD_FILE, json.dumps(world_json, indent=1, sort_keys=True) + "\n")
    _write_text(out / README_FILE, _readme(params, opts.source, opts.n_cold, len(reviews), *stats))
    return _summary(out, opts, params, len(reviews), *stats)


# ----------------------------------------------------------------------------- options
def _options(
    n_customers,
    n_products,
    seed,
    cold_fraction,
    reviews_per_customer,
    image_size,
    image_source,
    fashion_mnist_dir,
    image_format,
    image_variation,
    truth_max_pairs,
) -> Options:
    """Check generate_world's arguments (ValueError, FileNotFoundError) and resolve the "auto" ones."""
    n_customers, n_products, seed, image_size = int(n_customers), int(n_products), int(seed), int(image_size)
    lo, hi = (int(v) for v in reviews_per_customer)
    if n_customers < 1:
        raise ValueError("n_customers must be >= 1")
    if n_products < 2:
        raise ValueError("n_products must be >= 2")
    if not 0.0 <= float(cold_fraction) < 1.0:
        raise ValueError("cold_fraction must be in [0, 1)")
    if lo < 1 or hi < lo:
        raise ValueError("reviews_per_customer must be (lo, hi) with 1 <= lo <= hi")
    if image_size < 16:
        raise ValueError("image_size must be >= 16")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    fm_dir = _fashion_mnist(image_source, fashion_mnist_dir)
    if image_format not in ("png", "jpg"):
        raise ValueError("image_format must be 'png' or 'jpg'")
    if image_variation not in ("auto", "per-product", "jitter"):
        raise ValueError("image_variation must be 'auto', 'per-product' or 'jitter'")
    if image_variation == "auto":
        image_variation = "jitter" if n_products > VARY_ABOVE else "per-product"
    return Options(
        n_customers=n_customers,
        n_products=n_products,
        seed=seed,
        cold_fraction=float(cold_fraction),
        lo=lo,
        hi=hi,
        image_size=image_size,
        source="fashion-mnist" if fm_dir is not None else "rendered",
        fm_dir=fm_dir,
        image_format=image_format,
        variation=image_variation,
        truth_max_pairs=truth_max_pairs,
    )


def _fashion_mnist(image_source: str, fashion_mnist_dir: str | Path | None) -> Path | None:
    """Fashion-MNIST's folder when the pictures come from it, None when they are drawn."""
    if image_source not in ("auto", "rendered", "fashion-mnist"):
        raise ValueError("image_source must be 'auto', 'rendered' or 'fashion-mnist'")
    if image_source == "rendered":
        return None
    fm_dir = find_fashion_mnist([fashion_mnist_dir] if fashion_mnist_dir else None)
    if fm_dir is None and image_source == "fashion-mnist":
        raise FileNotFoundError(
            "Fashion-MNIST not found (install Debian's dataset-fashion-mnist or pass fashion_mnist_dir)"
        )
    return fm_dir


def _parameters(opts: Options, truth_customers: int) -> dict[str, Any]:
    """The parameters recorded in SYNTHETIC.md, world.json and the summary (in that order)."""
    params: dict[str, Any] = {
        "n_customers": opts.n_customers,
        "n_products": opts.n_products,
        "seed": opts.seed,
        "cold_fraction": opts.cold_fraction,
        "reviews_per_customer": [opts.lo, opts.hi],
        "image_size": opts.image_size,
    }
    # parameters beyond the original ones are recorded only when they change the files
    if opts.image_format != "png":
        params["image_format"] = opts.image_format
    if opts.variation != "per-product":
        params["image_variation"] = opts.variation
    if truth_customers < opts.n_customers:
        params["truth_customers"] = truth_customers
    return params


# ----------------------------------------------------------------------------- reviews, meta, pictures
def _reviews(world: World, streams: Streams) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Every chosen (customer, product) pair as a review line, in time order; and each product's
    first review time. A customer reviews their products in a random order, days to months apart."""
    products, user_ids = world.products, world.customers.user_id
    reviews: list[dict[str, Any]] = []
    first_review_ms = np.full(len(products), np.iinfo(np.int64).max, dtype=np.int64)
    for u, chosen in enumerate(world.reviewed):
        perm = streams.time.permutation(len(chosen))
        t = BASE_MS + int(streams.time.integers(0, 730 * DAY_MS))
        for j in [chosen[p] for p in perm]:
            t += int(streams.time.exponential(28.0) * DAY_MS) + int(streams.time.integers(60_000, DAY_MS))
            r = draw_rating(streams.rating, world.latent[u, j])
            contrib = world.affinity.at(u, j)
            contrib["quality"] = float(products.quality[j])
            reviews.append(review_line(streams.text, r, products, j, contrib, user_ids[u], t))
            first_review_ms[j] = min(first_review_ms[j], t)
    reviews.sort(key=lambda rv: (rv["timestamp"], rv["user_id"], rv["parent_asin"]))
    return reviews, first_review_ms


def _meta_lines(
    world: World,
    reviews: list[dict[str, Any]],
    first_review_ms: np.ndarray,
    rng_time: np.random.Generator,
    image_format: str,
) -> list[dict[str, Any]]:
    """One meta line per product; a product is listed up to 4 months before its first review, a
    never-rated one ("new arrival") within the 20 days before the last review."""
    ratings_by_product: dict[str, list[float]] = {}
    for rv in reviews:
        ratings_by_product.setdefault(rv["parent_asin"], []).append(rv["rating"])
    last_ms = max(rv["timestamp"] for rv in reviews)
    products = world.products
    metas: list[dict[str, Any]] = []
    for j in range(len(products)):
        asin = products.parent_asin[j]
        if products.cold[j]:
            avail = last_ms - int(rng_time.integers(0, 20 * DAY_MS))
        else:
            avail = int(first_review_ms[j]) - int(rng_time.integers(DAY_MS, 120 * DAY_MS))
        image_rel = f"{IMAGES_DIR}/{asin}.{image_format}"
        metas.append(meta_line(products, j, ratings_by_product.get(asin, []), avail, image_rel))
    return metas


def _write_images(images_dir: Path, products: model.Products, opts: Options) -> None:
    """Every product's picture, `images/<parent_asin>.<format>`; pictures of another world are removed."""
    wanted = {f"{a}.{opts.image_format}" for a in products.parent_asin}
    for stale in [*images_dir.glob("*.png"), *images_dir.glob("*.jpg")]:
        if stale.name not in wanted:
            stale.unlink()
    save_kw = {"format": "PNG"} if opts.image_format == "png" else {"format": "JPEG", "quality": 90}
    pictures = Pictures(opts.seed, opts.image_size, opts.source, opts.variation, opts.fm_dir)
    for j in range(len(products)):
        img = pictures.picture(j, products.category[j], products.colour[j], products.pattern[j])
        img.save(images_dir / f"{products.parent_asin[j]}.{opts.image_format}", **save_kw)


# ----------------------------------------------------------------------------- truth
def _cold_truth(world: World, truth_max_pairs: int) -> tuple[str, int]:
    """truth/cold_ratings.jsonl: each customer's expected rating and latent score of every cold
    product, for the first customers that fit in `truth_max_pairs` pairs; and how many customers."""
    products, user_ids, latent = world.products, world.customers.user_id, world.latent
    n_customers = len(user_ids)
    cold_idx = np.flatnonzero(products.cold)
    truth_customers = (
        n_customers
        if len(cold_idx) * n_customers <= truth_max_pairs
        else max(1, int(truth_max_pairs) // max(len(cold_idx), 1))
    )
    if not len(cold_idx):
        return "", truth_customers
    expected = expected_rating(latent[:truth_customers][:, cold_idx])
    chunks = []
    for u in range(truth_customers):
        chunks.append(
            "".join(
                json.dumps(
                    {
                        "user_id": user_ids[u],
                        "parent_asin": products.parent_asin[j],
                        "rating": round(float(e), 4),
                        "latent": round(float(x), 4),
                    }
                )
                + "\n"
                for j, e, x in zip(cold_idx, expected[u], latent[u, cold_idx])
            )
        )
    return "".join(chunks), truth_customers


def _r6(a: Any) -> Any:
    return np.round(np.asarray(a, dtype=float), 6).tolist()


def _world_json(params: dict[str, Any], source: str, world: World) -> dict[str, Any]:
    """truth/world.json: the parameters, model constants, vocabulary and every latent value."""
    seg = world.customers.segment_taste
    return {
        "synthetic": True,
        "generator": GENERATOR,
        "parameters": params,
        "image_source": source,
        "constants": _constants(world.mu),
        "vocab": {
            "category": [g.key for g in GARMENTS],
            "colour": [c[0] for c in COLOURS],
            "pattern": list(PATTERNS),
            "style": list(STYLES),
            "store": list(STORES),
            "affinity_parts": list(model.Affinity.KEYS),
        },
        "store_quality": _r6(world.products.store_quality),
        "products": _product_rows(world.products),
        "segment_taste": {
            "t_cat": _r6(seg.category),
            "t_col": _r6(seg.colour),
            "t_pat": _r6(seg.pattern),
            "t_sty": _r6(seg.style),
        },
        "customers": _customer_rows(world.customers),
    }


def _constants(mu: float) -> dict[str, float]:
    names = (
        "TARGET_MEAN BIAS_SD QUALITY_SD STORE_SD NOISE_SD BAD_P BAD_SHIFT N_SEGMENTS SEGMENT_WEIGHT "
        "INDIVIDUAL_WEIGHT W_CAT W_COLOUR W_PATTERN W_STYLE ALPHA BETA POP_SD POP_QUALITY"
    )
    return {"MU": round(mu, 6), **{name: getattr(model, name) for name in names.split()}}


def _product_rows(products: model.Products) -> list[dict[str, Any]]:
    rows = []
    for j in range(len(products)):
        g = products.garment(j)
        rows.append(
            {
                "parent_asin": products.parent_asin[j],
                "category": g.key,
                "colour": COLOURS[products.colour[j]][0],
                "pattern": PATTERNS[products.pattern[j]],
                "style": STYLES[products.style[j]],
                "material": g.materials[products.material[j]],
                "store": STORES[products.store[j]],
                "quality": round(float(products.quality[j]), 6),
                "log_popularity": round(float(products.log_pop[j]), 6),
                "cold": bool(products.cold[j]),
            }
        )
    return rows


def _customer_rows(customers: model.Customers) -> list[dict[str, Any]]:
    t = customers.taste
    return [
        {
            "user_id": customers.user_id[u],
            "segment": int(customers.segment[u]),
            "bias": round(float(customers.bias[u]), 6),
            "taste_category": _r6(t.category[u]),
            "taste_colour": _r6(t.colour[u]),
            "taste_pattern": _r6(t.pattern[u]),
            "taste_style": _r6(t.style[u]),
        }
        for u in range(len(customers))
    ]


# ----------------------------------------------------------------------------- SYNTHETIC.md, summary
def _rating_stats(reviews: list[dict[str, Any]]) -> tuple[dict[str, int], float]:
    """The rating histogram ("1".."5" -> count) and the mean rating."""
    hist = {str(k): 0 for k in range(1, 6)}
    for rv in reviews:
        hist[str(int(rv["rating"]))] += 1
    return hist, round(float(np.mean([rv["rating"] for rv in reviews])), 4)


def _readme(
    params: dict[str, Any], source: str, n_cold: int, n_reviews: int, hist: dict[str, int], mean_rating: float
) -> str:
    """SYNTHETIC.md: that the folder is synthetic, how to make it again, what each file holds."""
    call = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v!r}" for k, v in params.items())
    return (
        "# SYNTHETIC DATA - not real customers, products or reviews\n\n"
        "Everything in this folder is synthetic. It was generated by `demo.generate_world` "
        f"(generator v{GENERATOR_VERSION}) with:\n\n"
        f"    generate_world(out_dir, {call})\n\n"
        "No real person, review, product, brand or price is represented. User ids, ASINs, store names, "
        "titles, review texts, ratings, timestamps and pictures come from a random generative model "
        "driven by the seed above; the same seed and parameters reproduce these files byte for byte.\n\n"
        "## Files\n\n"
        f"- `{REVIEWS_FILE}`: {n_reviews} reviews in the Amazon Reviews 2023 format "
        f"(rating histogram 1..5: {', '.join(hist[str(k)].__str__() for k in range(1, 6))}; "
        f"mean {mean_rating}).\n"
        f"- `{META_FILE}`: {params['n_products']} products in the Amazon Reviews 2023 meta format; "
        f'{n_cold} of them ("new arrivals") have no reviews at all.\n'
        f"- `{IMAGES_DIR}/<parent_asin>.{params.get('image_format', 'png')}`: one "
        f"{params['image_size']}x{params['image_size']} RGB picture per product: "
        f"{_pictures_note(source, params)}.\n"
        f"- `{TRUTH_DIR}/{COLD_RATINGS_FILE}`: for every customer and every never-rated product, the "
        "noise-free expected rating (`rating`, the expectation of the rounded, clipped rating) and the "
        "unrounded latent score (`latent`) - the ground truth for evaluating cold-start ranking.\n"
        f"- `{TRUTH_DIR}/{WORLD_FILE}`: the latent parameters (product attributes, quality, popularity; "
        "customer segments, tastes and biases; model constants).\n\n"
        "## Model\n\n"
        "Products have a garment type, colour and pattern (drawn in the picture and written in the text), "
        "a style (text only), a material and store (text only), a latent quality and popularity. "
        "Customers have tastes over garment types, colours, patterns and styles (a segment's taste plus "
        "their own) and a rating bias. rating = clip(round(MU + bias + quality + taste . attributes + "
        "noise), 1, 5). Customers review products chosen partly by taste and partly by popularity. "
        "See the docstrings of the `demo` package (`demo/world.py`).\n"
    )


def _pictures_note(source: str, params: dict[str, Any]) -> str:
    img = (
        "Fashion-MNIST pictures (Debian package dataset-fashion-mnist) of the matching garment class, "
        "upscaled and tinted with the product's colour and pattern"
        if source == "fashion-mnist"
        else "garments drawn with PIL in the product's colour and pattern"
    )
    jitter = (
        "; one picture per garment type, colour and pattern, each product showing its own variant "
        "of it (mirrored, shifted, lighter or darker)"
        if params.get("image_variation") == "jitter"
        else ""
    )
    return img + jitter


def _summary(
    out: Path, opts: Options, params: dict[str, Any], n_reviews: int, hist: dict[str, int], mean_rating: float
) -> dict[str, Any]:
    """What generate_world returns: counts, the rating histogram, where the files are."""
    return {
        "synthetic": True,
        "generator": GENERATOR,
        "out_dir": str(out.resolve()),
        **params,
        "n_warm_products": opts.n_products - opts.n_cold,
        "n_cold_products": opts.n_cold,
        "n_reviews": n_reviews,
        "rating_histogram": hist,
        "mean_rating": mean_rating,
        "image_source": opts.source,
        "image_source_path": str(opts.fm_dir) if opts.source == "fashion-mnist" else None,
        "paths": {
            "reviews": str((out / REVIEWS_FILE).resolve()),
            "meta": str((out / META_FILE).resolve()),
            "images": str((out / IMAGES_DIR).resolve()),
            "readme": str((out / README_FILE).resolve()),
            "cold_ratings": str((out / TRUTH_DIR / COLD_RATINGS_FILE).resolve()),
            "world": str((out / TRUTH_DIR / WORLD_FILE).resolve()),
        },
    }


# ----------------------------------------------------------------------------- copies, writing
def with_image_urls(
    world_dir: str | Path,
    out_dir: str | Path,
    base_url: str,
    url_for: Callable[[str, str], str] | None = None,
) -> Path:
    """A copy of the world in `world_dir` whose meta lines give each product's photo as an URL, as
    a real Amazon 2023 meta file does, and that has no `images/` folder (a local picture would win).

    The URL is `base_url/<file name>` (the file in `world_dir/images/`), or `url_for(parent_asin,
    file_name)` when given (a test points some products at failing URLs). Reviews, SYNTHETIC.md and
    truth/ are copied unchanged. Serve `world_dir/images/` at `base_url` to train on it."""
    src, out = Path(world_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in (REVIEWS_FILE, README_FILE):
        shutil.copyfile(src / name, out / name)
    if (src / TRUTH_DIR).is_dir():
        shutil.copytree(src / TRUTH_DIR, out / TRUTH_DIR, dirs_exist_ok=True)
    base = base_url.rstrip("/")
    lines = []
    for line in (src / META_FILE).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        meta = json.loads(line)
        for entry in meta.get("images") or []:
            for field in ("thumb", "large", "hi_res"):
                if entry.get(field):
                    name = Path(entry[field]).name
                    entry[field] = url_for(meta["parent_asin"], name) if url_for else f"{base}/{name}"
        lines.append(meta)
    _write_jsonl(out / META_FILE, lines)
    return out


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    _write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
