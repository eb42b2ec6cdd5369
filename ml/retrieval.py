"""Retrieval stage: a two-tower model distilled from the pick head, and an ANN index over its
product vectors, so a request reranks K candidates instead of scoring the whole catalog.

Student score = v_c · v_p + b_p, where b_p is the pick head's own additive product bias (learned
offset + popularity slope), carried exactly as the last coordinate: product vector [v_p, b_p],
customer vector [v_c, 1]. The towers only learn the rest of the teacher's logit, the interaction.

Tower inputs are the hybrid's features plus the pick head's own customer/product halves (its
tower outputs and the product-id embedding, which is the shared "unknown" one for never-rated
products), so a never-rated product gets a vector from its content alone.

Training is distillation after the hybrid is fitted: for each training customer the teacher
(a callable `(customer positions, product positions or None) -> logits`) scores a pool of
products; the student is fitted with a softmax KL loss over the teacher's top-M unseen products
plus random ones. Customer vectors are computed once for every known customer (features are
fixed per artifact), so a request is a row lookup and one index query: no Keras call.

Written with keras.ops only (TensorFlow and JAX). No Flask or Celery imports.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ml.features import (
    FeatureTables,
    customer_features,
    customer_history,
    customer_prior,
    product_features,
    product_id_input,
    product_prior,
)
from ml.parallel import cpus, one_blas_thread
from ml.scoring import inverse_norms

log = logging.getLogger(__name__)

RETRIEVAL_DIR = "retrieval"
Teacher = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]
MASKED = -1e9  # teacher logit of a product that must not be retrieved (already seen)


@dataclass
class RetrievalConfig:
    """Two-tower and index hyper-parameters; recorded in the manifest."""

    dim: int = 32
    hidden: int = 128
    top_m: int = 50  # teacher's best unseen products per training customer
    n_random: int = 50  # plus this many random products (the softmax's background)
    max_customers: int = 2000  # distillation customers (sampled), 20% of them held out
    holdout: float = 0.2
    pool: int = 20000  # larger catalogs: the teacher scores this many products per chunk
    min_steps: int = 150  # gradient steps at least (small worlds repeat their lists), at most
    # max_epochs passes over large ones. The student was under-trained at 20: on the 100k bench
    # catalog (content-affinity teacher), held-out recall@10 in 1,000 candidates 0.936 at 20, 0.964 at
    # 40 and 0.974 at 80 passes (distillation 108 / 123 / 159 s)
    max_epochs: int = 80
    batch: int = 64
    learning_rate: float = 3e-3
    temperature: float = 1.0
    bias_net: int = 20  # up to k/10 candidates are the top products by the additive bias alone
    index_min_products: int = 20000  # below it the "index" is exact numpy top-k
    hnsw_m: int = 16  # graph degree
    hnsw_ef_construction: int = 100
    hnsw_ef_factor: float = 1.5  # a query for k explores max(1.5 k, 64) nodes
    seed: int = 0
    recall_ks: tuple[int, ...] = field(default=(10, 100, 500, 1000, 2000))
    recall_rows: int = 20_000_000  # held-out recall scores whole catalogs: at most this many rows


# -- teacher ------------------------------------------------------------------------------------


def teacher_from_recommender(rec) -> Teacher:
    """The pick head's logits (`Recommender.score`, pick head only) as a teacher callable."""

    def by_score(u: np.ndarray, items: np.ndarray | None) -> np.ndarray:
        return np.asarray(rec.score(np.asarray(u), items, heads=("pick",)).logit, np.float32)

    return by_score


