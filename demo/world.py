"""The world model: products, customers, who reviews what, and the ratings they would give.

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

The truth file holds E[rating] under the noise, i.e. 1 + sum_k P(x + e >= k + 0.5), k=1..4, and x.

Every draw comes from one of six independent streams spawned from the seed (`Streams`), always in
the same order: that is what makes the same seed give byte-identical files. Reordering draws, or
drawing from another stream, changes every world generated so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from demo.vocabulary import COLOURS, GARMENTS, PATTERNS, STORES, STYLES, Garment

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

_ALNUM = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))


@dataclass(frozen=True)
class Streams:
    """The independent random streams of one world, so that e.g. the texts never change the ratings.
    (Pictures have a stream each, seeded by seed and product index: see `demo.images`.)"""

    product: np.random.Generator
    customer: np.random.Generator
    selection: np.random.Generator
    rating: np.random.Generator
    text: np.random.Generator
    time: np.random.Generator

    @classmethod
    def from_seed(cls, seed: int) -> Streams:
        ss = np.random.SeedSequence([seed, 20240601])
        return cls(*(np.random.default_rng(s) for s in ss.spawn(6)))


@dataclass
class Products:
    """One entry per product, by product index; the attribute fields index the vocabulary tables."""

    parent_asin: list[str]
    category: np.ndarray  # into GARMENTS
    colour: np.ndarray  # into COLOURS
    pattern: np.ndarray  # into PATTERNS
    style: np.ndarray  # into STYLES
    store: np.ndarray  # into STORES
    store_quality: np.ndarray  # one per store, not per product
    quality: np.ndarray
    log_pop: np.ndarray
    material: np.ndarray  # into the garment's materials
    department: np.ndarray  # into the garment's departments
    cold: np.ndarray  # bool: never rated ("new arrivals")
    price: np.ndarray
    text_draws: np.ndarray  # (n, 4) uniforms: title/feature/description variety

    def __len__(self) -> int:
        return len(self.parent_asin)

    def garment(self, j: int) -> Garment:
        return GARMENTS[self.category[j]]


@dataclass
class Tastes:
    """Taste matrices over the four attributes, one row per customer (or per segment)."""

    category: np.ndarray
    colour: np.ndarray
    pattern: np.ndarray
    style: np.ndarray


@dataclass
class Customers:
    user_id: list[str]
    segment: np.ndarray
    segment_taste: Tastes  # one row per segment
    taste: Tastes  # one row per customer
    bias: np.ndarray  # personal rating bias

    def __len__(self) -> int:
        return len(self.user_id)


@dataclass
class Affinity:
    """The weighted taste parts of every customer's score of every product, each (customers, products)."""

    category: np.ndarray
    colour: np.ndarray
    pattern: np.ndarray
    style: np.ndarray

    KEYS = ("category", "colour", "pattern", "style")

    @classmethod
    def between(cls, customers: Customers, products: Products) -> Affinity:
        t = customers.taste
        return cls(
            category=W_CAT * t.category[:, products.category],
            colour=W_COLOUR * t.colour[:, products.colour],
            pattern=W_PATTERN * t.pattern[:, products.pattern],
            style=W_STYLE * t.style[:, products.style],
        )

    def total(self) -> np.ndarray:
        return self.category + self.colour + self.pattern + self.style

    def at(self, u: int, j: int) -> dict[str, float]:
        """Customer u's taste parts for product j, by attribute (what the review talks about)."""
        return {k: float(getattr(self, k)[u, j]) for k in self.KEYS}


@dataclass
class World:
    products: Products
    customers: Customers
    affinity: Affinity
    latent: np.ndarray  # (customers, products): x = MU + bias + quality + affinity, before the noise
    mu: float
    reviewed: list[list[int]]  # per customer, the products they review


def build_world(streams: Streams, n_customers: int, n_products: int, n_cold: int, lo: int, hi: int) -> World:
    """Products, customers, latent scores, who reviews what (lo..hi products each), and MU."""
    products = make_products(streams.product, n_products, n_cold)
    customers = make_customers(streams.customer, n_customers)
    affinity = Affinity.between(customers, products)
    total = affinity.total()
    latent = customers.bias[:, None] + products.quality[None, :] + total  # MU is added below
    # (U, P) matrices are large for catalog-size worlds: each is freed as soon as it has been used
    k_per_user, perturbed = _selection_draws(streams.selection, total, products, lo, hi)
    del total
    reviewed = choose_reviewed(k_per_user, perturbed, products, hi)
    del perturbed
    pair_u = np.concatenate([np.full(len(items), u) for u, items in enumerate(reviewed)])
    pair_j = np.concatenate([np.asarray(items, dtype=np.int64) for items in reviewed])
    mu = calibrate_mu(latent[pair_u, pair_j], TARGET_MEAN)
    latent += mu
    return World(products, customers, affinity, latent, mu, reviewed)


# ----------------------------------------------------------------------------- products, customers
def codes(rng: np.random.Generator, n: int, length: int, prefix: str) -> list[str]:
    """n distinct random ids: `prefix` + `length` upper-case letters and digits."""
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


