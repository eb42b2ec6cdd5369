"""The serving object: load an artifact directory once, then score products for customers.

One scoring path (`Recommender.score`): the trained network runs in numpy from its weights
(`ml.scoring`), with the product half computed once at load time for the whole catalog; a call
computes the customer halves and the pair features of the requested customers x products only.
Serving (`recommend`, `recommend_many`), evaluation (`score_customers`, `heads_for_customers`) and
rating prediction (`predict`, through `score_pairs`, the aligned-rows shape of the same forward
pass) all go through it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ml import feedback
from ml.artifact import Artifact
from ml.catalog import Catalog, Filters, read_attributes
from ml.config import Settings, usable_cpus
from ml.features import (
    PAIR_DIM,
    PairSignals,
    customer_features,
    customer_history,
    customer_prior,
    knn_top,
    pair_signals,
    pair_signals_grid,
    product_features,
    product_id_input,
    product_prior,
    rater_norm,
)
from ml.parallel import map_on_cpus
from ml.ranking import RankingRule
from ml.retrieval import ContentIndex, positions_in, without_positions
from ml.scoring import HEADS, CustomerPart, Heads, ProductPart, ScoringNet

if TYPE_CHECKING:
    from ml.feedback import Rating

COLD_START_DOC = (
    "Unknown customers get the most popular products (training-rating count, ties broken by mean "
    "rating), flagged cold_start=true and strategy='popularity'."
)
REASONS = 2  # rated products named as an item's reasons, at most
REASON_MIN_RATING = 3.0  # a product the customer rated lower does not support a recommendation
REASON_METHOD = "content_similarity"  # `because`: the customer's rated products nearest by content
SIMILAR_METHOD = "content_cosine"
# Two-stage with a filter keeping m products: scanning their retrieval vectors costs ~m, asking the
# index for k x P / m candidates ~k x P / m; the two cost alike near m^2 = FILTER_SCAN_COST x k x P
# (100k catalog, k = 1,000: scan 0.45 ms at 12.6k, 5.6 ms at 25k; index 6.5 ms for 4,000, 3.5 ms for 2,000).
FILTER_SCAN_COST = 7.0
PASS_ROWS = 65_536  # (customer, product) rows per forward pass: bounds the hidden activations' memory
MAX_ROWS = 400_000  # customers x products scored at once by recommend_many's chunks (bounds its memory)


def _chunks(n: int, width: int, threads: int) -> tuple[list[np.ndarray], int]:
    """Rows 0..n-1 of a batch in chunks of customers, and how many may run at once (at most
    `threads`): together they score at most MAX_ROWS (customer, product) rows (`width` products a
    customer; one customer when even one is wider), and a batch smaller than that still gives
    every thread a chunk."""
    threads = max(1, min(threads, MAX_ROWS // max(width, 1)))
    step = max(1, min(MAX_ROWS // max(width, 1) // threads, -(-n // threads)))
    return [np.arange(s, min(s + step, n)) for s in range(0, n, step)], threads


@dataclass(frozen=True)
class ServingPath:
    """When serving is two-stage: above `exact_max_products` products, and only with a retriever,
    a known customer's `retrieval_k` best candidates (seen products removed before the cut) are
    reranked by the heads; otherwise the whole catalog is scored exactly. A batch job's chunks run
    in `threads` threads (`ml.parallel.map_on_cpus`)."""

    retrieval_k: int = Settings.retrieval_k
    exact_max_products: int = Settings.exact_max_products
    batch_threads: int = Settings.batch_threads  # 0: the CPUs this process may run on

    @classmethod
    def from_settings(cls, settings: Settings) -> ServingPath:
        return cls(settings.retrieval_k, settings.exact_max_products, settings.batch_threads)

    @property
    def threads(self) -> int:
        return self.batch_threads if self.batch_threads > 0 else usable_cpus()


def popular_reason() -> dict:
    """`because` of a cold-start (popularity) item."""
    return {"method": "popular", "products": []}


@dataclass(frozen=True, eq=False)
class Ranked:
    """Customers' best products before they are presented (`Recommender._rank`): for each item,
    its customer row (ascending; a customer's items best first), product position, ranking score,
    pair features and predicted rating (None when the ranking did not compute the rating head)."""

    rows: np.ndarray
    best: np.ndarray
    vals: np.ndarray
    pair_features: np.ndarray
    rating: np.ndarray | None

    @classmethod
    def empty(cls) -> Ranked:
        """Nothing ranked: no items, and so no ratings to compute for them."""
        none, none32 = np.zeros(0, np.int64), np.zeros(0, np.float32)
        return cls(none, none, none32, np.zeros((0, PAIR_DIM), np.float32), none32)

    @classmethod
    def stacked(cls, parts: Sequence[Ranked]) -> Ranked:
        """One customer row per part (each part ranked one customer), in order."""
        ratings = [r.rating for r in parts]
        return cls(
            np.concatenate([np.full(len(r.rows), n, np.int64) for n, r in enumerate(parts)]),
            np.concatenate([r.best for r in parts]),
            np.concatenate([r.vals for r in parts]),
            np.concatenate([r.pair_features for r in parts]),
            None if any(x is None for x in ratings) else np.concatenate(ratings),
        )


class UnknownProduct(LookupError):
    """A product id the model's catalog does not hold."""


def content_modalities(manifest: dict, content: np.ndarray) -> list[str]:
    """Which embeddings the content vectors hold ("image", "text"): `ml.features.product_content`
    writes each modality's block followed by its 0/1 mask column, image first."""
    if content.shape[1] == 0:
        return []
    masks = int(np.all((content == 0) | (content == 1), axis=0).sum())
    image = bool(manifest.get("images", {}).get("with_photo")) and manifest.get("config", {}).get(
        "use_images", True
    )
    return (["image"] if image else []) + (["text"] if masks > int(image) else [])


class Recommender:
    """Top-N recommendations from a trained hybrid model artifact."""

    def __init__(
        self, artifact: Artifact, serving: ServingPath = ServingPath(), catalog: Catalog | None = None
    ) -> None:
        """Serve `artifact` (read from disk, or still in memory while training chooses its ranking
        weight); `catalog`: the products' category paths and prices (default: from the artifact)."""
        manifest, tables, model, products = (
            artifact.manifest,
            artifact.tables,
            artifact.model,
            artifact.products,
        )
        seen_u, seen_i = artifact.seen_u, artifact.seen_i
        self.retriever = artifact.retriever
        self.serving = serving
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.ranking = RankingRule.from_manifest(manifest)
        self.tables = tables
        rater_norm(tables)  # item-kNN's norm, taken before live feedback adds to the rated lists
        self.model = model
        self._customer_index = pd.Index(tables.customer_ids)
        self._product_index = pd.Index(tables.product_ids)
        self._titles = [p.get("title", "") for p in products]
        self._images = [p.get("image", "") for p in products]
        order = np.argsort(seen_u, kind="stable")
        self._seen_i = seen_i[order]
        self._seen_start = np.searchsorted(seen_u[order], np.arange(tables.n_customers + 1))
        all_i = np.arange(tables.n_products)
        self.net = ScoringNet.from_model(model)
        # similar products and reasons: cosine over the content vectors the hybrid is given
        self.content = ContentIndex(tables.prod_content)
        with_unknown = np.append(all_i, -1)  # row P: the "unknown product" (position -1)
        self._prod = self.net.product_part(
            product_features(tables, with_unknown),
            product_id_input(tables, with_unknown),
            product_prior(tables, with_unknown),
            # the affinity cosines read the tables' content and the index's inverse norms: no copy
            (tables.prod_content, np.append(self.content.exact.inv_norm, np.float32(0))),
        )
        all_i = np.arange(tables.n_products)
        mean_rating = tables.prod_rating_sum / np.maximum(tables.prod_count, 1)
        self._popular = np.lexsort((all_i, -mean_rating, -tables.prod_count))
        self._popular_rank = np.empty(tables.n_products, np.int64)
        self._popular_rank[self._popular] = all_i
        self.catalog = catalog or read_attributes(products, manifest.get("data", {}))
        self.modalities = content_modalities(manifest, tables.prod_content)

    @classmethod
    def load(cls, path: str | Path, settings: Settings | None = None) -> Recommender:
        """The artifact at `path`, with its retriever when it has one; `settings` choose the serving
        path (default: the environment's)."""
        return cls(Artifact.read(path), ServingPath.from_settings(settings or Settings.from_env()))

    # -- lookups -------------------------------------------------------------------------------
    @property
    def n_products(self) -> int:
        return self.tables.n_products

    def has_customer(self, customer_id: str) -> bool:
        return customer_id in self._customer_index

    def has_product(self, product_id: str) -> bool:
        return product_id in self._product_index

    def customers(self, limit: int = 20) -> list[str]:
        """Known customers, most active first (useful to try the API)."""
        order = np.lexsort((self.tables.customer_ids, -self.tables.cust_count))
        return [str(c) for c in self.tables.customer_ids[order[: max(limit, 0)]]]

    def seen(self, u: int) -> np.ndarray:
        return self._seen_i[self._seen_start[u] : self._seen_start[u + 1]]

    def add_ratings(self, ratings: Sequence[Rating]) -> int:
        """Fold feedback into the loaded model without retraining (ml.feedback says what changes at
        once and what waits for training): an unknown customer becomes a known one, the product is
        seen. Ratings of products this model does not have are skipped. Returns how many were applied."""
        applied = 0
        for r in ratings:
            i = self._product_index.get_indexer([r.product_id])[0]
            if i < 0:
                continue
            u = self._customer_index.get_indexer([r.customer_id])[0]
            if u < 0:
                u = feedback.add_customer(self.tables, r.customer_id)
                self._customer_index = pd.Index(self.tables.customer_ids)
                self._seen_start = np.append(self._seen_start, self._seen_start[-1])
                if self.retriever is not None:  # candidates by the product-bias part of the index
                    row = np.zeros((1, self.retriever.customer_vecs.shape[1]), np.float32)
                    row[0, -1] = 1.0
                    self.retriever.customer_vecs = np.concatenate([self.retriever.customer_vecs, row])
            if feedback.fold_in(self.tables, int(u), int(i), r.rating):
                at = self._seen_start[u + 1]
                self._seen_i = np.insert(self._seen_i, at, i)
                self._seen_start[u + 1 :] += 1
            applied += 1
        return applied

    def with_serving(self, serving: ServingPath) -> Recommender:
        """The same loaded model served by another path (shares every array): benchmarks and
        tests compare exact and two-stage on one load."""
        other = copy.copy(self)
        other.serving = serving
        return other

    def with_catalog(self, catalog: Catalog) -> Recommender:
        """The same loaded model filtering by other catalog attributes (benchmarks, tests)."""
        if catalog.n_products != self.n_products:
            raise ValueError("the catalog must describe every product of the model")
        other = copy.copy(self)
        other.catalog = catalog
        return other

    @property
    def two_stage(self) -> bool:
        """Whether known customers are served by retrieval + rerank (see ServingPath)."""
        return self.retriever is not None and self.n_products > self.serving.exact_max_products

    def retrieve(self, u: int, top: int, exclude_seen: bool = True) -> np.ndarray:
        """Two-stage candidates for customer position `u`: the retriever's max(retrieval_k, top)
        products, seen ones removed before the cut (so `top` items come back when the catalog has
        them), and when the ranking adds the kNN term (which the retriever does not learn) up to
        retrieval_k / 10 more: the customer's best by item-kNN (`ml.features.knn_top`)."""
        return self.retrieve_many(np.array([u]), top, exclude_seen)[0]

    def retrieve_many(self, u: np.ndarray, top: int, exclude_seen: bool = True) -> list[np.ndarray]:
        """`retrieve` for each customer position of `u`, the index asked once for them all
        (`Retriever.candidates_many`): a batch job's candidates."""
        excludes = [self.seen(int(x)) if exclude_seen else None for x in u]
        k = max(self.serving.retrieval_k, top)
        found = self.retriever.candidates_many(u, k, excludes)
        return [self._with_knn_best(int(x), f, k, e) for x, f, e in zip(u, found, excludes)]

    def _with_knn_best(
        self, u: int, found: np.ndarray, k: int, exclude: np.ndarray | None, allowed: np.ndarray | None = None
    ) -> np.ndarray:
        """`found` and, when the ranking uses the kNN term, up to k / 10 of the customer's best by
        item-kNN not among them (within `allowed`, sorted positions, when given)."""
        if self.ranking.shrink is None:
            return found
        extra = knn_top(
            self.tables, u, max(1, k // 10) if allowed is None else len(allowed), self.ranking.shrink, exclude
        )
        if allowed is not None:
            extra = extra[positions_in(allowed, extra) >= 0][: max(1, k // 10)]
        return np.concatenate([found, extra[~np.isin(extra, found)]])

    # -- scoring -------------------------------------------------------------------------------
    def _customer_part(self, u: np.ndarray, heads: tuple[str, ...]) -> dict[str, CustomerPart]:
        t = self.tables
        return self.net.customer_part(
            customer_features(t, u), customer_prior(t, u), customer_history(t, u), heads
        )

    def _product_part(self, i: np.ndarray | None, heads: tuple[str, ...] = HEADS) -> dict[str, ProductPart]:
        """Precomputed product halves of positions `i` (-1 = unknown), or of the whole catalog, for
        `heads` only (a pick-only ranking gathers no rating-head rows for its candidates)."""
        if i is None:
            return {h: p.take(slice(0, -1)) for h, p in self._prod.items() if h in heads}
        idx = np.where(i < 0, self.n_products, i)
        return {h: p.take(idx) for h, p in self._prod.items() if h in heads}

    def _check_items(self, items) -> np.ndarray | None:
        if items is None:
            return None
        items = np.asarray(items, np.int64).reshape(-1)
        if len(items) and (items.min() < -1 or items.max() >= self.n_products):
            raise ValueError(f"product positions must be in -1..{self.n_products - 1}")
        return items

    def pairs(self, u: np.ndarray, items: np.ndarray | None = None, aligned: bool = False) -> PairSignals:
        """The pair signals `score` (grid) or, `aligned`, `score_pairs` reads, with the kNN term when
        the ranking uses it: computed once, they serve both heads (the co-rating pass is the costly
        part of a request, whatever the number of products asked)."""
        u = np.asarray(u, np.int64).reshape(-1)
        if aligned:
            return pair_signals(self.tables, u, np.asarray(items, np.int64).reshape(-1), self.ranking.shrink)
        return pair_signals_grid(self.tables, u, self._check_items(items), self.ranking.shrink)

    def _pairs_each(self, u: np.ndarray, items: Sequence[np.ndarray], most: int) -> list[PairSignals | None]:
        """`self.pairs(u[r:r + 1], items[r])` for each customer row r with at most `most` items, from
        one aligned pass over those rows (each customer's co-rating rows read once, not one call per
        customer); None for a longer row (a filtered request served "exact" from a wide category),
        which `_rank` computes alone: the chunk was sized for `most` items a customer."""
        short = [r for r, x in enumerate(items) if len(x) <= most]
        sizes = [len(items[r]) for r in short]
        out: list[PairSignals | None] = [None] * len(items)
        if not short:
            return out
        rows = self.pairs(np.repeat(u[short], sizes), np.concatenate([items[r] for r in short]), aligned=True)
        cuts = np.cumsum([0, *sizes])
        for r, a, b in zip(short, cuts[:-1], cuts[1:]):
            out[r] = rows.take((None, slice(a, b)))  # (1, rows of customer r, ...): a grid's shape
        return out

    def score(
        self,
        u: np.ndarray,
        items: np.ndarray | None = None,
        heads: tuple[str, ...] = HEADS,
        pairs: PairSignals | None = None,
        halves: dict[str, CustomerPart] | None = None,
    ) -> Heads:
        """THE scoring function: customers `u` (positions, -1 = unknown) x `items` (product
        positions, -1 = unknown; the same for every customer) or the whole catalog when None.
        Returns Heads(rating, logit, knn), each (len(u), m); heads not in `heads` come back None,
        knn too unless the ranking uses it and the pick head is asked for. `pairs`: `self.pairs(u,
        items)`, `halves`: `self._customer_part(u, heads)`, when already computed.
        Work is proportional to len(u) x m: candidates never touch the rest of the catalog."""
        u, items = np.asarray(u, np.int64).reshape(-1), self._check_items(items)
        m = self.n_products if items is None else len(items)
        shrink = self.ranking.shrink if "pick" in heads else None
        out = {h: np.zeros((len(u), m), np.float32) for h in heads}
        knn = np.zeros((len(u), m), np.float32) if shrink is not None else None
        prod = self._product_part(items, heads)
        step = max(1, PASS_ROWS // max(m, 1))
        for s in range(0, len(u), step):
            uu = u[s : s + step]
            if halves is None:
                c = self._customer_part(uu, heads)
            else:
                c = {h: halves[h].take(slice(s, s + step)) for h in heads}
            if pairs is None:
                pair = pair_signals_grid(self.tables, uu, items, shrink)
            else:
                pair = pairs.take(slice(s, s + step))
            if knn is not None:
                knn[s : s + step] = pair.knn
            for a in range(0, m, PASS_ROWS):
                b = min(a + PASS_ROWS, m)
                p = {h: v.take(slice(a, b)) for h, v in prod.items()}
                res = self.net.forward(c, p, pair.features[:, a:b], heads)
                for h, v in zip(HEADS, res):
                    if v is not None:
                        out[h][s : s + step, a:b] = v
        return Heads(out.get("rating"), out.get("pick"), knn)

    def score_pairs(
        self, u: np.ndarray, i: np.ndarray, heads: tuple[str, ...] = HEADS, pairs: PairSignals | None = None
    ) -> Heads:
        """`score` for aligned rows (u[k], i[k]) (-1 = unknown): the same forward pass with one
        product per customer row; each head (n,). `pairs`: `self.pairs(u, i, aligned=True)`."""
        u, i = np.asarray(u, np.int64).reshape(-1), self._check_items(i)
        shrink = self.ranking.shrink if "pick" in heads else None
        out = {h: np.zeros(len(u), np.float32) for h in heads}
        knn = np.zeros(len(u), np.float32) if shrink is not None else None
        for s in range(0, len(u), PASS_ROWS):
            uu, ii = u[s : s + PASS_ROWS], i[s : s + PASS_ROWS]
            p = {h: v.aligned() for h, v in self._product_part(ii, heads).items()}
            if pairs is None:
                pair = pair_signals(self.tables, uu, ii, shrink)
            else:
                end = s + PASS_ROWS
                pair = pairs.take(slice(s, end))
            if knn is not None:
                knn[s : s + PASS_ROWS] = pair.knn
            # a customer's half once however many of its rows there are (a batch's rows repeat each
            # customer once per candidate): the towers and the history mean are the costly part
            once, row_of = np.unique(uu, return_inverse=True)
            c = {h: v.take(row_of) for h, v in self._customer_part(once, heads).items()}
            res = self.net.forward(c, p, pair.features[:, None, :], heads)
            for h, v in zip(HEADS, res):
                if v is not None:
                    out[h][s : s + PASS_ROWS] = v[:, 0]
        return Heads(out.get("rating"), out.get("pick"), knn)

    def predict(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Predicted ratings (1–5) for aligned customer/product positions (-1 = unknown)."""
        return np.clip(self.score_pairs(u, i, heads=("rating",)).rating, 1.0, 5.0)

    def heads_for_customers(self, u: np.ndarray, max_rows: int = MAX_ROWS):
        """Yield (customer chunk, its Heads over the catalog); chunks bound the memory used."""
        u = np.asarray(u)
        step = max(1, max_rows // max(self.n_products, 1))
        for s in range(0, len(u), step):
            uu = u[s : s + step]
            yield uu, self.score(uu)

    def score_customers(self, u: np.ndarray) -> np.ndarray:
        """(len(u), n_products) ranking scores (`self.ranking`, the artifact's rule)."""
        chunks = [self.ranking.score(heads) for _, heads in self.heads_for_customers(u)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.n_products), np.float32)

    # -- serving -------------------------------------------------------------------------------
    def _item(
        self,
        i: int,
        score: float,
        rating: float | None,
        cold: bool,
        strategy: str,
        path: str,
        because: dict | None = None,
    ) -> dict:
        return {
            "product_id": str(self.tables.product_ids[i]),
            "score": round(float(score), 6),
            "predicted_rating": None if rating is None else round(float(rating), 4),
            "title": self._titles[i],
            "image": self._images[i],
            "cold_start": cold,
            "strategy": strategy,
            "path": path,
            **({} if because is None else {"because": because}),
        }

    def _popular_items(self, top: int, allowed: np.ndarray | None = None) -> list[dict]:
        """The `top` most popular products (of `allowed`, sorted positions, when given)."""
        if allowed is None:
            pos = self._popular[:top]
        else:
            k = min(top, len(allowed))
            rank = self._popular_rank[allowed]
            part = np.argpartition(rank, k - 1)[:k] if 0 < k < len(allowed) else np.arange(k)
            pos = allowed[part[np.argsort(rank[part])]]
        counts = self.tables.prod_count
        return [
            self._item(int(i), counts[i], None, True, "popularity", "popularity", popular_reason())
            for i in pos
        ]

    # -- reasons -------------------------------------------------------------------------------
    def _unit_content(self, i: np.ndarray) -> np.ndarray:
        """Rows `i` of the content vectors at unit length (zero rows stay zero)."""
        c = self.content.exact
        return c.vectors[i] * c.inv_norm[i, None]

    def because(self, u: int, items: np.ndarray) -> list[dict]:
        """`because` of each item (positions) for customer position `u`: up to REASONS of the products
        the customer rated at least REASON_MIN_RATING in training, most similar to the item by content
        (cosine of the content vectors), best first; an item is never its own reason, and a rated
        product with similarity <= 0 supports nothing. One (rated x items) matrix product."""
        t = self.tables
        a, b = t.rated_indptr[u], t.rated_indptr[u + 1]
        rated, stars = t.rated_indices[a:b].astype(np.int64), t.rated_rating[a:b]
        liked = stars >= REASON_MIN_RATING
        rated, stars = rated[liked], stars[liked]
        items = np.asarray(items, np.int64)
        if not len(rated) or not len(items):
            return [{"method": REASON_METHOD, "products": []} for _ in items]
        sim = self._unit_content(rated) @ self._unit_content(items).T  # (R, k)
        sim[rated[:, None] == items[None, :]] = -np.inf
        k = min(REASONS, len(rated))
        best = (
            np.argpartition(-sim, k - 1, axis=0)[:k]
            if k < len(rated)
            else np.broadcast_to(np.arange(len(rated))[:, None], sim.shape)
        )
        vals = np.take_along_axis(sim, best, 0)
        order = np.lexsort((rated[best], -vals), axis=0)
        best, vals = np.take_along_axis(best, order, 0), np.take_along_axis(vals, order, 0)
        # plain Python values, each rated product's fields once: the lists below are built holding
        # the GIL, which a batch's threads share (ml.parallel)
        ids = [str(x) for x in t.product_ids[rated]]
        titles = [self._titles[i] for i in rated.tolist()]
        stars = stars.astype(float).tolist()
        return [
            {
                "method": REASON_METHOD,
                "products": [
                    {"product_id": ids[r], "title": titles[r], "similarity": round(v, 4), "rating": stars[r]}
                    for r, v in zip(rs, vs)
                    if v > 0
                ],
            }
            for rs, vs in zip(best.T.tolist(), vals.T.tolist())
        ]

    # -- filters -------------------------------------------------------------------------------
    def _filtered_candidates(
        self, u: int, allowed: np.ndarray, top: int, exclude_seen: bool
    ) -> tuple[np.ndarray, str]:
        """What to score for customer `u` within `allowed` (sorted positions) and the path it is.
        Exact serving, or at most k = max(retrieval_k, top) allowed products: all of them ("exact").
        Two-stage ("two_stage"), k candidates that pass the filter: by one pass over the allowed
        products' retrieval vectors (`Retriever.candidates_in`) when that is the cheaper way (see
        FILTER_SCAN_COST), else from the index asked for k x n_products / len(allowed), and all
        allowed products when fewer than `top` of those pass. Seen products are removed when
        `exclude_seen` (the retriever's before its cut)."""
        seen = self.seen(u) if exclude_seen else None
        k = max(self.serving.retrieval_k, top)
        if self.two_stage and len(allowed) > k:
            if len(allowed) ** 2 <= FILTER_SCAN_COST * k * self.n_products:
                found = self.retriever.candidates_in(u, k, allowed, seen)
                return self._with_knn_best(u, found, k, seen, allowed), "two_stage"
            ask = int(min(self.n_products, np.ceil(k * self.n_products / len(allowed))))
            cand = self.retriever.candidates(u, ask, seen)
            kept = cand[positions_in(allowed, cand) >= 0][:k]
            if len(kept) >= top:
                return self._with_knn_best(u, kept, k, seen, allowed), "two_stage"
        return without_positions(allowed, seen), "exact"

    def allowed(self, filters: Filters | None) -> np.ndarray | None:
        """Sorted positions of the products `filters` keep, None for every product (see ml.catalog).
        Raises ml.catalog.UnknownCategory for a category no product is under."""
        return self.catalog.allowed(filters)

    # -- ranking -------------------------------------------------------------------------------
    def _mask_seen(self, score: np.ndarray, u: np.ndarray, items: np.ndarray | None) -> None:
        """Set the scores of products each customer rated in training to -inf (in place)."""
        for row, uu in enumerate(u):
            seen = self.seen(int(uu))
            if items is None:
                score[row, seen] = -np.inf
            else:  # items: sorted unique positions
                at = np.minimum(np.searchsorted(items, seen), len(items) - 1)
                score[row, at[items[at] == seen]] = -np.inf

    def _top(
        self,
        u: np.ndarray,
        items: np.ndarray | None,
        top: int,
        exclude_seen: bool,
        path: str,
        reasons: bool = True,
    ) -> list[list[dict]]:
        """Best `top` of `items` (sorted unique positions; None = catalog) for each known customer
        row of `u`, best first, ties by product position; with their `because` when `reasons`."""
        return self._present(u, self._rank(u, items, top, exclude_seen), [path] * len(u), reasons)

    def _rank(
        self,
        u: np.ndarray,
        items: np.ndarray | None,
        top: int,
        exclude_seen: bool,
        halves: dict[str, CustomerPart] | None = None,
        pairs: PairSignals | None = None,
    ) -> Ranked:
        """Each customer row's best `top` of `items` (see `_top`), not yet presented; `halves`,
        `pairs`: the customer halves and pair signals of `u` x `items` when the caller holds them
        (see `score`)."""
        pos = np.arange(self.n_products) if items is None else items
        k = min(top, len(pos))
        if k == 0:
            return Ranked.empty()
        pairs = self.pairs(u, items) if pairs is None else pairs
        heads = self.score(u, items, heads=self.ranking.heads, pairs=pairs, halves=halves)
        score = self.ranking.score(heads)
        if exclude_seen:
            self._mask_seen(score, u, items)
        part = np.argpartition(-score, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(score, part, 1)
        order = np.lexsort((pos[part], -vals), axis=-1)
        cols = np.take_along_axis(part, order, 1)
        vals = np.take_along_axis(vals, order, 1)
        keep = np.isfinite(vals)
        rows, cols = np.nonzero(keep)[0], cols[keep]
        rating = None if heads.rating is None else heads.rating[rows, cols]
        return Ranked(rows, pos[cols], vals[keep], pairs.features[rows, cols], rating)

    def _rank_each(self, u: np.ndarray, items: Sequence[np.ndarray], top: int, exclude_seen: bool) -> Ranked:
        """`_rank` of each customer row u[r] over its own `items[r]` (sorted unique positions), as
        its single request ranks them: one grid forward a customer (chosen over one aligned-rows
        forward of all of them: 4.86 against 5.83 ms a customer, 100k SYNTHETIC catalog, 200
        customers, alternated). The customer halves (towers, history means) are computed once for
        all the rows, and so are the pair signals of the rows with at most max(retrieval_k, top)
        items (`_pairs_each`); same catalog, alternated: 6.60 -> 6.00 ms a customer with the halves,
        then 4.87 -> 4.20 with the pair signals (another run, the machine's speed having moved)."""
        halves = self._customer_part(u, self.ranking.heads)
        pairs = self._pairs_each(u, items, max(self.serving.retrieval_k, top))
        return Ranked.stacked(
            [
                self._rank(
                    u[r : r + 1],
                    x,
                    top,
                    exclude_seen,
                    {h: v.take(slice(r, r + 1)) for h, v in halves.items()},
                    pairs[r],
                )
                for r, x in enumerate(items)
            ]
        )

    def _present(
        self, u: np.ndarray, ranked: Ranked, paths: Sequence[str], reasons: bool
    ) -> list[list[dict]]:
        """The items of `ranked` (rows of customers `u`) as served, with the predicted rating (the
        rating head run once over all the items shown when the ranking did not need it) and, when
        `reasons`, their `because`; `paths[r]`: how row r's candidates were found."""
        rating = ranked.rating
        if rating is None:  # rating head only for the items shown
            shown = PairSignals(ranked.pair_features, None)
            rating = self.score_pairs(u[ranked.rows], ranked.best, heads=("rating",), pairs=shown).rating
        rating = np.clip(rating, 1.0, 5.0)
        bounds = np.searchsorted(ranked.rows, np.arange(len(u) + 1))
        out: list[list[dict]] = []
        for r in range(len(u)):
            a, b = bounds[r], bounds[r + 1]
            best = ranked.best[a:b]
            why = self.because(int(u[r]), best) if reasons else [None] * (b - a)
            out.append(
                [
                    self._item(int(i), s, rt, False, "hybrid", paths[r], w)
                    for i, s, rt, w in zip(best, ranked.vals[a:b], rating[a:b], why)
                ]
            )
        return out

    def recommend(
        self,
        customer_id: str,
        top: int = 10,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
        filters: Filters | None = None,
        reasons: bool = True,
    ) -> list[dict]:
        """Top `top` products for `customer_id`, best first. See COLD_START_DOC for unknown customers.

        `candidates`: product positions to rank; None ranks the retriever's candidates when serving is
        two-stage (`two_stage`), else the whole catalog. Seen products are removed before the cut.
        `filters` (ml.catalog.Filters) keep products under a category / up to a price, applied before
        the cut, so `top` items come back when that many pass. Each item's `path` says which served
        it: "exact" (the whole, or the whole filtered, catalog), "two_stage" (retrieval + rerank),
        "candidates" (given by the caller) or "popularity" (cold start); its `because` why (see
        `because`; `reasons=False` leaves it out of the ranked items, for benchmarks)."""
        if top < 1:
            raise ValueError("top must be at least 1")
        allowed = self.allowed(filters)
        if customer_id not in self._customer_index:
            return self._popular_items(top, allowed)
        u = int(self._customer_index.get_loc(customer_id))
        path = "candidates"
        if candidates is not None:
            items = np.unique(self._check_items(candidates))
            if len(items) and items[0] < 0:
                raise ValueError("candidates must be product positions (>= 0)")
            if allowed is not None:
                items = items[np.isin(items, allowed, assume_unique=True)]
        elif allowed is not None or self.two_stage:
            items, path = self._candidates_of(np.array([u]), allowed, top, exclude_seen)[0]
        else:
            items, path = None, "exact"
        return self._top(np.array([u]), items, top, exclude_seen, path, reasons)[0]

    def _candidates_of(
        self, u: np.ndarray, allowed: np.ndarray | None, top: int, exclude_seen: bool
    ) -> list[tuple[np.ndarray, str]]:
        """(sorted candidate positions, path) of each customer of `u` when serving is filtered or
        two-stage: a single request's and a batch's, the index asked once for all of `u`."""
        if allowed is not None:
            picked = [self._filtered_candidates(int(x), allowed, top, exclude_seen) for x in u]
        else:
            picked = [(c, "two_stage") for c in self.retrieve_many(u, top, exclude_seen)]
        return [(np.unique(c), path) for c, path in picked]

    def recommend_many(
        self,
        customer_ids: list[str],
        top: int = 10,
        exclude_seen: bool = True,
        filters: Filters | None = None,
        reasons: bool = True,
    ) -> list[list[dict]]:
        """`recommend` for many customers, in chunks of customers run side by side in up to
        `serving.threads` threads, each on one CPU (`ml.parallel.map_on_cpus`); the chunks running
        at once score at most MAX_ROWS rows together (a customer scores n_products rows, or
        max(retrieval_k, top) when two-stage; a filtered customer served "exact" from more allowed
        products than MAX_ROWS is scored alone: `_chunks`). Exact serving scores a chunk as one
        matrix; two-stage asks the index once for a chunk's candidates (`retrieve_many`) and ranks
        each customer's as its single request does (`_rank_each`). Unknown customers get the
        popularity list. `filters` as in `recommend`, the same for every customer."""
        if top < 1:
            raise ValueError("top must be at least 1")
        allowed = self.allowed(filters)
        out: list[list[dict]] = [
            self._popular_items(top, allowed) if c not in self._customer_index else [] for c in customer_ids
        ]
        known = [k for k, c in enumerate(customer_ids) if c in self._customer_index]
        u = np.array([self._customer_index.get_loc(customer_ids[k]) for k in known], np.int64)
        shared = allowed is not None and (
            not self.two_stage or len(allowed) <= max(self.serving.retrieval_k, top)
        )
        if shared:
            width = len(allowed)
        else:
            width = max(self.serving.retrieval_k, top) if self.two_stage else self.n_products
        chunks, threads = _chunks(len(known), width, self.serving.threads)
        lists = map_on_cpus(
            lambda rows: self._serve_chunk(u[rows], allowed, shared, top, exclude_seen, reasons),
            chunks,
            threads,
        )
        for rows, served in zip(chunks, lists):
            for r, items in zip(rows, served):
                out[known[r]] = items
        return out

    def _serve_chunk(
        self,
        u: np.ndarray,
        allowed: np.ndarray | None,
        shared: bool,
        top: int,
        exclude_seen: bool,
        reasons: bool,
    ) -> list[list[dict]]:
        """One chunk of `recommend_many`: exact over the `allowed` products when `shared` (a filter
        keeping few), else two-stage (within `allowed`) or exact as the serving path says."""
        if shared:
            return self._top(u, allowed, top, exclude_seen, "exact", reasons)
        if self.two_stage:
            found = self._candidates_of(u, allowed, top, exclude_seen)
            ranked = self._rank_each(u, [items for items, _ in found], top, exclude_seen)
            return self._present(u, ranked, [path for _, path in found], reasons)
        return self._top(u, None, top, exclude_seen, "exact", reasons)

    # -- similar products ----------------------------------------------------------------------
    @property
    def similarity(self) -> dict:
        """How `similar` measures: cosine of the content vectors, which modalities they hold, the index."""
        return {"method": SIMILAR_METHOD, "modalities": list(self.modalities), "index": self.content.kind}

    def title(self, product_id: str) -> str:
        """A product's title ("" when it has none). Raises UnknownProduct."""
        if not isinstance(product_id, str) or product_id not in self._product_index:
            raise UnknownProduct(f"unknown product {str(product_id)[:80]!r}")
        return self._titles[int(self._product_index.get_loc(product_id))]

    def rated(self, customer_id: str, limit: int = 20) -> list[dict]:
        """The products `customer_id` rated (in training, and by feedback folded in since), with their
        ratings: the most recent first (the history the model keeps), then the rest by rating, best
        first. [] for an unknown customer. What a person needs to judge the recommendations."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        u = self._customer_index.get_indexer([customer_id])[0]
        if u < 0:
            return []
        t = self.tables
        a, b = int(t.rated_indptr[u]), int(t.rated_indptr[u + 1])
        stars = dict(zip(t.rated_indices[a:b].tolist(), t.rated_rating[a:b].tolist()))
        recent = [int(x) - 1 for x in t.cust_history[u][::-1] if x > 0 and int(x) - 1 in stars]
        rest = sorted(set(stars) - set(recent), key=lambda i: (-stars[i], i))
        return [
            {
                "product_id": str(t.product_ids[i]),
                "rating": float(stars[i]),
                "title": self._titles[i],
                "image": self._images[i],
            }
            for i in (recent + rest)[:limit]
        ]

    def similar(self, product_id: str, top: int = 10) -> list[dict]:
        """The `top` products nearest to `product_id` by content (cosine of the image/text vectors
        the hybrid is given), most similar first; never the product itself, nor one without content
        (a product without content has no neighbours). Raises UnknownProduct."""
        if top < 1:
            raise ValueError("top must be at least 1")
        self.title(product_id)  # known?
        pos, sims = self.content.neighbours(int(self._product_index.get_loc(product_id)), top)
        return [
            {
                "product_id": str(self.tables.product_ids[i]),
                "similarity": round(float(v), 4),
                "title": self._titles[i],
                "image": self._images[i],
            }
            for i, v in zip(pos, sims)
        ]