def pick_parts(model, tables: FeatureTables, batch: int = 65536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer inputs (C, Dc'), product inputs (P, Dp'), product bias b_p (P,)) from the features
    and the fitted pick head's own halves (`PickHead.customer_part` / `product_part`)."""
    from keras import ops

    net = model.pick_net

    def np_(x):
        return np.asarray(ops.convert_to_numpy(x), np.float32)

    cust = []
    for s in range(0, tables.n_customers, batch):
        u = np.arange(s, min(s + batch, tables.n_customers))
        f = customer_features(tables, u)
        part = net.customer_part(f, customer_prior(tables, u), customer_history(tables, u), training=False)
        cust.append(
            np.concatenate([f, np_(part["t"]), np_(part["e"]), *_affinity_input(part, len(u))], axis=1)
        )
    prod, bias = [], []
    for s in range(0, tables.n_products, batch):
        i = np.arange(s, min(s + batch, tables.n_products))
        f = product_features(tables, i)
        part = net.product_part(f, product_id_input(tables, i), product_prior(tables, i), training=False)
        prod.append(
            np.concatenate([f, np_(part["t"]), np_(part["e"]), *_affinity_input(part, len(i))], axis=1)
        )
        bias.append(np_(part["b"]).reshape(-1))
    return np.concatenate(cust), np.concatenate(prod), np.concatenate(bias)


def _affinity_input(part: dict, n: int) -> list[np.ndarray]:
    """The head's unit content vectors (`ml.model.HeadNet`, content affinity) as (n, ·) tower inputs,
    or nothing: the teacher ranks by cosines of them, which towers over the raw (standardised)
    features had to learn to normalise (at 100k products, held-out recall@10 in 1,000 candidates
    0.919 without them, 0.936 with them, at the same 500 steps)."""
    if "a" not in part:
        return []
    from keras import ops

    return [np.asarray(ops.convert_to_numpy(part["a"]), np.float32).reshape(n, -1)]


def _seen_rows(tables: FeatureTables, u: np.ndarray) -> list[np.ndarray]:
    return [tables.rated_indices[tables.rated_indptr[c] : tables.rated_indptr[c + 1]] for c in u]


