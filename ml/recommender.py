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
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ml.features import (FeatureTables, customer_features, customer_history, customer_prior, pair_features,
                         pair_grid, product_features, product_id_input, product_prior)
from ml.config import Settings
from ml.model import ModelSpec, build_model, ranking_score
from ml.registry import read_manifest
from ml.retrieval import Retriever
from ml.scoring import HEADS, Heads, ProductPart, ScoringNet

COLD_START_DOC = (
    "Unknown customers get the most popular products (training-rating count, ties broken by mean "
    "rating), flagged cold_start=true and strategy='popularity'."
)
PASS_ROWS = 65_536  # (customer, product) rows per forward pass: bounds the hidden activations' memory
MAX_ROWS = 400_000  # customers x products scored per chunk of recommend_many (bounds its memory)


@dataclass(frozen=True)
class ServingPath:
    """When serving is two-stage: above `exact_max_products` products, and only with a retriever,
    a known customer's `retrieval_k` best candidates (seen products removed before the cut) are
    reranked by the heads; otherwise the whole catalog is scored exactly."""

    retrieval_k: int = Settings.retrieval_k
    exact_max_products: int = Settings.exact_max_products

    @classmethod
    def from_settings(cls, settings: Settings) -> "ServingPath":
        return cls(settings.retrieval_k, settings.exact_max_products)


