"""A SYNTHETIC "fashion world" in the Amazon Reviews 2023 (Amazon_Fashion) format.

Nothing written here is real: customers, products, reviews, prices and pictures all come from a
small generative model driven by one seed. The demo (`make run`) and the tests use it to show that a
hybrid model (image + text embeddings of the products, plus who rated what) beats popularity and
matrix factorisation -- in particular on products nobody has rated yet.

`generate_world(out_dir, ...)` writes, in `out_dir`:

- `Amazon_Fashion.jsonl`       the reviews (rating, title, text, images, asin, parent_asin, user_id,
                               timestamp in ms, helpful_vote, verified_purchase);
- `meta_Amazon_Fashion.jsonl`  one line per product (main_category, title, average_rating,
                               rating_number, features, description, price, images, videos, store,
                               categories, details, parent_asin, bought_together); the image is a
                               path relative to `out_dir`: `images/<parent_asin>.png` (or .jpg);
- `images/<parent_asin>.png`   an RGB picture of the product: a garment drawn with PIL (default) or,
                               when Debian's `dataset-fashion-mnist` is installed, a Fashion-MNIST
                               picture of the same garment class, upscaled and tinted;
- `SYNTHETIC.md`               a plain statement that the folder is synthetic, with seed and parameters;
- `truth/cold_ratings.jsonl`   for every customer and every never-rated ("cold") product the
                               noise-free expected rating (to evaluate cold-start ranking);
- `truth/world.json`           the latent parameters (product attributes, quality, popularity,
                               customer tastes and biases, model constants).

The generative model
--------------------
Products have visual attributes -- garment type (the 10 Fashion-MNIST classes), colour and pattern
(plain / striped / polka dot) -- that are both drawn in the picture and written in the title, features
and description; a style (classic, formal, sporty, boho, streetwear) that only the text states; a
material and a store (text only; stores carry a small quality offset); a latent quality and a latent
popularity (correlated with quality). A fraction `cold_fraction` of products ("new arrivals") is
never rated.

Customers belong to one of a few taste segments; a customer's taste is the segment's taste plus an
individual part, over garment types, colours, patterns and styles, plus a personal rating bias.

    x(u, i)      = MU + bias_u + quality_i + affinity(u, i)
    affinity     = W_CAT*t_cat[u, cat_i] + W_COLOUR*t_col[u, col_i] + W_PATTERN*t_pat[u, pat_i]
                   + W_STYLE*t_sty[u, sty_i]
    rating       = clip(round(x + e), 1, 5),   e ~ N(0, NOISE_SD), minus BAD_SHIFT with prob. BAD_P
                                               (a "bad experience": wrong size, a defect)

MU is calibrated (bisection) so that the expected mean of the observed ratings is TARGET_MEAN, whatever
the size and seed; the ratings then span 1..5 with a J-shaped histogram, as on Amazon.

Which products a customer reviews: a Plackett-Luce draw (Gumbel top-k) over the rated products with
logits ALPHA*(affinity + quality) + BETA*log_popularity -- partly taste, partly popularity, so a
popularity ranking is sensible but beatable. Every non-cold product gets at least one review.

Review titles and texts agree with the rating and comment on the attributes that drove it
("I love the red colour.", "The stripes look cheap.").

The truth file holds E[rating] under the noise, i.e. 1 + sum_k P(x + e >= k + 0.5), k=1..4, and x.

Same seed and parameters give byte-identical files; nothing depends on the wall clock.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import math
import os
import shutil
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

__all__ = [
    "generate_world",
    "with_image_urls",
    "find_fashion_mnist",
    "REVIEWS_FILE",
    "META_FILE",
    "IMAGES_DIR",
    "TRUTH_DIR",
    "COLD_RATINGS_FILE",
    "WORLD_FILE",
    "README_FILE",
    "FASHION_MNIST_DIRS",
]

GENERATOR_VERSION = "1"

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

# Where Debian's `dataset-fashion-mnist` puts the idx files (checked in order).
FASHION_MNIST_DIRS: tuple[Path, ...] = (
    Path("/usr/share/datasets/fashion-mnist"),
    Path("/usr/share/dataset-fashion-mnist"),
    Path("/usr/share/fashion-mnist"),
)
_FMNIST_IMAGES = "train-images-idx3-ubyte.gz"
_FMNIST_LABELS = "train-labels-idx1-ubyte.gz"

# ----------------------------------------------------------------------------- model constants
TARGET_MEAN = 3.85  # MU is calibrated so that the expected mean observed rating is this
BIAS_SD = 0.45  # customer bias
QUALITY_SD = 0.35  # product quality (individual part)
STORE_SD = 0.15  # store quality offset
NOISE_SD = 0.6  # rating noise
BAD_P = 0.07  # chance of a "bad experience" (wrong size, defect): the rating drops by BAD_SHIFT
BAD_SHIFT = 2.2
N_SEGMENTS = 6  # taste segments
SEGMENT_WEIGHT = 0.8  # taste = SEGMENT_WEIGHT * segment + INDIVIDUAL_WEIGHT * own
INDIVIDUAL_WEIGHT = 0.6
W_CAT, W_COLOUR, W_PATTERN, W_STYLE = 0.8, 0.8, 0.55, 0.7
ALPHA = 0.7  # selection: weight of taste (+ quality)
BETA = 0.85  # selection: weight of log popularity
POP_SD = 1.0  # log popularity (individual part)
POP_QUALITY = 1.0  # log popularity slope on quality

BASE_MS = 1577836800000  # 2020-01-01T00:00:00Z; all timestamps are offsets drawn from the seed
DAY_MS = 86_400_000


# ----------------------------------------------------------------------------- vocabularies
@dataclass(frozen=True)
class Garment:
    key: str
    noun: str  # singular, lower case
    plural: str
    fmnist_label: int  # Fashion-MNIST class id
    kind: str  # "clothes" | "shoes" | "bag"
    path: tuple[str, ...]  # Amazon category path
    materials: tuple[str, ...]
    price: tuple[float, float]
    departments: tuple[str, ...]
    extra_features: tuple[str, ...]


GARMENTS: tuple[Garment, ...] = (
    Garment(
        "tshirt",
        "t-shirt",
        "t-shirts",
        0,
        "clothes",
        ("Clothing, Shoes & Jewelry", "Clothing", "Tops & Tees", "T-Shirts"),
        ("cotton", "jersey", "bamboo"),
        (9.0, 32.0),
        ("Women", "Men", "Unisex"),
        ("Crew neck", "Short sleeves", "Relaxed fit"),
    ),
    Garment(
        "trousers",
        "trousers",
        "trousers",
        1,
        "clothes",
        ("Clothing, Shoes & Jewelry", "Clothing", "Pants", "Casual"),
        ("cotton twill", "linen", "wool blend", "denim"),
        (19.0, 65.0),
        ("Women", "Men"),
        ("Mid rise", "Zip fly with button closure", "Two side pockets"),
    ),
    Garment(
        "pullover",
        "sweater",
        "sweaters",
        2,
        "clothes",
        ("Clothing, Shoes & Jewelry", "Clothing", "Sweaters", "Pullovers"),
        ("wool", "cotton knit", "cashmere blend"),
        (24.0, 85.0),
        ("Women", "Men", "Unisex"),
        ("Ribbed cuffs and hem", "Long sleeves", "Crew neck"),
    ),
    Garment(
        "dress",
        "dress",
        "dresses",
        3,
        "clothes",
        ("Clothing, Shoes & Jewelry", "Clothing", "Dresses", "Casual"),
        ("cotton", "chiffon", "linen", "satin"),
        (22.0, 95.0),
        ("Women",),
        ("Sleeveless", "Fitted waist", "Midi length"),
    ),
    Garment(
        "coat",
        "coat",
        "coats",
        4,
        "clothes",
        ("Clothing, Shoes & Jewelry", "Clothing", "Coats, Jackets & Vests", "Wool & Blends"),
        ("wool", "tweed", "polyester", "down"),
        (55.0, 210.0),
        ("Women", "Men"),
        ("Button front", "Notched lapel", "Fully lined"),
    ),
    Garment(
        "sandal",
        "sandal",
        "sandals",
        5,
        "shoes",
        ("Clothing, Shoes & Jewelry", "Shoes", "Sandals"),
        ("leather", "faux leather", "rubber"),
        (14.0, 60.0),
        ("Women", "Men", "Unisex"),
        ("Open toe", "Adjustable ankle strap", "Cushioned footbed"),
    ),
    Garment(
        "shirt",
        "shirt",
        "shirts",
        6,
        "clothes",
        ("Clothing, Shoes & Jewelry", "Clothing", "Shirts", "Button-Down Shirts"),
        ("cotton", "linen", "oxford cotton", "silk"),
        (19.0, 70.0),
        ("Women", "Men"),
        ("Button-down collar", "Long sleeves", "Regular fit"),
    ),
    Garment(
        "sneaker",
        "sneaker",
        "sneakers",
        7,
        "shoes",
        ("Clothing, Shoes & Jewelry", "Shoes", "Fashion Sneakers"),
        ("canvas", "mesh", "leather"),
        (29.0, 125.0),
        ("Women", "Men", "Unisex"),
        ("Lace-up closure", "Rubber sole", "Padded collar"),
    ),
    Garment(
        "bag",
        "bag",
        "bags",
        8,
        "bag",
        ("Clothing, Shoes & Jewelry", "Handbags & Wallets", "Shoulder Bags"),
        ("leather", "canvas", "faux leather"),
        (19.0, 160.0),
        ("Women", "Unisex"),
        ("Zip top closure", "Inner pocket", "Top handle"),
    ),
    Garment(
        "boot",
        "ankle boot",
        "ankle boots",
        9,
        "shoes",
        ("Clothing, Shoes & Jewelry", "Shoes", "Boots", "Ankle & Bootie"),
        ("leather", "suede", "faux suede"),
        (39.0, 170.0),
        ("Women", "Men"),
        ("Side zip", "Block heel", "Rubber outsole"),
    ),
)

# name -> RGB (as shown in the picture)
COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (28, 28, 32)),
    ("white", (250, 250, 248)),
    ("navy", (28, 42, 96)),
    ("blue", (45, 110, 205)),
    ("red", (200, 32, 42)),
    ("green", (40, 135, 65)),
    ("yellow", (242, 200, 40)),
    ("pink", (240, 140, 175)),
    ("grey", (128, 128, 134)),
    ("brown", (122, 78, 44)),
)
PATTERNS: tuple[str, ...] = ("plain", "striped", "polka dot")
STYLES: tuple[str, ...] = ("classic", "formal", "sporty", "boho", "streetwear")

_STYLE_TITLE = {
    "classic": ("Classic", "Timeless"),
    "formal": ("Elegant", "Formal"),
    "sporty": ("Sporty", "Athletic"),
    "boho": ("Boho", "Bohemian"),
    "streetwear": ("Streetwear", "Urban"),
}
_STYLE_OCCASION = {
    "classic": "Everyday Wear",
    "formal": "Office & Evening",
    "sporty": "Gym, Running & Weekend",
    "boho": "Festival & Beach",
    "streetwear": "City & Skate",
}
_STYLE_PHRASE = {
    "classic": "a timeless, classic look that never goes out of fashion",
    "formal": "an elegant, formal finish for the office or an evening out",
    "sporty": "a sporty, athletic feel for active days",
    "boho": "a relaxed boho vibe for festivals and beach days",
    "streetwear": "an urban streetwear attitude for the city",
}
_PATTERN_TITLE = {"plain": "", "striped": "Striped", "polka dot": "Polka Dot"}
_PATTERN_FEATURE = {"plain": "Solid colour", "striped": "Striped", "polka dot": "Polka dot print"}
_DEPT_TITLE = {"Women": "Women's", "Men": "Men's", "Unisex": "Unisex"}
_CARE = {
    "clothes": ("Machine wash cold", "Hand wash only", "Dry clean recommended"),
    "shoes": ("Wipe clean with a damp cloth", "Spot clean only"),
    "bag": ("Wipe clean", "Spot clean only"),
}

STORES: tuple[str, ...] = (
    "Northwind Apparel",
    "Maple & Thread",
    "Urban Loom",
    "Coastline Co.",
    "Velvet Fox",
    "Stride Lab",
    "Bluebell Studio",
    "Ironpine Outfitters",
    "Lumen Wear",
    "Odd Sock Supply",
    "Harbor & Hem",
    "Kestrel Goods",
)

# --- review wording -------------------------------------------------------------------------
_REVIEW_TITLES = {
    5: (
        "Love it!",
        "Absolutely perfect",
        "Five stars",
        "Great {noun}",
        "Beautiful {colour} {noun}",
        "Exactly what I wanted",
        "Perfect {noun}",
    ),
    4: (
        "Really nice",
        "Very pretty",
        "Good quality",
        "Nice {noun}",
        "Happy with it",
        "Good buy",
        "Pretty {colour} {noun}",
    ),
    3: ("It's okay", "Decent but not perfect", "Mixed feelings", "Average {noun}", "So-so", "Just okay"),
    2: ("Disappointed", "Not what I expected", "Meh {noun}", "Not impressed", "Would not buy again"),
    1: ("Terrible", "Waste of money", "Very disappointed", "Returned it", "Awful {noun}", "Do not buy"),
}
_OPENERS = {
    5: (
        "Absolutely love this {noun}!",
        "This {noun} is perfect.",
        "Best purchase I have made in a while.",
        "I am so happy with this {noun}.",
    ),
    4: (
        "Really nice {noun}.",
        "I like this {noun} a lot.",
        "Good {noun} for the price.",
        "Pretty happy with this one.",
    ),
    3: (
        "This {noun} is okay.",
        "It's an average {noun}.",
        "Not bad, but nothing special.",
        "Mixed feelings about this {noun}.",
    ),
    2: (
        "Disappointed with this {noun}.",
        "Not what I expected.",
        "I wanted to like this {noun} but it fell short.",
    ),
    1: (
        "Terrible {noun}, do not buy.",
        "Very disappointed.",
        "Complete waste of money.",
        "Worst {noun} I have ordered.",
    ),
}
_CLOSERS = {
    5: ("Highly recommend!", "Would buy again in every colour.", "Love love love.", ""),
    4: ("Would recommend.", "Good value.", "Happy overall.", ""),
    3: ("It will do.", "Might return it.", "It's fine for the price.", ""),
    2: ("Probably returning it.", "Would not buy again.", ""),
    1: ("Returned it immediately.", "Avoid.", "Save your money.", ""),
}
# attribute -> (positive comments, negative comments)
_COMMENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "colour": (
        (
            "I love the {colour} colour.",
            "The {colour} is gorgeous, exactly like the picture.",
            "The shade of {colour} is beautiful.",
        ),
        (
            "The {colour} looks dull and washed out in person.",
            "I really don't like this shade of {colour}.",
            "The {colour} colour is unflattering.",
        ),
    ),
    "pattern:plain": (
        ("Love the clean, solid look.", "Simple solid colour that goes with everything."),
        ("Too plain and boring.", "The solid colour looks boring and cheap."),
    ),
    "pattern:striped": (
        ("The stripes look sharp.", "Love the stripes!"),
        ("The stripes look cheap.", "The stripes are crooked and look cheap."),
    ),
    "pattern:polka dot": (
        ("The polka dots are so cute.", "Love the polka dot print."),
        ("The polka dots look tacky.", "The dot print looks cheap up close."),
    ),
    "style": (
        ("Perfect for a {style} look.", "It has exactly the {style} vibe I wanted."),
        ("Not as {style} as the pictures suggest.", "Too {style} for my taste."),
    ),
    "category:clothes": (
        (
            "Fits true to size and the cut is great.",
            "I wear {plural} like this all the time and this one is a favourite.",
        ),
        ("Runs small and the cut is unflattering.", "Not really my kind of {noun}, the fit is off."),
    ),
    "category:shoes": (
        ("Very comfortable and true to size.", "Comfortable right out of the box."),
        ("Uncomfortable, they hurt my feet.", "Runs small and gave me blisters."),
    ),
    "category:bag": (
        ("Roomy with plenty of pockets.", "Holds everything I need and looks great."),
        ("Too small to fit anything.", "The strap is flimsy."),
    ),
    "quality": (
        ("Well made with sturdy stitching.", "The {material} feels soft and high quality."),
        ("Poor stitching, it came apart quickly.", "The {material} feels thin and cheap."),
    ),
}

_ALNUM = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))


# ----------------------------------------------------------------------------- public API
def find_fashion_mnist(dirs: Sequence[Path | str] | None = None) -> Path | None:
    """The folder holding Fashion-MNIST's train idx files, or None when it is not installed."""
    for d in dirs if dirs is not None else FASHION_MNIST_DIRS:
        d = Path(d)
        if (d / _FMNIST_IMAGES).is_file() and (d / _FMNIST_LABELS).is_file():
            return d
    return None


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
    n_cold = min(int(round(float(cold_fraction) * n_products)), n_products - 1)
    n_warm = n_products - n_cold

    if image_source not in ("auto", "rendered", "fashion-mnist"):
        raise ValueError("image_source must be 'auto', 'rendered' or 'fashion-mnist'")
    fm_dir: Path | None = None
    if image_source != "rendered":
        fm_dir = find_fashion_mnist([fashion_mnist_dir] if fashion_mnist_dir else None)
        if fm_dir is None and image_source == "fashion-mnist":
            raise FileNotFoundError(
                "Fashion-MNIST not found (install Debian's dataset-fashion-mnist or pass fashion_mnist_dir)"
            )
    source = "fashion-mnist" if fm_dir is not None else "rendered"
    if image_format not in ("png", "jpg"):
        raise ValueError("image_format must be 'png' or 'jpg'")
    if image_variation not in ("auto", "per-product", "jitter"):
        raise ValueError("image_variation must be 'auto', 'per-product' or 'jitter'")
    variation = (
        image_variation
        if image_variation != "auto"
        else ("jitter" if n_products > VARY_ABOVE else "per-product")
    )

    out = Path(out_dir)
    images_dir = out / IMAGES_DIR
    truth_dir = out / TRUTH_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)

    # Independent streams, so e.g. the image source never changes the ratings; each picture has
    # its own stream too (seeded by seed and product index).
    ss = np.random.SeedSequence([seed, 20240601])
    rng_prod, rng_cust, rng_sel, rng_rate, rng_text, rng_time = (
        np.random.default_rng(s) for s in ss.spawn(6)
    )

    products = _make_products(rng_prod, n_products, n_cold)
    customers = _make_customers(rng_cust, n_customers)

    # --- latent scores -------------------------------------------------------------------------
    cat = products["cat"]
    col = products["col"]
    pat = products["pat"]
    sty = products["sty"]
    parts = {
        "category": W_CAT * customers["t_cat"][:, cat],
        "colour": W_COLOUR * customers["t_col"][:, col],
        "pattern": W_PATTERN * customers["t_pat"][:, pat],
        "style": W_STYLE * customers["t_sty"][:, sty],
    }
    affinity = parts["category"] + parts["colour"] + parts["pattern"] + parts["style"]  # (U, P)
    latent0 = customers["bias"][:, None] + products["quality"][None, :] + affinity  # latent - MU

    # --- who reviews what ----------------------------------------------------------------------
    warm_idx = np.flatnonzero(~products["cold"])
    logits = (
        ALPHA * (affinity[:, warm_idx] + products["quality"][None, warm_idx])
        + BETA * products["log_pop"][None, warm_idx]
    )
    k_per_user = rng_sel.integers(min(lo, n_warm), min(hi, n_warm) + 1, size=n_customers)
    # (U, P) matrices are large for catalog-size worlds: built in place, freed as soon as they are used
    perturbed = rng_sel.gumbel(size=logits.shape)
    perturbed += logits
    del logits, affinity
    order = np.argsort(-perturbed, axis=1, kind="stable")
    chosen: list[list[int]] = [list(warm_idx[order[u, : k_per_user[u]]]) for u in range(n_customers)]
    del order
    # Every warm product gets at least one review: give it to the customer most likely to pick it
    # among those still under `hi` reviews (anyone, if nobody is).
    counts = np.zeros(n_products, dtype=np.int64)
    for items in chosen:
        counts[items] += 1
    for j_pos, j in enumerate(warm_idx):
        if counts[j] == 0:
            ranked = np.argsort(-perturbed[:, j_pos], kind="stable")
            room = [int(u) for u in ranked if len(chosen[u]) < hi]
            u = room[0] if room else int(ranked[0])
            chosen[u].append(int(j))
            counts[j] += 1

    # --- the offset MU: calibrated on the reviewed pairs, so every world has a similar mean ------
    pair_u = np.concatenate([np.full(len(items), u) for u, items in enumerate(chosen)])
    pair_j = np.concatenate([np.asarray(items, dtype=np.int64) for items in chosen])
    del perturbed
    mu = _calibrate_mu(latent0[pair_u, pair_j], TARGET_MEAN)
    latent = latent0
    latent += mu
    del latent0

    # --- ratings, times, texts -----------------------------------------------------------------
    user_ids = customers["user_id"]
    asins = products["parent_asin"]
    reviews: list[dict[str, Any]] = []
    first_review_ms = np.full(n_products, np.iinfo(np.int64).max, dtype=np.int64)
    for u in range(n_customers):
        items = chosen[u]
        perm = rng_time.permutation(len(items))
        items = [items[p] for p in perm]
        t = BASE_MS + int(rng_time.integers(0, 730 * DAY_MS))
        for j in items:
            t += int(rng_time.exponential(28.0) * DAY_MS) + int(rng_time.integers(60_000, DAY_MS))
            x = latent[u, j]
            noise = rng_rate.normal(0.0, NOISE_SD) - (BAD_SHIFT if rng_rate.random() < BAD_P else 0.0)
            r = int(np.clip(np.rint(x + noise), 1, 5))
            contrib = {k: float(v[u, j]) for k, v in parts.items()}
            contrib["quality"] = float(products["quality"][j])
            title, text = _review_text(rng_text, r, products, j, contrib)
            helpful = int(rng_text.geometric(0.55) - 1)
            if r in (1, 5) and rng_text.random() < 0.3:
                helpful += int(rng_text.integers(1, 6))
            reviews.append(
                {
                    "rating": float(r),
                    "title": title,
                    "text": text,
                    "images": [],
                    "asin": asins[j],
                    "parent_asin": asins[j],
                    "user_id": user_ids[u],
                    "timestamp": t,
                    "helpful_vote": helpful,
                    "verified_purchase": bool(rng_text.random() < 0.9),
                }
            )
            first_review_ms[j] = min(first_review_ms[j], t)
    reviews.sort(key=lambda rv: (rv["timestamp"], rv["user_id"], rv["parent_asin"]))

    ratings_by_product: dict[str, list[float]] = {}
    for rv in reviews:
        ratings_by_product.setdefault(rv["parent_asin"], []).append(rv["rating"])
    last_ms = max(rv["timestamp"] for rv in reviews)

    # --- meta ----------------------------------------------------------------------------------
    metas: list[dict[str, Any]] = []
    for j in range(n_products):
        rs = ratings_by_product.get(asins[j], [])
        if products["cold"][j]:  # new arrivals: listed after (almost) all the reviews
            avail = last_ms - int(rng_time.integers(0, 20 * DAY_MS))
        else:
            avail = int(first_review_ms[j]) - int(rng_time.integers(DAY_MS, 120 * DAY_MS))
        metas.append(_meta_line(products, j, rs, avail, image_format))

    # --- images --------------------------------------------------------------------------------
    wanted = {f"{a}.{image_format}" for a in asins}
    for stale in [*images_dir.glob("*.png"), *images_dir.glob("*.jpg")]:
        if stale.name not in wanted:
            stale.unlink()
    save_kw = {"format": "PNG"} if image_format == "png" else {"format": "JPEG", "quality": 90}
    bases: dict[tuple[int, int, int], np.ndarray] = {}
    if source == "fashion-mnist":
        assert fm_dir is not None
        fm_images, fm_labels = _load_fashion_mnist(fm_dir)
        by_label = {lab: np.flatnonzero(fm_labels == lab) for lab in range(10)}
    for j in range(n_products):
        g = GARMENTS[cat[j]]
        rgb = COLOURS[col[j]][1]
        pattern = PATTERNS[pat[j]]
        key = (int(cat[j]), int(col[j]), int(pat[j]))
        if variation == "jitter" and key in bases:
            img = _jitter(bases[key], np.random.default_rng([seed, 8, j]))
        else:
            # per product (or per garment/colour/pattern for "jitter"): stable whatever the source
            img_rng = np.random.default_rng([seed, 7, j])
            if source == "fashion-mnist":
                pick = by_label[g.fmnist_label]
                pic = fm_images[int(pick[img_rng.integers(len(pick))])]
                img = _tint_fashion_mnist(pic, rgb, pattern, image_size, img_rng)
            else:
                img = _render_garment(g.key, rgb, pattern, image_size, img_rng)
            if variation == "jitter":
                bases[key] = np.asarray(img.convert("RGB"))
        img.save(images_dir / f"{asins[j]}.{image_format}", **save_kw)

    # --- truth ---------------------------------------------------------------------------------
    cold_idx = np.flatnonzero(products["cold"])
    truth_customers = (
        n_customers
        if len(cold_idx) * n_customers <= truth_max_pairs
        else max(1, int(truth_max_pairs) // max(len(cold_idx), 1))
    )
    expected = _expected_rating(latent[:truth_customers][:, cold_idx]) if len(cold_idx) else None
    truth_chunks = []
    for u in range(truth_customers if len(cold_idx) else 0):
        truth_chunks.append(
            "".join(
                json.dumps(
                    {
                        "user_id": user_ids[u],
                        "parent_asin": asins[j],
                        "rating": round(float(e), 4),
                        "latent": round(float(x), 4),
                    }
                )
                + "\n"
                for j, e, x in zip(cold_idx, expected[u], latent[u, cold_idx])
            )
        )

    hist = {str(k): 0 for k in range(1, 6)}
    for rv in reviews:
        hist[str(int(rv["rating"]))] += 1
    mean_rating = round(float(np.mean([rv["rating"] for rv in reviews])), 4)
    params = {
        "n_customers": n_customers,
        "n_products": n_products,
        "seed": seed,
        "cold_fraction": float(cold_fraction),
        "reviews_per_customer": [lo, hi],
        "image_size": image_size,
    }
    # parameters beyond the original ones are recorded only when they change the files
    if image_format != "png":
        params["image_format"] = image_format
    if variation != "per-product":
        params["image_variation"] = variation
    if truth_customers < n_customers:
        params["truth_customers"] = truth_customers
    world = _world_json(params, source, products, customers, parts_keys=list(parts), mu=mu)

    _write_jsonl(out / REVIEWS_FILE, reviews)
    _write_jsonl(out / META_FILE, metas)
    _write_text(truth_dir / COLD_RATINGS_FILE, "".join(truth_chunks))
    _write_text(truth_dir / WORLD_FILE, json.dumps(world, indent=1, sort_keys=True) + "\n")
    _write_text(out / README_FILE, _readme(params, source, n_cold, len(reviews), hist, mean_rating))

    return {
        "synthetic": True,
        "generator": f"ml.synthetic v{GENERATOR_VERSION}",
        "out_dir": str(out.resolve()),
        **params,
        "n_warm_products": int(n_warm),
        "n_cold_products": int(n_cold),
        "n_reviews": len(reviews),
        "rating_histogram": hist,
        "mean_rating": mean_rating,
        "image_source": source,
        "image_source_path": str(fm_dir) if source == "fashion-mnist" else None,
        "paths": {
            "reviews": str((out / REVIEWS_FILE).resolve()),
            "meta": str((out / META_FILE).resolve()),
            "images": str(images_dir.resolve()),
            "readme": str((out / README_FILE).resolve()),
            "cold_ratings": str((truth_dir / COLD_RATINGS_FILE).resolve()),
            "world": str((truth_dir / WORLD_FILE).resolve()),
        },
    }


# ----------------------------------------------------------------------------- world pieces
def _codes(rng: np.random.Generator, n: int, length: int, prefix: str) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        draw = _ALNUM[rng.integers(0, len(_ALNUM), size=(n, length))]
        for row in draw:
            code = prefix + "".join(row)
            if code not in seen:
                seen.add(code)
                out.append(code)
                if len(out) == n:
                    break
    return out


def _make_products(rng: np.random.Generator, n: int, n_cold: int) -> dict[str, Any]:
    cat = rng.integers(0, len(GARMENTS), size=n)
    col = rng.integers(0, len(COLOURS), size=n)
    pat = rng.choice(len(PATTERNS), size=n, p=[0.5, 0.25, 0.25])
    sty = rng.integers(0, len(STYLES), size=n)
    store_q = rng.normal(0.0, STORE_SD, size=len(STORES))
    store = rng.integers(0, len(STORES), size=n)
    quality = store_q[store] + rng.normal(0.0, QUALITY_SD, size=n)
    log_pop = POP_QUALITY * quality + rng.normal(0.0, POP_SD, size=n)
    material = np.array([rng.integers(len(GARMENTS[c].materials)) for c in cat])
    dept = np.array([rng.integers(len(GARMENTS[c].departments)) for c in cat])
    cold = np.zeros(n, dtype=bool)
    cold[rng.choice(n, size=n_cold, replace=False)] = True
    u = rng.random(n)
    lo_p = np.log([GARMENTS[c].price[0] for c in cat])
    hi_p = np.log([GARMENTS[c].price[1] for c in cat])
    price = np.exp(lo_p + u * (hi_p - lo_p) + 0.25 * quality)
    price = np.floor(price) + 0.99
    text_rng = rng.random((n, 4))  # title/feature/description variety
    return {
        "parent_asin": _codes(rng, n, 8, "B0"),
        "cat": cat,
        "col": col,
        "pat": pat,
        "sty": sty,
        "store": store,
        "store_quality": store_q,
        "quality": quality,
        "log_pop": log_pop,
        "material": material,
        "dept": dept,
        "cold": cold,
        "price": price,
        "text_rng": text_rng,
    }


def _make_customers(rng: np.random.Generator, n: int) -> dict[str, Any]:
    dims = {"t_cat": len(GARMENTS), "t_col": len(COLOURS), "t_pat": len(PATTERNS), "t_sty": len(STYLES)}
    seg_taste = {k: rng.normal(0.0, 1.0, size=(N_SEGMENTS, d)) for k, d in dims.items()}
    segment = rng.integers(0, N_SEGMENTS, size=n)
    out: dict[str, Any] = {"segment": segment, "segment_taste": seg_taste}
    for k, d in dims.items():
        own = rng.normal(0.0, 1.0, size=(n, d))
        out[k] = SEGMENT_WEIGHT * seg_taste[k][segment] + INDIVIDUAL_WEIGHT * own
    out["bias"] = rng.normal(0.0, BIAS_SD, size=n)
    out["user_id"] = _codes(rng, n, 27, "A")
    return out


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def _attr_words(products: dict[str, Any], j: int) -> dict[str, str]:
    g = GARMENTS[products["cat"][j]]
    return {
        "noun": g.noun,
        "plural": g.plural,
        "colour": COLOURS[products["col"][j]][0],
        "pattern": PATTERNS[products["pat"][j]],
        "style": STYLES[products["sty"][j]],
        "material": g.materials[products["material"][j]],
    }


def _review_text(
    rng: np.random.Generator, r: int, products: dict[str, Any], j: int, contrib: dict[str, float]
) -> tuple[str, str]:
    w = _attr_words(products, j)
    kind = GARMENTS[products["cat"][j]].kind

    def comment(attr: str, positive: bool) -> str:
        key = {"pattern": f"pattern:{w['pattern']}", "category": f"category:{kind}"}.get(attr, attr)
        pos, neg = _COMMENTS[key]
        return _pick(rng, pos if positive else neg).format(**w)

    ranked = sorted(contrib, key=lambda k: (contrib[k], k))  # ascending
    n_comments = int(rng.integers(1, 3))
    if r >= 4:
        comments = [comment(a, True) for a in ranked[::-1][:n_comments]]
    elif r <= 2:
        comments = [comment(a, False) for a in ranked[:n_comments]]
    else:
        comments = [comment(ranked[-1], True), comment(ranked[0], False)]
        if rng.random() < 0.5:
            comments.reverse()
    title = _pick(rng, _REVIEW_TITLES[r]).format(**w)
    title = title[0].upper() + title[1:]
    sentences = [_pick(rng, _OPENERS[r]).format(**w), *comments, _pick(rng, _CLOSERS[r])]
    text = " ".join(s for s in sentences if s)
    return title, text


def _meta_line(
    products: dict[str, Any], j: int, ratings: list[float], avail_ms: int, image_format: str = "png"
) -> dict[str, Any]:
    g = GARMENTS[products["cat"][j]]
    w = _attr_words(products, j)
    tr = products["text_rng"][j]
    style = w["style"]
    dept = g.departments[products["dept"][j]]
    colour_t = w["colour"].title()
    material_t = w["material"].title()
    noun_t = " ".join(p[:1].upper() + p[1:] for p in g.noun.split(" "))
    words = [_DEPT_TITLE[dept]]
    if tr[0] < 0.65:
        words.append(_STYLE_TITLE[style][int(tr[1] * 2)])
    words += [colour_t, _PATTERN_TITLE[w["pattern"]], material_t, noun_t]
    title = " ".join(x for x in words if x)
    if tr[2] < 0.5:
        title += f" for {_STYLE_OCCASION[style]}"
    store = STORES[products["store"][j]]
    pattern_feature = _PATTERN_FEATURE[w["pattern"]]
    features = [
        f"{'100% ' if tr[3] < 0.5 else ''}{material_t}",
        f"Colour: {colour_t}",
        f"Pattern: {pattern_feature}",
        f"Style: {style}",
        *g.extra_features[: 1 + int(tr[1] * len(g.extra_features))],
        _CARE[g.kind][int(tr[2] * len(_CARE[g.kind]))],
    ]
    pattern_words = {"plain": "solid", "striped": "striped", "polka dot": "polka dot"}[w["pattern"]]
    description = [
        f"This {w['colour']} {pattern_words} {g.noun} from {store} brings {_STYLE_PHRASE[style]}.",
        f"Made from {w['material']}. {g.extra_features[0]}.",
    ]
    avail = _dt.datetime.fromtimestamp(avail_ms / 1000, tz=_dt.UTC)
    details = {
        "Department": dept.lower() if dept != "Unisex" else "unisex-adult",
        "Material": material_t,
        "Date First Available": f"{avail:%B} {avail.day}, {avail.year}",
    }
    image_rel = f"{IMAGES_DIR}/{products['parent_asin'][j]}.{image_format}"
    return {
        "main_category": "AMAZON FASHION",
        "title": title,
        "average_rating": round(float(np.mean(ratings)), 1) if ratings else None,
        "rating_number": len(ratings),
        "features": features,
        "description": description,
        "price": float(round(products["price"][j], 2)),
        "images": [{"thumb": image_rel, "large": image_rel, "variant": "MAIN", "hi_res": None}],
        "videos": [],
        "store": store,
        "categories": list(g.path),
        "details": details,
        "parent_asin": products["parent_asin"][j],
        "bought_together": None,
    }


def _erf(x: np.ndarray) -> np.ndarray:
    """Vectorised erf (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7)."""
    x = np.asarray(x, dtype=float)
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _calibrate_mu(latent0: np.ndarray, target: float) -> float:
    """The offset mu with mean(E[rating | mu + latent0]) == target (bisection; E is increasing)."""
    lo, hi = -5.0, 10.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(np.mean(_expected_rating(mid + latent0))) < target:
            lo = mid
        else:
            hi = mid
    return round(0.5 * (lo + hi), 6)


def _expected_rating(latent: np.ndarray) -> np.ndarray:
    """E[clip(round(x + e), 1, 5)] = 1 + sum_k P(x + e >= k + 0.5), k = 1..4, where the noise e is
    N(0, NOISE_SD), shifted down by BAD_SHIFT with probability BAD_P."""
    erf = _erf

    def exp_normal(x: np.ndarray) -> np.ndarray:
        out = np.ones_like(x, dtype=float)
        for k in range(1, 5):
            out += 0.5 * (1.0 + erf((x - (k + 0.5)) / (NOISE_SD * math.sqrt(2.0))))
        return out

    return (1.0 - BAD_P) * exp_normal(latent) + BAD_P * exp_normal(latent - BAD_SHIFT)


def _world_json(
    params: dict[str, Any],
    source: str,
    products: dict[str, Any],
    customers: dict[str, Any],
    parts_keys: list[str],
    mu: float,
) -> dict[str, Any]:
    def r6(a: Any) -> Any:
        return np.round(np.asarray(a, dtype=float), 6).tolist()

    return {
        "synthetic": True,
        "generator": f"ml.synthetic v{GENERATOR_VERSION}",
        "parameters": params,
        "image_source": source,
        "constants": {
            "MU": round(mu, 6),
            "TARGET_MEAN": TARGET_MEAN,
            "BIAS_SD": BIAS_SD,
            "QUALITY_SD": QUALITY_SD,
            "STORE_SD": STORE_SD,
            "NOISE_SD": NOISE_SD,
            "BAD_P": BAD_P,
            "BAD_SHIFT": BAD_SHIFT,
            "N_SEGMENTS": N_SEGMENTS,
            "SEGMENT_WEIGHT": SEGMENT_WEIGHT,
            "INDIVIDUAL_WEIGHT": INDIVIDUAL_WEIGHT,
            "W_CAT": W_CAT,
            "W_COLOUR": W_COLOUR,
            "W_PATTERN": W_PATTERN,
            "W_STYLE": W_STYLE,
            "ALPHA": ALPHA,
            "BETA": BETA,
            "POP_SD": POP_SD,
            "POP_QUALITY": POP_QUALITY,
        },
        "vocab": {
            "category": [g.key for g in GARMENTS],
            "colour": [c[0] for c in COLOURS],
            "pattern": list(PATTERNS),
            "style": list(STYLES),
            "store": list(STORES),
            "affinity_parts": parts_keys,
        },
        "store_quality": r6(products["store_quality"]),
        "products": [
            {
                "parent_asin": products["parent_asin"][j],
                "category": GARMENTS[products["cat"][j]].key,
                "colour": COLOURS[products["col"][j]][0],
                "pattern": PATTERNS[products["pat"][j]],
                "style": STYLES[products["sty"][j]],
                "material": GARMENTS[products["cat"][j]].materials[products["material"][j]],
                "store": STORES[products["store"][j]],
                "quality": round(float(products["quality"][j]), 6),
                "log_popularity": round(float(products["log_pop"][j]), 6),
                "cold": bool(products["cold"][j]),
            }
            for j in range(len(products["parent_asin"]))
        ],
        "segment_taste": {k: r6(v) for k, v in customers["segment_taste"].items()},
        "customers": [
            {
                "user_id": customers["user_id"][u],
                "segment": int(customers["segment"][u]),
                "bias": round(float(customers["bias"][u]), 6),
                "taste_category": r6(customers["t_cat"][u]),
                "taste_colour": r6(customers["t_col"][u]),
                "taste_pattern": r6(customers["t_pat"][u]),
                "taste_style": r6(customers["t_sty"][u]),
            }
            for u in range(len(customers["user_id"]))
        ],
    }


def _readme(
    params: dict[str, Any], source: str, n_cold: int, n_reviews: int, hist: dict[str, int], mean_rating: float
) -> str:
    call = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v!r}" for k, v in params.items())
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
    return (
        "# SYNTHETIC DATA - not real customers, products or reviews\n\n"
        "Everything in this folder is synthetic. It was generated by `ml.synthetic.generate_world` "
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
        f"{params['image_size']}x{params['image_size']} RGB picture per product: {img}"
        f"{jitter}.\n"
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
        "See the module docstring of `ml/synthetic.py`.\n"
    )


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


