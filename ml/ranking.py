"""How the hybrid orders a customer's products, and how training chooses that order on validation.

    score = sigmoid(pick logit + knn_weight · kNN(u, j)) × (predicted rating on a 0–1 scale) ** rating_weight

- pick logit: the pick head, trained to tell a customer's rated products from sampled unrated ones;
- kNN(u, j) = Σ over the customer's rated products i of C(i, j) / (sqrt(n_i·n_j) + knn_shrink), the
  shrunk item-kNN score (`ml.baselines.ItemKNN`), computed from the same co-rating entries as the pair
  features (`ml.features.pair_signals_grid`). The pick head sees co-rating counts as inputs, but trained
  against 8 random negatives per positive it learns to tell a rated product from a random one, not
  to order the few hundred plausible ones at the top of a catalog, which is what the neighbour sum
  does well; adding it at the logit scale keeps the content signal for products without co-ratings
  (their kNN is 0) and lets co-ratings decide among the rest;
- the rating factor favours what the customer would rate highly.

`choose_ranking` picks both weights on validation ratings (every customer's latest training rating)
scored from tables built without them (the kNN term from every co-rating but the customer's own of
the product to find), so no score reads the rating it is asked to find; a weight
other than 0 is taken only when its validation NDCG beats weight 0 beyond noise (paired-bootstrap 95%
interval above 0), since the best of a grid is often best by luck. Why the two weights are chosen on
different shares of those ratings: see `choose_ranking`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ml.features import FeatureTables, held_out_knn_grid, knn_grid
from ml.metrics import csr_from_pairs, paired_bootstrap, ranking_metrics
from ml.scoring import Heads

if TYPE_CHECKING:
    from ml.recommender import Recommender

RATING_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)
# kNN weights in units of (spread of the pick logits / spread of the kNN scores) over the validation
# customers x catalog, so the grid means the same on any data; shrinkages as ml.baselines.ItemKNN's.
KNN_WEIGHTS = (0.5, 1.0, 2.0)
KNN_SHRINKS = (10.0, 50.0, 200.0)


def ranking_score(
    rating: np.ndarray,
    pick_logit: np.ndarray,
    rating_weight: float = 1.0,
    knn: np.ndarray | None = None,
    knn_weight: float = 0.0,
) -> np.ndarray:
    """sigmoid(pick logit + knn_weight · knn) × (predicted rating on a 0–1 scale) ** rating_weight.

    Evaluated in one buffer, step by step as the formula reads (the ranking choice scores ~40M pairs
    a rule: 2-4x faster than temporaries for each step); the same values bit for bit, in the
    formula's dtype (tests/test_ranking.py). Rating weight 0 multiplies by nothing (x · 1 = x)."""
    if knn is None or knn_weight == 0:
        z = np.clip(pick_logit, -30, 30)
    else:
        z = knn_weight * knn
        z = z.astype(np.result_type(pick_logit, z), copy=False)
        z += pick_logit
        np.clip(z, -30, 30, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    z += 1.0
    p = np.reciprocal(z, out=z)
    if rating_weight == 0:
        return p.astype(np.result_type(p, rating), copy=False)
    return p * ((np.clip(rating, 1.0, 5.0) - 0.5) / 4.5) ** rating_weight


@dataclass(frozen=True)
class RankingRule:
    """The weights of `ranking_score`, as training chose them (the manifest's "ranking")."""

    rating_weight: float = 0.0
    knn_weight: float = 0.0
    knn_shrink: float = KNN_SHRINKS[1]

    @classmethod
    def from_manifest(cls, manifest: dict) -> RankingRule:
        """The artifact's rule; weights an older artifact does not name are 0 (its own ranking)."""
        ranking = manifest.get("ranking", {})
        return cls(
            float(ranking.get("rating_weight", 0.0)),
            float(ranking.get("knn_weight", 0.0)),
            float(ranking.get("knn_shrink", KNN_SHRINKS[1])),
        )

    @property
    def heads(self) -> tuple[str, ...]:
        """The network heads the ranking needs (with weight 0 any rating gives the factor 1)."""
        return ("rating", "pick") if self.rating_weight != 0 else ("pick",)

    @property
    def shrink(self) -> float | None:
        """The kNN shrinkage when the ranking uses kNN, else None (nothing to compute)."""
        return self.knn_shrink if self.knn_weight != 0 else None

    def score(self, heads: Heads) -> np.ndarray:
        """Ranking scores from the heads (`heads.knn` needed when knn_weight is not 0)."""
        rating = heads.rating if heads.rating is not None else np.ones_like(heads.logit)
        return ranking_score(rating, heads.logit, self.rating_weight, heads.knn, self.knn_weight)


def _head(rec: Recommender, users: np.ndarray, head: str) -> np.ndarray:
    """(len(users), P) scores of one network head, in chunks of customers."""
    parts = [rec.score(users[a : a + 256], heads=(head,)) for a in range(0, len(users), 256)]
    return np.concatenate([h.logit if head == "pick" else h.rating for h in parts])


@dataclass
class _Validation:
    """Validation customers' whole-catalog pick logits (and kNN scores of one shrinkage at a time,
    predicted ratings when asked), the ratings to find, and NDCG@k of any rule over them. With
    `full` (the tables of every rating) the kNN scores come from its co-ratings, each customer's
    own co-ratings of its validation product `held` left out (`held_out_knn_grid`)."""

    rec: Recommender
    users: np.ndarray
    logit: np.ndarray
    exclude: object
    relevant: object
    k: int
    full: FeatureTables | None = None
    held: np.ndarray | None = None  # each customer's validation product (with `full`)
    rating: np.ndarray | None = None
    knn: np.ndarray | None = None  # of knn_shrink
    knn_shrink: float | None = None
    row: dict = field(init=False, repr=False)  # customer position -> row of the arrays

    def __post_init__(self) -> None:
        self.row = {int(c): n for n, c in enumerate(self.users)}

    @classmethod
    def of(
        cls, rec: Recommender, users: np.ndarray, exclude, relevant, k: int, full: FeatureTables | None = None
    ) -> _Validation:
        held = None
        if full is not None:  # one validation product per customer (their latest rating)
            at = relevant.indptr[users]
            if not np.all(relevant.indptr[users + 1] - at == 1):
                raise ValueError("kNN from the full co-ratings needs one validation rating per customer")
            held = relevant.indices[at].astype(np.int64)
        return cls(rec, users, _head(rec, users, "pick"), exclude, relevant, k, full, held)

    def subset(self, users: np.ndarray) -> _Validation:
        """These customers (some of `users`), with their predicted ratings too."""
        at = np.array([self.row[int(c)] for c in users], np.int64)
        held = None if self.held is None else self.held[at]
        v = _Validation(self.rec, users, self.logit[at], self.exclude, self.relevant, self.k, self.full, held)
        v.rating = _head(self.rec, users, "rating")
        if self.knn is not None:
            v.knn, v.knn_shrink = self.knn[at], self.knn_shrink
        return v

    def _knn_grid(self, rows: slice, shrink: float) -> np.ndarray:
        u = self.users[rows]
        if self.full is None:
            return knn_grid(self.rec.tables, u, shrink)
        return held_out_knn_grid(self.full, self.rec.tables, u, self.held[rows], shrink)

    def with_knn(self, shrink: float) -> _Validation:
        if self.knn_shrink != shrink:
            n = len(self.users)
            self.knn = np.concatenate([self._knn_grid(slice(a, a + 256), shrink) for a in range(0, n, 256)])
            self.knn_shrink = shrink
        return self

    def ndcg(self, rule: RankingRule) -> np.ndarray:
        """Per-customer NDCG@k of `rule`."""

        def score(cs):
            at = [self.row[int(c)] for c in cs]
            rating = self.rating[at] if rule.rating_weight else np.ones((len(at), 1), np.float32)
            knn = self.with_knn(rule.knn_shrink).knn[at] if rule.knn_weight else None
            return ranking_score(rating, self.logit[at], rule.rating_weight, knn, rule.knn_weight)

        n = self.rec.n_products
        m = ranking_metrics(score, self.users, self.exclude, self.relevant, n, k=self.k, per_customer=True)
        return m[f"ndcg@{self.k}"]


def _best(
    v: _Validation,
    base: RankingRule,
    rules: Iterable[RankingRule],
    seed: int,
    base_ndcg: np.ndarray | None = None,
) -> tuple[RankingRule, dict, dict]:
    """The rule of `rules` with the best mean validation NDCG, or `base` unless it wins beyond noise;
    (rule, mean NDCG of each, margin of the best over base). Rules are evaluated in the order given
    (rules that share a kNN shrinkage together: each kNN grid is computed once); `base_ndcg`: base's,
    when already known."""
    base_ndcg = v.ndcg(base) if base_ndcg is None else base_ndcg
    results = {r: v.ndcg(r) for r in rules}
    best = max(results, key=lambda r: results[r].mean())
    margin = paired_bootstrap(results[best], base_ndcg, seed=seed)
    means = {base: float(base_ndcg.mean()), **{r: float(x.mean()) for r, x in results.items()}}
    return (best if margin["ci95"][0] > 0 else base), means, margin


def _knn_rules(v: _Validation, unit: dict) -> Iterable[RankingRule]:
    """The kNN rules, shrinkage by shrinkage: each shrinkage's grid is loaded into `v` once and its
    unit (the pick logits' spread over the kNN scores', so that weights mean the same on any data)
    written into `unit` before its rules are given."""
    spread = float(v.logit.std())
    for s in KNN_SHRINKS:
        unit[s] = spread / max(float(v.with_knn(s).knn.std()), 1e-12)
        yield from (RankingRule(0.0, w * unit[s], s) for w in KNN_WEIGHTS)


def choose_ranking(
    rec: Recommender,
    fit_u: np.ndarray,
    fit_i: np.ndarray,
    val_u: np.ndarray,
    val_i: np.ndarray,
    unseen: np.ndarray,
    seed: int = 0,
    max_rows: int = 40_000_000,
    k: int = 10,
    full: FeatureTables | None = None,
) -> dict:
    """The manifest's "ranking", by NDCG@k of the validation ratings (val_u, val_i) ranked among every
    product the customer had not rated in (fit_u, fit_i). `rec` must score from tables built from
    (fit_u, fit_i) only: scores that read the validation ratings would reward whatever leaks them.
    `full`: the tables of every rating (one validation rating per customer); the kNN scores then
    count every other customer's co-ratings, as serving does (`ml.features.held_out_knn_grid`).

    First the kNN term (weight and shrinkage, rating weight 0) on every validation rating: its gain
    is small per customer, and a few hundred customers cannot tell it from noise. Some of these
    ratings were positives in the network's training (`unseen` marks those it never trained on);
    the network scores those too well, which favours the rule without kNN: a bias against adopting
    the term, never for it. Then the rating weight, with that kNN term, on the `unseen` ratings only:
    the rating head predicts its own training ratings too well, which would favour the rating factor.
    Customers are capped so that customers x catalog stays within `max_rows` scores."""
    if not len(val_u):
        return {"rating_weight": 0.0, "knn_weight": 0.0, "chosen_by": "default (no validation ratings)"}
    n_c, n_p = rec.tables.n_customers, rec.n_products
    exclude, relevant = csr_from_pairs(fit_u, fit_i, n_c), csr_from_pairs(val_u, val_i, n_c)
    cap = max(50, max_rows // max(n_p, 1))
    users = np.random.default_rng(seed).permutation(np.unique(val_u))[:cap]
    v = _Validation.of(rec, users, exclude, relevant, k, full)
    none = v.ndcg(RankingRule())
    if not len(none):
        return {
            "rating_weight": 0.0,
            "knn_weight": 0.0,
            "chosen_by": "default (no rankable validation ratings)",
        }
    unit: dict = {}
    with_knn, knn_means, knn_margin = _best(v, RankingRule(), _knn_rules(v, unit), seed, base_ndcg=none)
    honest = users[np.isin(users, val_u[unseen])]
    h = v.with_knn(with_knn.knn_shrink).subset(honest)
    del v
    rating_rules = [RankingRule(w, with_knn.knn_weight, with_knn.knn_shrink) for w in RATING_WEIGHTS[1:]]
    chosen, rating_means, rating_margin = (
        _best(h, with_knn, rating_rules, seed) if len(honest) else (with_knn, {}, {})
    )
    return {
        "rating_weight": chosen.rating_weight,
        "knn_weight": chosen.knn_weight,
        "knn_shrink": chosen.knn_shrink,
        "chosen_by": f"validation ndcg@{k}, scored from tables without the validation ratings; "
        "a weight other than 0 only when it beats 0 beyond noise",
        "knn_customers": int(len(users)),
        "rating_customers": int(len(honest)),
        "knn_unit": {str(s): round(u, 4) for s, u in unit.items()},
        f"val_ndcg@{k}_knn": {
            f"{r.knn_weight / unit[r.knn_shrink] if r.knn_weight else 0.0:g}x shrink {r.knn_shrink:g}": round(
                m, 5
            )
            for r, m in knn_means.items()
        },
        "knn_best_minus_none": knn_margin,
        f"val_ndcg@{k}": {str(r.rating_weight): round(m, 5) for r, m in rating_means.items()},
        "best_minus_weight_0": rating_margin,
    }
