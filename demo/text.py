"""The words of the world: review lines (title, text, votes) and product meta lines.

Review titles and texts agree with the rating and comment on the attributes that drove it
("I love the red colour.", "The stripes look cheap."): a text model can learn a product's colour,
pattern and style from its reviews and meta lines, as from real ones.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

import numpy as np

from demo.vocabulary import (
    CARE,
    CLOSERS,
    COLOURS,
    COMMENTS,
    DEPT_TITLE,
    OPENERS,
    PATTERN_FEATURE,
    PATTERN_TITLE,
    PATTERNS,
    REVIEW_TITLES,
    STORES,
    STYLE_OCCASION,
    STYLE_PHRASE,
    STYLE_TITLE,
    STYLES,
)
from demo.world import Products


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def attribute_words(products: Products, j: int) -> dict[str, str]:
    """The template placeholders for product j: noun, plural, colour, pattern, style, material."""
    g = products.garment(j)
    return {
        "noun": g.noun,
        "plural": g.plural,
        "colour": COLOURS[products.colour[j]][0],
        "pattern": PATTERNS[products.pattern[j]],
        "style": STYLES[products.style[j]],
        "material": g.materials[products.material[j]],
    }


def review_line(
    rng: np.random.Generator,
    rating: int,
    products: Products,
    j: int,
    contrib: dict[str, float],
    user_id: str,
    timestamp: int,
) -> dict[str, Any]:
    """One line of the reviews file (Amazon 2023 format); `contrib` is what drove the rating, by attribute."""
    title, text = review_text(rng, rating, products, j, contrib)
    helpful = int(rng.geometric(0.55) - 1)
    if rating in (1, 5) and rng.random() < 0.3:
        helpful += int(rng.integers(1, 6))
    asin = products.parent_asin[j]
    return {
        "rating": float(rating),
        "title": title,
        "text": text,
        "images": [],
        "asin": asin,
        "parent_asin": asin,
        "user_id": user_id,
        "timestamp": timestamp,
        "helpful_vote": helpful,
        "verified_purchase": bool(rng.random() < 0.9),
    }


def review_text(
    rng: np.random.Generator, r: int, products: Products, j: int, contrib: dict[str, float]
) -> tuple[str, str]:
    """Title and text of a rating-r review: praise for the strongest parts of `contrib` (r >= 4),
    complaints about the weakest (r <= 2), one of each (r == 3)."""
    w = attribute_words(products, j)
    kind = products.garment(j).kind

    def comment(attr: str, positive: bool) -> str:
        key = {"pattern": f"pattern:{w['pattern']}", "category": f"category:{kind}"}.get(attr, attr)
        pos, neg = COMMENTS[key]
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
    title = _pick(rng, REVIEW_TITLES[r]).format(**w)
    title = title[0].upper() + title[1:]
    sentences = [_pick(rng, OPENERS[r]).format(**w), *comments, _pick(rng, CLOSERS[r])]
    text = " ".join(s for s in sentences if s)
    return title, text


def _title(products: Products, j: int, w: dict[str, str], dept: str) -> str:
    tr = products.text_draws[j]
    style = w["style"]
    noun_t = " ".join(p[:1].upper() + p[1:] for p in products.garment(j).noun.split(" "))
    words = [DEPT_TITLE[dept]]
    if tr[0] < 0.65:
        words.append(STYLE_TITLE[style][int(tr[1] * 2)])
    words += [w["colour"].title(), PATTERN_TITLE[w["pattern"]], w["material"].title(), noun_t]
    title = " ".join(x for x in words if x)
    if tr[2] < 0.5:
        title += f" for {STYLE_OCCASION[style]}"
    return title


def meta_line(
    products: Products, j: int, ratings: list[float], avail_ms: int, image_rel: str
) -> dict[str, Any]:
    """Product j's line of the meta file (Amazon 2023 format): its colour, pattern and style are
    written in the title, features and description; `image_rel` is its picture's path or URL."""
    g = products.garment(j)
    w = attribute_words(products, j)
    tr = products.text_draws[j]
    style = w["style"]
    dept = g.departments[products.department[j]]
    colour_t = w["colour"].title()
    material_t = w["material"].title()
    store = STORES[products.store[j]]
    features = [
        f"{'100% ' if tr[3] < 0.5 else ''}{material_t}",
        f"Colour: {colour_t}",
        f"Pattern: {PATTERN_FEATURE[w['pattern']]}",
        f"Style: {style}",
        *g.extra_features[: 1 + int(tr[1] * len(g.extra_features))],
        CARE[g.kind][int(tr[2] * len(CARE[g.kind]))],
    ]
    pattern_words = {"plain": "solid", "striped": "striped", "polka dot": "polka dot"}[w["pattern"]]
    description = [
        f"This {w['colour']} {pattern_words} {g.noun} from {store} brings {STYLE_PHRASE[style]}.",
        f"Made from {w['material']}. {g.extra_features[0]}.",
    ]
    avail = _dt.datetime.fromtimestamp(avail_ms / 1000, tz=_dt.UTC)
    return {
        "main_category": "AMAZON FASHION",
        "title": _title(products, j, w, dept),
        "average_rating": round(float(np.mean(ratings)), 1) if ratings else None,
        "rating_number": len(ratings),
        "features": features,
        "description": description,
        "price": float(round(products.price[j], 2)),
        "images": [{"thumb": image_rel, "large": image_rel, "variant": "MAIN", "hi_res": None}],
        "videos": [],
        "store": store,
        "categories": list(g.path),
        "details": {
            "Department": dept.lower() if dept != "Unisex" else "unisex-adult",
            "Material": material_t,
            "Date First Available": f"{avail:%B} {avail.day}, {avail.year}",
        },
        "parent_asin": products.parent_asin[j],
        "bought_together": None,
    }