class Recommender:
    """Top-N recommendations from a trained hybrid model artifact."""

    def __init__(self, path: Path, manifest: dict, tables: FeatureTables, model, seen_u: np.ndarray,
                 seen_i: np.ndarray, products: list[dict], retriever: Retriever | None = None,
                 serving: ServingPath = ServingPath()) -> None:
        self.path = path
        self.retriever = retriever
        self.serving = serving
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.rating_weight: float = float(manifest.get("ranking", {}).get("rating_weight", 0.0))
        self.tables = tables
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
        with_unknown = np.append(all_i, -1)  # row P: the "unknown product" (position -1)
        self._prod = self.net.product_part(product_features(tables, with_unknown), product_id_input(tables, with_unknown),
                                           product_prior(tables, with_unknown))
        all_i = np.arange(tables.n_products)
        mean_rating = tables.prod_rating_sum / np.maximum(tables.prod_count, 1)
        self._popular = np.lexsort((all_i, -mean_rating, -tables.prod_count))

    @classmethod
    def load(cls, path: str | Path, settings: Settings | None = None) -> "Recommender":
        """The artifact at `path`, with its retriever when it has one; `settings` choose the serving
        path (default: the environment's)."""
        path = Path(path)
        manifest = read_manifest(path)
        tables = FeatureTables.load(path / "tables.npz")
        model = build_model(ModelSpec.from_dict(manifest["spec"]))
        model.load_weights(path / "model.weights.h5")
        with np.load(path / "interactions.npz") as z:
            seen_u, seen_i = z["u"].astype(np.int64), z["i"].astype(np.int64)
        products = json.loads((path / "products.json").read_text())
        retriever = Retriever.load(path) if Retriever.exists(path) else None
        serving = ServingPath.from_settings(settings or Settings.from_env())
        return cls(path, manifest, tables, model, seen_u, seen_i, products, retriever, serving)

    # -- lookups -------------------------------------------------------------------------------
    @property
    def n_products(self) -> int:
        return self.tables.n_products

    def has_customer(self, customer_id: str) -> bool:
        return customer_id in self._customer_index

    def customers(self, limit: int = 20) -> list[str]:
        """Known customers, most active first (useful to try the API)."""
        order = np.lexsort((self.tables.customer_ids, -self.tables.cust_count))
        return [str(c) for c in self.tables.customer_ids[order[: max(limit, 0)]]]

    def seen(self, u: int) -> np.ndarray:
        return self._seen_i[self._seen_start[u]: self._seen_start[u + 1]]

    def with_serving(self, serving: ServingPath) -> "Recommender":
        """The same loaded model served by another path (shares every array): benchmarks and
        tests compare exact and two-stage on one load."""
        other = copy.copy(self)
        other.serving = serving
        return other

    @property
    def two_stage(self) -> bool:
        """Whether known customers are served by retrieval + rerank (see ServingPath)."""
        return self.retriever is not None and self.n_products > self.serving.exact_max_products

    def retrieve(self, u: int, top: int, exclude_seen: bool = True) -> np.ndarray:
        """The retriever's candidates for customer position `u`: max(retrieval_k, top) products,
        seen ones removed before the cut (so `top` items come back when the catalog has them)."""
        exclude = self.seen(u) if exclude_seen else None
        return self.retriever.candidates(u, max(self.serving.retrieval_k, top), exclude)

    # -- scoring -------------------------------------------------------------------------------
    def _customer_part(self, u: np.ndarray, heads: tuple[str, ...]) -> dict:
        t = self.tables
        return self.net.customer_part(customer_features(t, u), customer_prior(t, u), customer_history(t, u), heads)

    def _product_part(self, i: np.ndarray | None) -> dict[str, ProductPart]:
        """Precomputed product halves of positions `i` (-1 = unknown), or of the whole catalog."""
        if i is None:
            return {h: ProductPart(p.q[:-1], p.bias[:-1]) for h, p in self._prod.items()}
        idx = np.where(i < 0, self.n_products, i)
        return {h: p.take(idx) for h, p in self._prod.items()}

    def _check_items(self, items) -> np.ndarray | None:
        if items is None:
            return None
        items = np.asarray(items, np.int64).reshape(-1)
        if len(items) and (items.min() < -1 or items.max() >= self.n_products):
            raise ValueError(f"product positions must be in -1..{self.n_products - 1}")
        return items

    def score(self, u: np.ndarray, items: np.ndarray | None = None, heads: tuple[str, ...] = HEADS) -> Heads:
        """THE scoring function: customers `u` (positions, -1 = unknown) x `items` (product
        positions, -1 = unknown; the same for every customer) or the whole catalog when None.
        Returns Heads(rating, logit), each (len(u), m); heads not in `heads` come back None.
        Work is proportional to len(u) x m: candidates never touch the rest of the catalog."""
        u, items = np.asarray(u, np.int64).reshape(-1), self._check_items(items)
        m = self.n_products if items is None else len(items)
        out = {h: np.zeros((len(u), m), np.float32) for h in heads}
        prod = self._product_part(items)
        step = max(1, PASS_ROWS // max(m, 1))
        for s in range(0, len(u), step):
            uu = u[s:s + step]
            c, pair = self._customer_part(uu, heads), pair_grid(self.tables, uu, items)
            for a in range(0, m, PASS_ROWS):
                b = min(a + PASS_ROWS, m)
                p = {h: ProductPart(v.q[a:b], v.bias[a:b]) for h, v in prod.items()}
                res = self.net.forward(c, p, pair[:, a:b], heads)
                for h, v in zip(HEADS, res):
                    if v is not None:
                        out[h][s:s + step, a:b] = v
        return Heads(out.get("rating"), out.get("interact"))

    def score_pairs(self, u: np.ndarray, i: np.ndarray, heads: tuple[str, ...] = HEADS) -> Heads:
        """`score` for aligned rows (u[k], i[k]) (-1 = unknown): the same forward pass with one
        product per customer row; each head (n,)."""
        u, i = np.asarray(u, np.int64).reshape(-1), self._check_items(i)
        out = {h: np.zeros(len(u), np.float32) for h in heads}
        for s in range(0, len(u), PASS_ROWS):
            uu, ii = u[s:s + PASS_ROWS], i[s:s + PASS_ROWS]
            p = {h: ProductPart(v.q[:, None, :], v.bias[:, None]) for h, v in self._product_part(ii).items()}
            pair = pair_features(self.tables, uu, ii)[:, None, :]
            res = self.net.forward(self._customer_part(uu, heads), p, pair, heads)
            for h, v in zip(HEADS, res):
                if v is not None:
                    out[h][s:s + PASS_ROWS] = v[:, 0]
        return Heads(out.get("rating"), out.get("interact"))

    def predict(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Predicted ratings (1–5) for aligned customer/product positions (-1 = unknown)."""
        return np.clip(self.score_pairs(u, i, heads=("rating",)).rating, 1.0, 5.0)

    def heads_for_customers(self, u: np.ndarray, max_rows: int = MAX_ROWS):
        """Yield (customer chunk, rating (n, P), logit (n, P)); chunks bound the memory used."""
        u = np.asarray(u)
        step = max(1, max_rows // max(self.n_products, 1))
        for s in range(0, len(u), step):
            uu = u[s:s + step]
            yield (uu, *self.score(uu))

    def score_customers(self, u: np.ndarray, rating_weight: float | None = None) -> np.ndarray:
        """(len(u), n_products) ranking scores."""
        w = self.rating_weight if rating_weight is None else rating_weight
        chunks = [ranking_score(r, l, w) for _, r, l in self.heads_for_customers(u)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.n_products), np.float32)

    # -- serving -------------------------------------------------------------------------------
    def _item(self, i: int, score: float, rating: float | None, cold: bool, strategy: str, path: str) -> dict:
        return {
            "product_id": str(self.tables.product_ids[i]),
            "score": round(float(score), 6),
            "predicted_rating": None if rating is None else round(float(rating), 4),
            "title": self._titles[i],
            "image": self._images[i],
            "cold_start": cold,
            "strategy": strategy,
            "path": path,
        }

    def _popular_items(self, top: int) -> list[dict]:
        counts = self.tables.prod_count
        return [self._item(int(i), counts[i], None, True, "popularity", "popularity") for i in self._popular[:top]]

    def _ranking(self, heads: Heads) -> np.ndarray:
        """Ranking scores from the heads; with rating weight 0 the rating head is not needed
        (any rating gives the factor 1), so it may be None."""
        rating = heads.rating if heads.rating is not None else np.ones_like(heads.logit)
        return ranking_score(rating, heads.logit, self.rating_weight)

    def _mask_seen(self, score: np.ndarray, u: np.ndarray, items: np.ndarray | None) -> None:
        """Set the scores of products each customer rated in training to -inf (in place)."""
        for row, uu in enumerate(u):
            seen = self.seen(int(uu))
            if items is None:
                score[row, seen] = -np.inf
            else:  # items: sorted unique positions
                at = np.minimum(np.searchsorted(items, seen), len(items) - 1)
                score[row, at[items[at] == seen]] = -np.inf

    def _top(self, u: np.ndarray, items: np.ndarray | None, top: int, exclude_seen: bool, path: str) -> list[list[dict]]:
        """Best `top` of `items` (sorted unique positions; None = catalog) for each known customer
        row of `u`, best first, ties by product position."""
        pos = np.arange(self.n_products) if items is None else items
        k = min(top, len(pos))
        if k == 0:
            return [[] for _ in u]
        need = HEADS if self.rating_weight != 0 else ("interact",)
        heads = self.score(u, items, heads=need)
        score = self._ranking(heads)
        if exclude_seen:
            self._mask_seen(score, u, items)
        part = np.argpartition(-score, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(score, part, 1)
        order = np.lexsort((pos[part], -vals), axis=-1)
        cols = np.take_along_axis(part, order, 1)
        vals = np.take_along_axis(vals, order, 1)
        keep = np.isfinite(vals)
        rows, best = np.nonzero(keep)[0], pos[cols[keep]]
        if heads.rating is None and len(u) == 1:  # rating head only for the items shown
            rating = self.score(u, best, heads=("rating",)).rating[0]
        elif heads.rating is None:
            rating = self.score_pairs(u[rows], best, heads=("rating",)).rating
        else:
            rating = heads.rating[rows, cols[keep]]
        rating = np.clip(rating, 1.0, 5.0)
        out: list[list[dict]] = [[] for _ in u]
        for r, i, s, rt in zip(rows, best, vals[keep], rating):
            out[r].append(self._item(int(i), s, rt, False, "hybrid", path))
        return out

    def recommend(self, customer_id: str, top: int = 10, exclude_seen: bool = True,
                  candidates: np.ndarray | None = None) -> list[dict]:
        """Top `top` products for `customer_id`, best first. See COLD_START_DOC for unknown customers.

        `candidates`: product positions to rank; None ranks the retriever's candidates when serving is
        two-stage (`two_stage`), else the whole catalog. Seen products are removed before the cut.
        Each item's `path` says which served it: "exact" (whole catalog), "two_stage" (retrieval +
        rerank), "candidates" (given by the caller) or "popularity" (cold start)."""
        if top < 1:
            raise ValueError("top must be at least 1")
        if customer_id not in self._customer_index:
            return self._popular_items(top)
        u = int(self._customer_index.get_loc(customer_id))
        path = "candidates"
        if candidates is None and self.two_stage:
            candidates, path = self.retrieve(u, top, exclude_seen), "two_stage"
        items = None if candidates is None else np.unique(self._check_items(candidates))
        if items is not None and len(items) and items[0] < 0:
            raise ValueError("candidates must be product positions (>= 0)")
        return self._top(np.array([u]), items, top, exclude_seen, "exact" if items is None else path)[0]

    def recommend_many(self, customer_ids: list[str], top: int = 10, exclude_seen: bool = True) -> list[list[dict]]:
        """`recommend` for many customers, the known ones scored as matrices in chunks of
        customers (chunk x n_products <= MAX_ROWS, or x retrieval_k when two-stage); unknown
        customers get the popularity list."""
        if top < 1:
            raise ValueError("top must be at least 1")
        out: list[list[dict]] = [self._popular_items(top) if c not in self._customer_index else []
                                 for c in customer_ids]
        known = [k for k, c in enumerate(customer_ids) if c in self._customer_index]
        u = np.array([self._customer_index.get_loc(customer_ids[k]) for k in known], np.int64)
        width = max(self.serving.retrieval_k, top) if self.two_stage else self.n_products
        step = max(1, MAX_ROWS // max(width, 1))
        for s in range(0, len(known), step):
            uu = u[s:s + step]
            if self.two_stage:
                lists = self._top_of_candidates(uu, [self.retrieve(int(x), top, exclude_seen) for x in uu], top)
            else:
                lists = self._top(uu, None, top, exclude_seen, "exact")
            for k, items in zip(known[s:s + step], lists):
                out[k] = items
        return out

    def _top_of_candidates(self, u: np.ndarray, candidates: list[np.ndarray], top: int) -> list[list[dict]]:
        """Best `top` of each customer's own candidates (seen ones already removed), all customers in
        one aligned-rows forward pass (`score_pairs`): the batch form of the two-stage path."""
        lengths = np.array([len(c) for c in candidates])
        rows = np.repeat(u, lengths)
        items = np.concatenate(candidates).astype(np.int64) if len(candidates) else np.zeros(0, np.int64)
        heads = self.score_pairs(rows, items, heads=HEADS if self.rating_weight != 0 else ("interact",))
        score = self._ranking(heads)
        picked, starts = [], np.concatenate([[0], np.cumsum(lengths)])
        for a, b in zip(starts[:-1], starts[1:]):
            picked.append(a + np.lexsort((items[a:b], -score[a:b]))[:top])
        best = np.concatenate(picked) if picked else np.zeros(0, np.int64)
        rating = heads.rating[best] if heads.rating is not None else \
            self.score_pairs(rows[best], items[best], heads=("rating",)).rating
        rating = np.clip(rating, 1.0, 5.0)
        out, at = [], 0
        for sel in picked:
            out.append([self._item(int(items[j]), score[j], rating[at + n], False, "hybrid", "two_stage")
                        for n, j in enumerate(sel)])
            at += len(sel)
        return out