def distill_targets(
    teacher: Teacher,
    tables: FeatureTables,
    u: np.ndarray,
    bias: np.ndarray,
    cfg: RetrievalConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(product positions (n, M), teacher logits (n, M)) per customer: the teacher's top-M unseen
    products and random ones (seen ones get MASKED). Catalogs above `cfg.pool` are scored on a
    fresh pool per chunk: the top products by bias plus uniform random ones."""
    n_p = tables.n_products
    m = min(cfg.top_m + cfg.n_random, n_p)
    top_m = min(cfg.top_m, m)
    chunk = max(1, 400_000 // min(n_p, cfg.pool))
    by_bias = np.argsort(-bias, kind="stable")[: cfg.pool // 4]
    items_out, logits_out = [], []
    for s in range(0, len(u), chunk):
        uu = u[s : s + chunk]
        if n_p <= cfg.pool:
            pool = None
            cols = np.arange(n_p)
        else:
            cols = np.union1d(by_bias, rng.choice(n_p, cfg.pool - len(by_bias), replace=False))
            pool = cols
        logits = np.array(teacher(uu, pool), np.float32)
        pos = {int(p): j for j, p in enumerate(cols)} if pool is not None else None
        for r, seen in enumerate(_seen_rows(tables, uu)):
            idx = seen if pos is None else np.array([pos[int(p)] for p in seen if int(p) in pos], np.int64)
            logits[r, idx.astype(np.int64)] = MASKED
        best = (
            np.argpartition(-logits, top_m - 1, axis=1)[:, :top_m]
            if top_m < logits.shape[1]
            else np.tile(np.arange(logits.shape[1]), (len(uu), 1))[:, :top_m]
        )
        rand = rng.integers(0, logits.shape[1], size=(len(uu), m - top_m))
        pick = np.concatenate([best, rand], axis=1)
        items_out.append(cols[pick])
        logits_out.append(np.take_along_axis(logits, pick, axis=1))
    return np.concatenate(items_out), np.concatenate(logits_out)


# -- the two-tower student (Keras) --------------------------------------------------------------


def build_two_tower(cust_dim: int, prod_dim: int, cfg: RetrievalConfig):
    """Keras model: inputs customer (B, Dc), product (B, M, Dp), bias (B, M) -> logits (B, M)."""
    import keras
    from keras import layers, ops

    @keras.saving.register_keras_serializable(package="ml")
    class TwoTower(keras.Model):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            init = keras.initializers.GlorotUniform(seed=cfg.seed)
            self.cust = keras.Sequential(
                [
                    layers.Dense(cfg.hidden, activation="relu", kernel_initializer=init),
                    layers.Dense(cfg.dim, kernel_initializer=init),
                ],
                name="customer_tower",
            )
            self.prod = keras.Sequential(
                [
                    layers.Dense(cfg.hidden, activation="relu", kernel_initializer=init),
                    layers.Dense(cfg.dim, kernel_initializer=init),
                ],
                name="product_tower",
            )

        def call(self, inputs):
            vc = self.cust(inputs["customer"])
            vp = self.prod(inputs["product"])
            return ops.sum(vc[:, None, :] * vp, axis=-1) + inputs["bias"]

    model = TwoTower()
    model(
        {
            "customer": np.zeros((1, cust_dim), np.float32),
            "product": np.zeros((1, 1, prod_dim), np.float32),
            "bias": np.zeros((1, 1), np.float32),
        }
    )
    return model


def make_distill_loss(temperature: float):
    """Softmax KL (cross-entropy against the teacher's distribution) over each customer's list;
    MASKED teacher entries are dropped from both distributions."""
    from keras import ops

    def loss(teacher_logits, student_logits):
        keep = ops.cast(teacher_logits > MASKED / 2, "float32")
        t = ops.where(keep > 0, teacher_logits / temperature, MASKED)
        s = ops.where(keep > 0, student_logits / temperature, MASKED)
        p = ops.softmax(t, axis=-1)
        return -ops.mean(ops.sum(p * ops.log_softmax(s, axis=-1) * keep, axis=-1))

    return loss


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    std = x.std(0)
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def _tower_np(layers_w: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Dense(relu) -> Dense in numpy, from [W1, b1, W2, b2]."""
    w1, b1, w2, b2 = layers_w
    return (np.maximum(x @ w1 + b1, 0.0) @ w2 + b2).astype(np.float32)


def _in_batches(fn, x: np.ndarray, batch: int = 65536) -> np.ndarray:
    return np.concatenate([fn(x[s : s + batch]) for s in range(0, len(x), batch)]) if len(x) else x


# -- the index ----------------------------------------------------------------------------------


class ExactIndex:
    """Brute-force inner-product top-k in numpy (small catalogs, and the reference)."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(vectors, np.float32)

    def params(self) -> dict:
        return {}

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        scores = self.vectors @ q
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top], kind="stable")]

    def search_many(self, q: np.ndarray, k: int) -> np.ndarray:
        """(len(q), k) `search` of each row of `q`."""
        return np.stack([self.search(row, k) for row in q]) if len(q) else np.zeros((0, k), np.int64)

    def save(self, path: Path) -> None:
        pass  # the vectors are saved by the Retriever

    @classmethod
    def load(cls, path: Path, vectors: np.ndarray, params: dict) -> ExactIndex:
        return cls(vectors)


MIN_BEAM = 64  # the narrowest HNSW search beam (hnswlib's ef), whatever the number of results


class HnswIndex:
    """hnswlib HNSW graph over the product vectors, for inner product through the usual MIPS-to-L2
    reduction: x -> [x, sqrt(R^2 - |x|^2)], q -> [q, 0], so the nearest in L2 is the best in inner
    product. (Chosen by measurement, bench/catalog.py `ann`: at 1M vectors, k=1000, 1.6 ms a query
    with 0.999 recall; HNSW on the raw inner product reached 0.56 recall, faiss IVF needed 7 ms.)"""

    kind = "hnswlib_hnsw_l2"

    def __init__(self, index, ef_factor: float) -> None:
        self.index = index
        self.ef_factor = ef_factor
        # set once, never per query: a query's beam is its number of results (see search_many)
        index.set_ef(MIN_BEAM)

    @staticmethod
    def _augment(vectors: np.ndarray) -> np.ndarray:
        norms = (vectors.astype(np.float64) ** 2).sum(1)
        extra = np.sqrt(np.maximum(norms.max() - norms, 0.0))
        return np.concatenate([vectors, extra[:, None]], axis=1).astype(np.float32)

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        m: int = 16,
        ef_construction: int = 100,
        ef_factor: float = 1.5,
        seed: int = 0,
        threads: int = -1,
    ) -> HnswIndex:
        import hnswlib

        x = cls._augment(vectors)
        index = hnswlib.Index(space="l2", dim=x.shape[1])
        index.init_index(max_elements=len(x), ef_construction=ef_construction, M=m, random_seed=seed)
        index.set_num_threads(threads)
        index.add_items(x, np.arange(len(x)))
        return cls(index, ef_factor)

    def params(self) -> dict:
        return {
            "M": int(self.index.M),
            "ef_construction": int(self.index.ef_construction),
            "ef_factor": self.ef_factor,
        }

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.search_many(q[None], k)[0]

    def search_many(self, q: np.ndarray, k: int) -> np.ndarray:
        """(len(q), k) best products of each row of `q`, searched with a beam of max(k x ef_factor,
        MIN_BEAM): a row's answer depends on k alone, never on the other rows, so a batch finds what
        single requests find. The beam is asked as the number of results (hnswlib searches with
        max(ef, k)) rather than by set_ef, which would be shared state between threads serving
        requests at once; the first k of them are the answer. hnswlib spreads a call's queries over
        `ml.parallel.cpus()` when there are more than 4 per CPU."""
        count = self.index.get_current_count()
        k = int(min(k, count))
        beam = int(min(max(k * self.ef_factor, MIN_BEAM, k), count))
        x = np.concatenate([q, np.zeros((len(q), 1))], axis=1).astype(np.float32)
        labels, _ = self.index.knn_query(x, k=beam, num_threads=1 if len(q) == 1 else cpus())
        return labels[:, :k].astype(np.int64)

    def save(self, path: Path) -> None:
        self.index.save_index(str(path / "index.hnsw"))

    @classmethod
    def load(cls, path: Path, vectors: np.ndarray, params: dict) -> HnswIndex:
        import hnswlib

        index = hnswlib.Index(space="l2", dim=vectors.shape[1] + 1)
        index.load_index(str(path / "index.hnsw"), max_elements=len(vectors))
        return cls(index, float(params["ef_factor"]))


INDEXES = {ExactIndex.kind: ExactIndex, HnswIndex.kind: HnswIndex}


class CosineIndex(ExactIndex):
    """Brute-force cosine top-k over rows that are not normalised: scores are (X q) / |x|, with the
    inverse norms kept instead of a unit copy of X (at 10^6 products the content matrix is
    hundreds of MB). Zero rows (no content) never come back."""

    kind = "exact_cosine"

    def __init__(self, vectors: np.ndarray) -> None:
        super().__init__(vectors)
        self.inv_norm = inverse_norms(self.vectors)
        self.empty = np.flatnonzero(self.inv_norm == 0)

    def scores(self, q: np.ndarray) -> np.ndarray:
        """Cosine of every row with `q` (any norm); -inf for zero rows."""
        norm = float(np.linalg.norm(q))
        with one_blas_thread():
            out = (self.vectors @ (q / norm if norm > 0 else q)) * self.inv_norm
        out[self.empty] = -np.inf
        return out

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        scores = self.scores(q)
        k = min(k, len(scores) - len(self.empty))
        if k <= 0:
            return np.zeros(0, np.int64)
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.lexsort((top, -scores[top]))]


class ContentIndex:
    """Nearest products by content (the image/text blocks the hybrid is given), cosine similarity:
    the serving side of "similar products". Exact below `hnsw_min` rows (`CosineIndex`); from there
    an `HnswIndex` over the unit rows (inner product of unit vectors = cosine), as for retrieval."""

    def __init__(
        self, content: np.ndarray, hnsw_min: int | None = None, cfg: RetrievalConfig | None = None
    ) -> None:
        self.exact = CosineIndex(content)
        self.index = self.exact
        if hnsw_min is not None and len(content) >= hnsw_min:
            cfg = cfg or RetrievalConfig()
            unit = self.exact.vectors * self.exact.inv_norm[:, None]
            self.index = HnswIndex.build(
                unit, cfg.hnsw_m, cfg.hnsw_ef_construction, cfg.hnsw_ef_factor, cfg.seed
            )

    @property
    def kind(self) -> str:
        return self.index.kind

    def has_content(self, i: int) -> bool:
        return bool(self.exact.inv_norm[i] > 0)

    def neighbours(self, i: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, cosine similarities) of the `k` products nearest to product `i`, best first
        (ties by position), never `i` itself nor a product without content; empty when `i` has none."""
        if not self.has_content(i) or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        q = self.exact.vectors[i] * self.exact.inv_norm[i]
        found = np.asarray(self.index.search(q, k + 1), np.int64)
        found = found[(found != i) & (self.exact.inv_norm[found] > 0)][:k]
        sims = (self.exact.vectors[found] @ q) * self.exact.inv_norm[found]
        order = np.lexsort((found, -sims))
        return found[order], sims[order].astype(np.float32)


def build_index(vectors: np.ndarray, cfg: RetrievalConfig):
    """The ANN index for a catalog of at least `cfg.index_min_products`, else exact top-k."""
    if len(vectors) < cfg.index_min_products:
        return ExactIndex(vectors)
    return HnswIndex.build(vectors, cfg.hnsw_m, cfg.hnsw_ef_construction, cfg.hnsw_ef_factor, cfg.seed)


# -- serving object -----------------------------------------------------------------------------


def positions_in(sorted_positions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each of `values` in `sorted_positions` (sorted, unique), -1 where absent: a binary
    search per value, so a few values against a large filter cost microseconds."""
    values = np.asarray(values, np.int64)
    if not len(sorted_positions):
        return np.full(len(values), -1, np.int64)
    at = np.minimum(np.searchsorted(sorted_positions, values), len(sorted_positions) - 1)
    return np.where(sorted_positions[at] == values, at, -1)


def without_positions(sorted_positions: np.ndarray, values: np.ndarray | None) -> np.ndarray:
    """`sorted_positions` without `values` (few)."""
    if values is None or not len(values):
        return sorted_positions
    at = positions_in(sorted_positions, values)
    return np.delete(sorted_positions, np.unique(at[at >= 0]))


# The index is asked for products in multiples of this: customers whose seen products and safety
# net differ by a few ask for the same number, so a batch asks the index once for all of them (and
# the search's beam, which follows the number asked, is the same for a customer alone or in a batch).
ASK_GRAIN = 64


def _ask(n: int, n_products: int) -> int:
    """`n` rounded up to a multiple of ASK_GRAIN, at most the catalog."""
    return int(min(-(-n // ASK_GRAIN) * ASK_GRAIN, n_products))


class Retriever:
    """Customer vector -> top-k candidate product positions (seen/excluded ones removed before the cut)."""

    def __init__(
        self, customer_vecs: np.ndarray, product_vecs: np.ndarray, index, meta: dict, bias_net: np.ndarray
    ) -> None:
        self.customer_vecs = customer_vecs
        self.product_vecs = product_vecs
        self.index = index
        self.meta = meta
        self.bias_net = bias_net  # top products by the additive bias alone, best first

    @property
    def n_products(self) -> int:
        return len(self.product_vecs)

    def candidates(
        self, u: int, k: int, exclude: np.ndarray | None = None, safety_net: bool = True
    ) -> np.ndarray:
        """k product positions (fewer only when the catalog minus `exclude` has fewer): up to k/10
        of the top products by bias alone (the safety net), then the index's best for customer `u`;
        none of them in `exclude`."""
        return self.candidates_many(np.array([u]), k, [exclude], safety_net)[0]

    def candidates_many(
        self, u: np.ndarray, k: int, excludes: list[np.ndarray | None], safety_net: bool = True
    ) -> list[np.ndarray]:
        """`candidates` of each customer of `u` (excludes[r] for u[r]), the index asked once for all
        of them that ask for the same number of products (see `_ask`): what a batch job saves
        against single requests, with the same answers."""
        if len(excludes) != len(u):
            raise ValueError(f"{len(excludes)} excludes for {len(u)} customers")
        excl = [np.unique(np.asarray([] if e is None else e, np.int64)) for e in excludes]
        ks = [int(min(k, self.n_products - len(e))) for e in excl]
        nets = [
            self.bias_net[positions_in(e, self.bias_net) < 0][: kk // 10 if safety_net else 0]
            for e, kk in zip(excl, ks)
        ]
        asks = np.array([_ask(kk + len(e) + len(n), self.n_products) for kk, e, n in zip(ks, excl, nets)])
        found: list[np.ndarray | None] = [None] * len(u)
        live = [r for r in range(len(u)) if ks[r] > 0]
        for ask in np.unique(asks[live]) if live else []:
            rows = [r for r in live if asks[r] == ask]
            labels = self.index.search_many(self.customer_vecs[np.asarray(u)[rows]], int(ask))
            for r, got in zip(rows, labels):
                found[r] = got
        return [
            np.zeros(0, np.int64)
            if ks[r] <= 0
            else self._finish(int(u[r]), ks[r], excl[r], nets[r], found[r], int(asks[r]))
            for r in range(len(u))
        ]

    def _finish(
        self, u: int, k: int, exclude: np.ndarray, net: np.ndarray, found: np.ndarray, ask: int
    ) -> np.ndarray:
        """The safety net then the index's `found` (asked for `ask`) minus `exclude` and the net, cut
        to k; the index asked again for twice as many while too few pass, the rest found exactly when
        an approximate index returns fewer than asked."""
        q = self.customer_vecs[u]
        taken = np.sort(net)  # np.isin's fixed costs held the GIL a batch's threads share (ml.parallel)
        while True:
            found = found[(positions_in(exclude, found) < 0) & (positions_in(taken, found) < 0)]
            if len(found) + len(net) >= k or ask >= self.n_products:
                break
            ask = min(ask * 2, self.n_products)
            found = np.asarray(self.index.search(q, ask), np.int64)
        out = np.concatenate([net, found])[:k]
        if len(out) < k:  # an approximate index can return fewer than asked: finish exactly
            rest = ExactIndex(self.product_vecs).search(q, self.n_products)
            rest = rest[(positions_in(exclude, rest) < 0) & (positions_in(np.sort(out), rest) < 0)]
            out = np.concatenate([out, rest[: k - len(out)]])
        return out

    def candidates_in(
        self, u: int, k: int, allowed: np.ndarray, exclude: np.ndarray | None = None
    ) -> np.ndarray:
        """`candidates` restricted to `allowed` (sorted positions; a filter), found exactly by one
        pass over their vectors instead of the index: for a filter that keeps a small share of the
        catalog, cheaper than asking the index for enough candidates that k pass. The same safety
        net (the allowed ones among the top products by bias) comes first."""
        allowed = without_positions(allowed, exclude)
        k = int(min(k, len(allowed)))
        if k <= 0:
            return np.zeros(0, np.int64)
        net = self.bias_net[positions_in(allowed, self.bias_net) >= 0][: k // 10]
        rest = without_positions(allowed, net)
        with one_blas_thread():
            scores = np.take(self.product_vecs, rest, axis=0) @ self.customer_vecs[u]
        m = k - len(net)
        best = np.argpartition(-scores, m - 1)[:m] if 0 < m < len(rest) else np.arange(min(m, len(rest)))
        best = best[np.lexsort((rest[best], -scores[best]))]
        return np.concatenate([net, rest[best]]).astype(np.int64)

    def save(self, artifact_dir: str | Path) -> None:
        path = Path(artifact_dir) / RETRIEVAL_DIR
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "customer_vecs.npy", self.customer_vecs)
        np.save(path / "product_vecs.npy", self.product_vecs)
        np.save(path / "bias_net.npy", self.bias_net)
        self.index.save(path)
        (path / "meta.json").write_text(json.dumps(self.meta, indent=2) + "\n")

    @classmethod
    def load(cls, artifact_dir: str | Path) -> Retriever:
        path = Path(artifact_dir) / RETRIEVAL_DIR
        meta = json.loads((path / "meta.json").read_text())
        product_vecs = np.load(path / "product_vecs.npy")
        index = INDEXES[meta["index"]["type"]].load(path, product_vecs, meta["index"])
        return cls(
            np.load(path / "customer_vecs.npy"), product_vecs, index, meta, np.load(path / "bias_net.npy")
        )

    @classmethod
    def exists(cls, artifact_dir: str | Path) -> bool:
        return (Path(artifact_dir) / RETRIEVAL_DIR / "meta.json").is_file()


# -- building -----------------------------------------------------------------------------------


def _fit_student(
    cust_x: np.ndarray,
    prod_x: np.ndarray,
    bias: np.ndarray,
    u: np.ndarray,
    items: np.ndarray,
    targets: np.ndarray,
    cfg: RetrievalConfig,
):
    """Fit the two towers on (customer, its M products, teacher logits) with random batches:
    `max_epochs` passes' worth, at least `min_steps`. Returns (model, steps)."""
    import keras

    keras.utils.set_random_seed(cfg.seed)
    model = build_two_tower(cust_x.shape[1], prod_x.shape[1], cfg)
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss=make_distill_loss(cfg.temperature),
        jit_compile=False,
    )  # XLA compiling takes longer than these few steps
    batch = int(min(cfg.batch, len(u)))
    steps = int(max(cfg.min_steps, cfg.max_epochs * np.ceil(len(u) / batch)))
    rows = np.random.default_rng(cfg.seed).integers(0, len(u), size=(steps, batch))
    for r in rows:  # gather per batch: materialised lists would be customers x M x Dp floats
        x = {"customer": cust_x[u[r]], "product": prod_x[items[r]], "bias": bias[items[r]]}
        model.train_on_batch(x, targets[r])
    return model, steps


def distillation_recall(
    teacher: Teacher,
    retriever: Retriever,
    tables: FeatureTables,
    u: np.ndarray,
    ks: tuple[int, ...],
    top: int = 10,
) -> dict:
    """Share of the teacher's top-`top` unseen products found among `k` retrieved candidates, per k
    (= the two-stage recall@top, since reranking with the teacher orders candidates exactly), with
    the expectation for random candidates next to it."""
    n_p = tables.n_products
    seen = _seen_rows(tables, u)
    ks = tuple(k for k in ks if k < n_p - max((len(s) for s in seen), default=0)) or (min(top, n_p),)
    hits = {k: 0 for k in ks}
    student_hits = {k: 0 for k in ks}
    random_hits = {k: 0.0 for k in ks}
    total = 0
    for s in range(0, len(u), 64):
        logits = teacher(u[s : s + 64], None)
        for r, c in enumerate(u[s : s + 64]):
            row = np.array(logits[r], np.float32)
            row[seen[s + r]] = -np.inf
            avail = int(np.isfinite(row).sum())
            t = min(top, avail)
            best = np.argpartition(-row, t - 1)[:t]
            total += t
            for k in ks:
                hits[k] += int(np.isin(best, retriever.candidates(int(c), k, seen[s + r])).sum())
                student_hits[k] += int(
                    np.isin(best, retriever.candidates(int(c), k, seen[s + r], False)).sum()
                )
                random_hits[k] += t * min(k, avail) / max(avail, 1)

    def share(h: dict) -> dict:
        return {str(k): round(h[k] / max(total, 1), 4) for k in ks}

    return {
        "customers": int(len(u)),
        f"recall@{top}_in_k": share(hits),
        f"student_only_recall@{top}_in_k": share(student_hits),
        f"random_recall@{top}_in_k": share(random_hits),
    }


def build_retriever(
    model,
    tables: FeatureTables,
    teacher: Teacher,
    cfg: RetrievalConfig | None = None,
    recall_customers: int = 500,
) -> Retriever:
    """Distil the pick head (`teacher`) into two towers, embed every customer and product, and build
    the index. `model` is the fitted HybridModel (its pick head's halves are tower inputs)."""
    cfg = cfg or RetrievalConfig()
    rng = np.random.default_rng(cfg.seed)
    started = time.perf_counter()
    cust_x, prod_x, bias = pick_parts(model, tables)
    cmean, cstd = _standardise(cust_x)
    sample = prod_x[rng.choice(len(prod_x), min(len(prod_x), 100_000), replace=False)]
    pmean, pstd = _standardise(sample)
    cust_x = (cust_x - cmean) / cstd
    prod_x = (prod_x - pmean) / pstd

    active = np.flatnonzero(tables.cust_count > 0)
    users = rng.permutation(active)[: cfg.max_customers]
    n_hold = int(round(len(users) * cfg.holdout)) if len(users) > 4 else 0
    held, fit_u = users[:n_hold], users[n_hold:]
    items, targets = distill_targets(teacher, tables, fit_u, bias, cfg, rng)
    teacher_s = time.perf_counter() - started
    student, steps = _fit_student(cust_x, prod_x, bias, fit_u, items, targets, cfg)
    fit_s = time.perf_counter() - started - teacher_s

    cw = [np.asarray(w, np.float32) for w in student.cust.get_weights()]
    pw = [np.asarray(w, np.float32) for w in student.prod.get_weights()]
    ones = np.ones((tables.n_customers, 1), np.float32)
    customer_vecs = np.concatenate([_in_batches(lambda x: _tower_np(cw, x), cust_x), ones], axis=1)
    product_vecs = np.concatenate([_in_batches(lambda x: _tower_np(pw, x), prod_x), bias[:, None]], axis=1)
    t0 = time.perf_counter()
    index = build_index(product_vecs, cfg)
    index_s = time.perf_counter() - t0
    meta = {
        "dim": cfg.dim,
        "vector_dim": int(product_vecs.shape[1]),
        "index": {"type": index.kind, **index.params()},
        "index_build_seconds": round(index_s, 2),
        "distill_seconds": round(teacher_s + fit_s, 2),
        "teacher_seconds": round(teacher_s, 2),
        "steps": steps,
        "distill_customers": int(len(fit_u)),
        "list_size": int(items.shape[1]),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }
    retriever = Retriever(
        customer_vecs,
        product_vecs,
        index,
        meta,
        np.argsort(-bias, kind="stable")[: cfg.bias_net].astype(np.int64),
    )
    n_recall = int(min(recall_customers, max(20, cfg.recall_rows // tables.n_products)))
    if len(held):
        meta["heldout"] = distillation_recall(teacher, retriever, tables, held[:n_recall], cfg.recall_ks)
    log.info("retriever: %s", meta)
    return retriever