def _jitter(base: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A cheap variant of a picture (about 1 ms): mirrored or not, shifted by up to 1/28 of its size
    (edges repeated), lightened or darkened by up to 8%."""
    a = base[:, ::-1] if rng.random() < 0.5 else base
    h, w = a.shape[:2]
    m = max(1, w // 28)
    dy, dx = (int(v) for v in rng.integers(-m, m + 1, size=2))
    a = np.pad(a, ((m, m), (m, m), (0, 0)), mode="edge")[m + dy : m + dy + h, m + dx : m + dx + w]
    gain = 1.0 + float(rng.uniform(-0.08, 0.08))
    return Image.fromarray(np.clip(a.astype(np.float32) * gain, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- writing
def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    _write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


# ----------------------------------------------------------------------------- pictures
_BACKGROUNDS = ((246, 245, 241), (242, 244, 247), (247, 243, 238), (240, 242, 238))
# Garment outlines on a 100x100 grid: "body" is coloured and patterned, "trim" is a fixed colour
# (soles, handles), "lines" are drawn in the outline colour.
_Shape = dict[str, list]


def _shapes(key: str) -> _Shape:
    if key == "tshirt":
        return {
            "body": [
                (
                    "poly",
                    [
                        (36, 18),
                        (44, 15),
                        (50, 21),
                        (56, 15),
                        (64, 18),
                        (86, 32),
                        (78, 45),
                        (68, 39),
                        (68, 86),
                        (32, 86),
                        (32, 39),
                        (22, 45),
                        (14, 32),
                    ],
                )
            ],
            "lines": [("arc", (44, 8, 56, 22), 0, 180)],
        }
    if key == "trousers":
        return {
            "body": [("poly", [(31, 12), (69, 12), (73, 89), (56, 89), (50, 36), (44, 89), (27, 89)])],
            "lines": [("line", [(31, 19), (69, 19)]), ("line", [(50, 19), (50, 34)])],
        }
    if key == "pullover":
        return {
            "body": [
                (
                    "poly",
                    [
                        (36, 15),
                        (44, 13),
                        (50, 18),
                        (56, 13),
                        (64, 15),
                        (80, 24),
                        (89, 80),
                        (79, 83),
                        (70, 42),
                        (70, 87),
                        (30, 87),
                        (30, 42),
                        (21, 83),
                        (11, 80),
                        (20, 24),
                    ],
                )
            ],
            "lines": [
                ("line", [(30, 81), (70, 81)]),
                ("line", [(11, 75), (21, 78)]),
                ("line", [(79, 78), (89, 75)]),
                ("arc", (44, 7, 56, 20), 0, 180),
            ],
        }
    if key == "dress":
        return {
            "body": [
                (
                    "poly",
                    [
                        (41, 12),
                        (45, 12),
                        (47, 18),
                        (53, 18),
                        (55, 12),
                        (59, 12),
                        (61, 24),
                        (56, 36),
                        (78, 89),
                        (22, 89),
                        (44, 36),
                        (39, 24),
                    ],
                )
            ],
            "lines": [("line", [(44, 36), (56, 36)])],
        }
    if key == "coat":
        return {
            "body": [
                (
                    "poly",
                    [
                        (37, 11),
                        (50, 17),
                        (63, 11),
                        (79, 19),
                        (88, 79),
                        (78, 82),
                        (71, 40),
                        (73, 93),
                        (27, 93),
                        (29, 40),
                        (22, 82),
                        (12, 79),
                        (21, 19),
                    ],
                )
            ],
            "lines": [
                ("line", [(50, 17), (50, 93)]),
                ("line", [(37, 11), (46, 38), (50, 17)]),
                ("line", [(63, 11), (54, 38), (50, 17)]),
                ("dot", (54, 50, 1.6)),
                ("dot", (54, 62, 1.6)),
                ("dot", (54, 74, 1.6)),
            ],
        }
    if key == "sandal":
        return {
            "trim": [
                ("poly", [(10, 72), (90, 70), (92, 77), (14, 79), (10, 77)]),
                ("poly", [(12, 78), (26, 78), (25, 88), (14, 88)]),
            ],
            "body": [
                ("poly", [(10, 67), (90, 65), (90, 70), (10, 72)]),
                ("band", (56, 48, 88, 84), 180, 360, 9),
                ("band", (33, 40, 67, 96), 180, 360, 9),
                ("band", (13, 36, 37, 104), 180, 360, 7),
            ],
            "lines": [],
        }
    if key == "shirt":
        return {
            "body": [
                (
                    "poly",
                    [
                        (37, 14),
                        (44, 12),
                        (50, 16),
                        (56, 12),
                        (63, 14),
                        (80, 23),
                        (88, 80),
                        (78, 82),
                        (69, 40),
                        (69, 88),
                        (31, 88),
                        (31, 40),
                        (22, 82),
                        (12, 80),
                        (20, 23),
                    ],
                )
            ],
            "lines": [
                ("line", [(44, 12), (50, 24), (56, 12)]),
                ("line", [(50, 24), (50, 88)]),
                ("dot", (53, 36, 1.3)),
                ("dot", (53, 50, 1.3)),
                ("dot", (53, 64, 1.3)),
                ("dot", (53, 78, 1.3)),
                ("line", [(40, 20), (50, 24), (60, 20)]),
            ],
        }
    if key == "sneaker":
        return {
            "body": [
                (
                    "poly",
                    [
                        (12, 70),
                        (14, 52),
                        (28, 48),
                        (42, 40),
                        (55, 37),
                        (62, 45),
                        (78, 53),
                        (90, 61),
                        (91, 71),
                        (12, 71),
                    ],
                )
            ],
            "trim": [("poly", [(10, 71), (93, 71), (93, 79), (12, 80), (10, 76)])],
            "lines": [
                ("line", [(44, 44), (52, 54)]),
                ("line", [(48, 42), (56, 52)]),
                ("line", [(52, 40), (60, 50)]),
                ("line", [(74, 56), (80, 71)]),
            ],
        }
    if key == "bag":
        return {
            "body": [("poly", [(20, 40), (80, 40), (88, 87), (12, 87)])],
            "trim": [("band", (32, 12, 68, 62), 180, 360, 5)],
            "lines": [("line", [(20, 52), (80, 52)]), ("dot", (50, 57, 2.2))],
        }
    if key == "boot":
        return {
            "body": [
                ("poly", [(26, 18), (54, 18), (56, 52), (77, 59), (89, 67), (90, 76), (22, 76), (25, 40)])
            ],
            "trim": [
                ("poly", [(20, 76), (92, 76), (92, 83), (20, 83)]),
                ("poly", [(20, 83), (36, 83), (36, 91), (21, 91)]),
            ],
            "lines": [("line", [(48, 20), (50, 56)])],
        }
    raise KeyError(key)


def _draw_parts(draw: ImageDraw.ImageDraw, parts: list, xf, scale: float, fill, width: int) -> None:
    for part in parts:
        kind = part[0]
        if kind == "poly":
            draw.polygon([xf(p) for p in part[1]], fill=fill)
        elif kind == "band":
            x0, y0, x1, y1 = part[1]
            (ax, ay), (bx, by) = xf((x0, y0)), xf((x1, y1))
            draw.arc(
                (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)),
                part[2],
                part[3],
                fill=fill,
                width=max(1, int(part[4] * scale)),
            )
        elif kind == "line":
            draw.line([xf(p) for p in part[1]], fill=fill, width=width, joint="curve")
        elif kind == "arc":
            x0, y0, x1, y1 = part[1]
            (ax, ay), (bx, by) = xf((x0, y0)), xf((x1, y1))
            draw.arc(
                (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)), part[2], part[3], fill=fill, width=width
            )
        elif kind == "dot":
            cx, cy, r = part[1]
            x, y = xf((cx, cy))
            draw.ellipse((x - r * scale, y - r * scale, x + r * scale, y + r * scale), fill=fill)


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(c * f)))) for c in rgb)  # type: ignore[return-value]


def _contrast(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (250, 250, 250) if lum < 150 else (30, 30, 36)


def _pattern_layer(
    size: int, rgb: tuple[int, int, int], pattern: str, rng: np.random.Generator
) -> Image.Image:
    layer = Image.new("RGB", (size, size), rgb)
    if pattern == "plain":
        return layer
    draw = ImageDraw.Draw(layer)
    ink = _contrast(rgb)
    if pattern == "striped":
        period = size / float(rng.uniform(9.0, 13.0))
        band = period * 0.45
        y = float(rng.uniform(0, period))
        while y < size:
            draw.rectangle((0, int(y), size, int(y + band)), fill=ink)
            y += period
    else:  # polka dot
        period = size / float(rng.uniform(9.0, 12.0))
        r = period * 0.22
        row = 0
        y = float(rng.uniform(0, period / 2))
        while y < size + period:
            x = (period / 2 if row % 2 else 0.0) + float(rng.uniform(0, 0.1)) * period
            while x < size + period:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=ink)
                x += period
            y += period * 0.87
            row += 1
    return layer


def _dilate(a: np.ndarray, r: int) -> np.ndarray:
    """Grey-level dilation by a (2r+1) square, with shifted maxima (much faster than MaxFilter)."""
    out = a.copy()
    for _ in range(r):
        nxt = out.copy()
        np.maximum(nxt[1:, :], out[:-1, :], out=nxt[1:, :])
        np.maximum(nxt[:-1, :], out[1:, :], out=nxt[:-1, :])
        np.maximum(nxt[:, 1:], out[:, :-1], out=nxt[:, 1:])
        np.maximum(nxt[:, :-1], out[:, 1:], out=nxt[:, :-1])
        out = nxt
    return out


def _render_garment(
    key: str, rgb: tuple[int, int, int], pattern: str, size: int, rng: np.random.Generator
) -> Image.Image:
    ss = 2  # supersampling
    S = size * ss
    bg = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    zoom = float(rng.uniform(0.88, 1.0))
    dx, dy = (float(v) for v in rng.uniform(-3.0, 3.0, size=2))
    angle = math.radians(float(rng.uniform(-5.0, 5.0)))
    ca, sa = math.cos(angle), math.sin(angle)
    scale = S / 100.0 * zoom

    def xf(p: tuple[float, float]) -> tuple[float, float]:
        x, y = p[0] - 50.0, p[1] - 50.0
        x, y = x * ca - y * sa, x * sa + y * ca
        return ((x + dx) * scale + S / 2.0, (y + dy) * scale + S / 2.0)

    shp = _shapes(key)
    body = Image.new("L", (S, S), 0)
    _draw_parts(ImageDraw.Draw(body), shp.get("body", []), xf, scale, 255, 1)
    trim = Image.new("L", (S, S), 0)
    _draw_parts(ImageDraw.Draw(trim), shp.get("trim", []), xf, scale, 255, 1)

    canvas = Image.new("RGB", (S, S), bg)
    # soft drop shadow (blurred at quarter resolution: cheap)
    union = ImageChops.lighter(body, trim)
    q = max(8, S // 4)
    shadow = union.resize((q, q), Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(radius=q / 60))
    shadow = shadow.resize((S, S), Image.Resampling.BILINEAR).point(lambda v: int(v * 0.6))
    shadow_off = Image.new("L", (S, S), 0)
    shadow_off.paste(shadow, (int(S / 90), int(S / 70)))
    canvas.paste(_shade(bg, 0.82), (0, 0, S, S), shadow_off)

    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    outline = _shade(rgb, 0.55) if lum > 60 else (90, 90, 96)
    if lum > 225:
        outline = (150, 150, 155)
    trim_rgb = (235, 235, 230) if lum < 140 else (60, 55, 52)
    canvas.paste(trim_rgb, (0, 0, S, S), trim)
    # the garment, with a gentle left-to-right light fall-off
    garment = ImageChops.multiply(_pattern_layer(S, rgb, pattern, rng), _gradient(S))
    canvas.paste(garment, (0, 0), body)
    # outline = dilated union minus union
    width = max(2, int(S / 110))
    u8 = np.asarray(union)
    dil = _dilate(u8, max(1, width // 2))
    edge = Image.fromarray(dil - u8)  # dil >= u8 everywhere
    canvas.paste(outline, (0, 0, S, S), edge)
    _draw_parts(ImageDraw.Draw(canvas), shp.get("lines", []), xf, scale, outline, width)
    return canvas.reduce(ss)


_GRADIENTS: dict[int, Image.Image] = {}


def _gradient(S: int) -> Image.Image:
    if S not in _GRADIENTS:
        row = np.linspace(255.0, 222.0, S).round().astype(np.uint8)
        _GRADIENTS[S] = Image.fromarray(np.repeat(row[None, :], S, axis=0)).convert("RGB")
    return _GRADIENTS[S]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


_FMNIST_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _load_fashion_mnist(d: Path) -> tuple[np.ndarray, np.ndarray]:
    key = str(d.resolve())
    if key not in _FMNIST_CACHE:
        images = _read_idx(d / _FMNIST_IMAGES)
        labels = _read_idx(d / _FMNIST_LABELS)
        if images.ndim != 3 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"unexpected Fashion-MNIST files in {d}")
        _FMNIST_CACHE[key] = (images, labels)
    return _FMNIST_CACHE[key]


def _tint_fashion_mnist(
    pic: np.ndarray, rgb: tuple[int, int, int], pattern: str, size: int, rng: np.random.Generator
) -> Image.Image:
    bg = np.array(_BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))], dtype=np.float32)
    padded = np.pad(pic, 2)  # 32x32: a margin around the garment
    inten = (
        np.asarray(Image.fromarray(padded).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        / 255.0
    )
    inten = np.clip(inten, 0.0, 1.0)
    mask = np.clip((inten - 0.02) / 0.12, 0.0, 1.0)[:, :, None]
    top = float(np.percentile(inten[mask[:, :, 0] > 0.5], 95)) if (mask > 0.5).any() else 1.0
    shading = 0.45 + 0.55 * np.clip(inten / max(top, 1e-3), 0.0, 1.0)
    layer = np.asarray(_pattern_layer(size, rgb, pattern, rng), dtype=np.float32)
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    if lum < 60:  # keep dark garments' texture visible
        shading = 0.7 + 0.3 * shading
        layer = layer + 25.0
    tinted = np.clip(layer * shading[:, :, None], 0, 255)
    out = bg[None, None, :] * (1.0 - mask) + tinted * mask
    return Image.fromarray(out.round().astype(np.uint8))