def make_products(rng: np.random.Generator, n: int, n_cold: int) -> Products:
    category = rng.integers(0, len(GARMENTS), size=n)
    colour = rng.integers(0, len(COLOURS), size=n)
    pattern = rng.choice(len(PATTERNS), size=n, p=[0.5, 0.25, 0.25])
    style = rng.integers(0, len(STYLES), size=n)
    store_quality = rng.normal(0.0, STORE_SD, size=len(STORES))
    store = rng.integers(0, len(STORES), size=n)
    quality = store_quality[store] + rng.normal(0.0, QUALITY_SD, size=n)
    log_pop = POP_QUALITY * quality + rng.normal(0.0, POP_SD, size=n)
    material = np.array([rng.integers(len(GARMENTS[c].materials)) for c in category])
    department = np.array([rng.integers(len(GARMENTS[c].departments)) for c in category])
    cold = np.zeros(n, dtype=bool)
    cold[rng.choice(n, size=n_cold, replace=False)] = True
    u = rng.random(n)
    lo_p = np.log([GARMENTS[c].price[0] for c in category])
    hi_p = np.log([GARMENTS[c].price[1] for c in category])
    price = np.exp(lo_p + u * (hi_p - lo_p) + 0.25 * quality)
    price = np.floor(price) + 0.99
    text_draws = rng.random((n, 4))
    return Products(
        parent_asin=codes(rng, n, 8, "B0"),
        category=category,
        colour=colour,
        pattern=pattern,
        style=style,
        store=store,
        store_quality=store_quality,
        quality=quality,
        log_pop=log_pop,
        material=material,
        department=department,
        cold=cold,
        price=price,
        text_draws=text_draws,
    )


def make_customers(rng: np.random.Generator, n: int) -> Customers:
    dims = {"category": len(GARMENTS), "colour": len(COLOURS), "pattern": len(PATTERNS), "style": len(STYLES)}
    seg_taste = {k: rng.normal(0.0, 1.0, size=(N_SEGMENTS, d)) for k, d in dims.items()}
    segment = rng.integers(0, N_SEGMENTS, size=n)
    taste = {}
    for k, d in dims.items():
        own = rng.normal(0.0, 1.0, size=(n, d))
        taste[k] = SEGMENT_WEIGHT * seg_taste[k][segment] + INDIVIDUAL_WEIGHT * own
    bias = rng.normal(0.0, BIAS_SD, size=n)
    return Customers(
        user_id=codes(rng, n, 27, "A"),
        segment=segment,
        segment_taste=Tastes(**seg_taste),
        taste=Tastes(**taste),
        bias=bias,
    )


# ----------------------------------------------------------------------------- who reviews what
def _selection_draws(
    rng: np.random.Generator, affinity: np.ndarray, products: Products, lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray]:
    """How many products each customer reviews, and the Gumbel-perturbed selection logits over the
    warm (rated) products, (customers, warm products)."""
    warm_idx = np.flatnonzero(~products.cold)
    n_warm = len(warm_idx)
    logits = (
        ALPHA * (affinity[:, warm_idx] + products.quality[None, warm_idx])
        + BETA * products.log_pop[None, warm_idx]
    )
    k_per_user = rng.integers(min(lo, n_warm), min(hi, n_warm) + 1, size=affinity.shape[0])
    perturbed = rng.gumbel(size=logits.shape)  # built in place: one (U, P) matrix fewer
    perturbed += logits
    return k_per_user, perturbed


def choose_reviewed(
    k_per_user: np.ndarray, perturbed: np.ndarray, products: Products, hi: int
) -> list[list[int]]:
    """Each customer's top k_u warm products under the perturbed logits (a Plackett-Luce draw);
    then every warm product nobody chose goes to the customer most likely to pick it among those
    still under `hi` reviews (anyone, if nobody is)."""
    warm_idx = np.flatnonzero(~products.cold)
    order = np.argsort(-perturbed, axis=1, kind="stable")
    chosen: list[list[int]] = [list(warm_idx[order[u, : k_per_user[u]]]) for u in range(len(k_per_user))]
    del order
    counts = np.zeros(len(products), dtype=np.int64)
    for items in chosen:
        counts[items] += 1
    for j_pos, j in enumerate(warm_idx):
        if counts[j] == 0:
            ranked = np.argsort(-perturbed[:, j_pos], kind="stable")
            room = [int(u) for u in ranked if len(chosen[u]) < hi]
            u = room[0] if room else int(ranked[0])
            chosen[u].append(int(j))
            counts[j] += 1
    return chosen


# ----------------------------------------------------------------------------- ratings
def draw_rating(rng: np.random.Generator, x: float) -> int:
    """clip(round(x + e), 1, 5): e ~ N(0, NOISE_SD), minus BAD_SHIFT with probability BAD_P."""
    noise = rng.normal(0.0, NOISE_SD) - (BAD_SHIFT if rng.random() < BAD_P else 0.0)
    return int(np.clip(np.rint(x + noise), 1, 5))


def _erf(x: np.ndarray) -> np.ndarray:
    """Vectorised erf (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7)."""
    x = np.asarray(x, dtype=float)
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def calibrate_mu(latent0: np.ndarray, target: float) -> float:
    """The offset mu with mean(E[rating | mu + latent0]) == target (bisection; E is increasing)."""
    lo, hi = -5.0, 10.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(np.mean(expected_rating(mid + latent0))) < target:
            lo = mid
        else:
            hi = mid
    return round(0.5 * (lo + hi), 6)


def expected_rating(latent: np.ndarray) -> np.ndarray:
    """E[clip(round(x + e), 1, 5)] = 1 + sum_k P(x + e >= k + 0.5), k = 1..4, where the noise e is
    N(0, NOISE_SD), shifted down by BAD_SHIFT with probability BAD_P."""

    def exp_normal(x: np.ndarray) -> np.ndarray:
        out = np.ones_like(x, dtype=float)
        for k in range(1, 5):
            out += 0.5 * (1.0 + _erf((x - (k + 0.5)) / (NOISE_SD * math.sqrt(2.0))))
        return out

    return (1.0 - BAD_P) * exp_normal(latent) + BAD_P * exp_normal(latent - BAD_SHIFT)
