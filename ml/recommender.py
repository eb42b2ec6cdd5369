"""The serving object: load an artifact directory once, then score every product for a customer.

Scoring is vectorised: the product half of the network is computed once at load time for the whole
catalog; a request computes the customer half (one row) and the pair head over all products in one
batch. The same code scores customers for offline evaluation (`score_customers`, `predict`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ml.features import (FeatureTables, cooc_all, customer_features, pair_features, customer_history, customer_prior, product_features, product_id_input,
                         product_prior)
from ml.model import ModelSpec, build_model, ranking_score
from ml.registry import read_manifest

COLD_START_DOC = (
    "Unknown customers get the most popular products (training-rating count, ties broken by mean "
    "rating), flagged cold_start=true and strategy='popularity'."
)


class Recommender:
    """Top-N recommendations from a trained hybrid model artifact."""

    def __init__(self, path: Path, manifest: dict, tables: FeatureTables, model, seen_u: np.ndarray,
                 seen_i: np.ndarray, products: list[dict]) -> None:
        self.path = path
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
        self._prod_part = model.product_part(product_features(tables, all_i), product_id_input(tables, all_i),
                                             product_prior(tables, all_i), training=False)
        mean_rating = tables.prod_rating_sum / np.maximum(tables.prod_count, 1)
        self._popular = np.lexsort((all_i, -mean_rating, -tables.prod_count))

    @classmethod
    def load(cls, path: str | Path) -> "Recommender":
        path = Path(path)
        manifest = read_manifest(path)
        tables = FeatureTables.load(path / "tables.npz")
        model = build_model(ModelSpec.from_dict(manifest["spec"]))
        model.load_weights(path / "model.weights.h5")
        with np.load(path / "interactions.npz") as z:
            seen_u, seen_i = z["u"].astype(np.int64), z["i"].astype(np.int64)
        products = json.loads((path / "products.json").read_text())
        return cls(path, manifest, tables, model, seen_u, seen_i, products)

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

    # -- scoring -------------------------------------------------------------------------------
    def _heads(self, u: np.ndarray, i: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rating, interaction logit) for rows (u, i), or for every product when i is None."""
        from keras import ops

        cpart = self.model.customer_part(customer_features(self.tables, u), customer_prior(self.tables, u),
                                         customer_history(self.tables, u), training=False)
        if i is None:
            n, p = len(u), self.n_products
            c = {k: ops.repeat(v, p, axis=0) for k, v in cpart.items()}
            pp = {k: ops.tile(v, (n,) + (1,) * (len(v.shape) - 1)) for k, v in self._prod_part.items()}
        else:
            c = cpart
            pp = {k: ops.take(v, np.maximum(i, 0), axis=0) for k, v in self._prod_part.items()}
            if (np.asarray(i) < 0).any():  # unknown products: score from the "unknown" id and no features
                ii = np.asarray(i)
                unk = self.model.product_part(product_features(self.tables, ii), product_id_input(self.tables, ii),
                                              product_prior(self.tables, ii))
                known = np.asarray(i) >= 0
                pp = {k: ops.where(known.reshape((-1,) + (1,) * (len(v.shape) - 1)), v, unk[k]) for k, v in pp.items()}
        pair = cooc_all(self.tables, np.asarray(u)) if i is None else pair_features(self.tables, u, i)
        out = self.model.pair_part(c, pp, pair, training=False)
        return np.asarray(ops.convert_to_numpy(out["rating"])), np.asarray(ops.convert_to_numpy(out["interact"]))

    def predict(self, u: np.ndarray, i: np.ndarray, batch: int = 65536) -> np.ndarray:
        """Predicted ratings (1–5) for aligned customer/product positions (-1 = unknown)."""
        u, i = np.asarray(u), np.asarray(i)
        out = [np.clip(self._heads(u[s:s + batch], i[s:s + batch])[0], 1.0, 5.0) for s in range(0, len(u), batch)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def heads_for_customers(self, u: np.ndarray, max_rows: int = 400_000):
        """Yield (customer chunk, rating (n, P), logit (n, P)); chunks bound the memory used."""
        u = np.asarray(u)
        step = max(1, max_rows // max(self.n_products, 1))
        for s in range(0, len(u), step):
            uu = u[s:s + step]
            rating, logit = self._heads(uu)
            yield uu, rating.reshape(len(uu), self.n_products), logit.reshape(len(uu), self.n_products)

    def score_customers(self, u: np.ndarray, rating_weight: float | None = None) -> np.ndarray:
        """(len(u), n_products) ranking scores."""
        w = self.rating_weight if rating_weight is None else rating_weight
        chunks = [ranking_score(r, l, w) for _, r, l in self.heads_for_customers(u)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.n_products), np.float32)

    # -- serving -------------------------------------------------------------------------------
    def _item(self, i: int, score: float, rating: float, cold: bool, strategy: str) -> dict:
        return {
            "product_id": str(self.tables.product_ids[i]),
            "score": round(float(score), 6),
            "predicted_rating": None if rating is None else round(float(rating), 4),
            "title": self._titles[i],
            "image": self._images[i],
            "cold_start": cold,
            "strategy": strategy,
        }

    def recommend(self, customer_id: str, top: int = 10, exclude_seen: bool = True) -> list[dict]:
        """Top `top` products for `customer_id`, best first. See COLD_START_DOC for unknown customers."""
        if top < 1:
            raise ValueError("top must be at least 1")
        if customer_id not in self._customer_index:
            idx = self._popular[:top]
            counts = self.tables.prod_count
            return [self._item(int(i), counts[i], None, True, "popularity") for i in idx]
        u = int(self._customer_index.get_loc(customer_id))
        rating, logit = self._heads(np.array([u]))
        score = ranking_score(rating, logit, self.rating_weight)
        if exclude_seen:
            score[self.seen(u)] = -np.inf
        k = min(top, int(np.isfinite(score).sum()))
        if k == 0:
            return []
        cand = np.argpartition(-score, k - 1)[:k]
        best = cand[np.lexsort((cand, -score[cand]))]
        rating = np.clip(rating, 1.0, 5.0)
        return [self._item(int(i), score[i], rating[i], False, "hybrid") for i in best]
