"""Compiled inference: the trained hybrid network evaluated in numpy from its weights.

Why: a request through Keras eager mode costs thousands of small op dispatches (55 ms p50 on the
240-product demo catalog) for arithmetic worth well under a millisecond. The weights are pulled
from the Keras model once at load (`ScoringNet.from_model`); a request is then a few BLAS matmuls.

How the first trunk layer is split (per head): its input is
x = [c_t, p_t, c_t*p_t, c_e, p_e, c_e*p_e, pair, aff], so with the kernel's row blocks W1..W8
    h1 = (c_t W1 + c_e W4 + b)  +  q @ (Wq + c[:, None] * Wx)  +  pair W7  +  aff W8,
where c = [c_t, c_e] is the customer half, q = [p_t, p_e] the product half (precomputed for the
whole catalog), Wq = [W2; W5] and Wx = [W3; W6]. Per customer that is one (K, H1) matrix applied to
every product row: no (customer, product) concatenation is ever built. aff (content affinity, when
the head takes it) is A cosines per row, one small matmul against the products' unit content.
Dropout and id dropout are inactive at inference, so they are left out. `forward` is the one
function for both call shapes: customers x candidates (q of shape (m, K)) and aligned rows (q of
shape (n, 1, K)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ml.features import PAIR_DIM
from ml.parallel import one_blas_thread

HEADS = ("rating", "pick")  # ml.model.HEADS (not imported: this module needs no Keras)
# (customer, product) rows up to which a pass runs BLAS single-threaded: below it, waking a second
# BLAS thread costs more than it saves (240 rows: 4.6 vs 0.5 ms on a busy machine); at a 7,642-product
# catalog two threads halve the pass (11.3 -> 5.6 ms, measured)
SMALL_PASS_ROWS = 4_096
# rows per block of an aligned pass: the first layer's activations of a block (rows x 128 floats)
# stay in the CPU cache between its steps; one pass over a 7,642-product catalog took 18.8 ms as a
# whole and 11.3 ms in blocks of 1,024 rows (one BLAS thread, measured)
BLOCK_ROWS = 1_024
# products per block of a customers x products pass (`HeadWeights._grid` runs each customer over a
# block): a block's inputs and activations (2,048 x ~100 and x 128 floats) stay in cache; per pair on a
# 10,000-product catalog 0.58 us in blocks of 1,024, 0.52 at 2,048, 0.50 at 4,096, 0.51 whole (measured)
GRID_BLOCK_PRODUCTS = 2_048


class Heads(NamedTuple):
    """Scores of customers x items: `rating` (predicted rating, unclipped) and `logit` (pick head),
    each (n, m); a head that was not asked for is None. `knn`: the item-kNN score the ranking adds
    (`ml.ranking`), from the co-ratings rather than the network; None when not used."""

    rating: np.ndarray | None
    logit: np.ndarray | None
    knn: np.ndarray | None = None


@dataclass
class Dense:
    """A Keras Dense layer's weights; `relu` or linear."""

    kernel: np.ndarray
    bias: np.ndarray | None
    relu: bool

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.kernel
        if self.bias is not None:
            y += self.bias
        return np.maximum(y, 0.0, out=y) if self.relu else y


def _numpy(v) -> np.ndarray:
    from keras import ops

    return np.asarray(ops.convert_to_numpy(v), np.float32)


def _dense(layer) -> Dense:
    """Weights of a Keras Dense layer; refuses activations this module does not evaluate."""
    act = getattr(layer.activation, "__name__", str(layer.activation))
    if act not in ("relu", "linear"):
        raise ValueError(f"{layer.name}: activation {act!r} is not supported by ml.scoring")
    bias = _numpy(layer.bias) if layer.use_bias else None
    return Dense(_numpy(layer.kernel), bias, act == "relu")


def _stack(seq) -> list[Dense]:
    """The Dense layers of a Keras Sequential; Dropout is the identity at inference."""
    out = []
    for layer in seq.layers:
        kind = type(layer).__name__
        if kind == "Dense":
            out.append(_dense(layer))
        elif kind != "Dropout":
            raise ValueError(f"{seq.name}: layer {kind} is not supported by ml.scoring")
    return out


def _apply(stack: list[Dense], x: np.ndarray) -> np.ndarray:
    for layer in stack:
        x = layer(x)
    return x


@dataclass
class FirstLayer:
    """The first layer over the pair input, split into the customer, product, product x customer
    and pair blocks (see the module docstring)."""

    w_ct: np.ndarray  # (T, H)
    w_ce: np.ndarray  # (D, H)
    w_q: np.ndarray  # (K, H), K = T + D
    w_x: np.ndarray  # (K, H)
    w_pair: np.ndarray  # (PAIR_DIM, H)
    w_aff: np.ndarray  # (A, H): the content affinity columns (A = 0 without them)
    bias: np.ndarray  # (H,)
    relu: bool

    @classmethod
    def split(cls, layer: Dense, t: int, d: int, n_affinity: int = 0) -> FirstLayer:
        w = layer.kernel
        expected = 3 * t + 3 * d + PAIR_DIM + n_affinity
        if w.shape[0] != expected:
            raise ValueError(f"first layer has {w.shape[0]} inputs, expected {expected}")
        blocks = np.split(w, np.cumsum([t, t, t, d, d, d, PAIR_DIM]))
        bias = layer.bias if layer.bias is not None else np.zeros(w.shape[1], np.float32)
        return cls(
            blocks[0],
            blocks[3],
            np.concatenate([blocks[1], blocks[4]]),
            np.concatenate([blocks[2], blocks[5]]),
            blocks[6],
            blocks[7],
            bias,
            layer.relu,
        )


@dataclass
class CustomerPart:
    """Customer halves of one head: c = [c_t, c_e] (n, K), the customer-only first-layer term
    (n, H), the additive bias (n,) and, with content affinity, the unit content aggregates (n, A, Dc)."""

    c: np.ndarray
    base: np.ndarray
    bias: np.ndarray
    a: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> CustomerPart:
        return CustomerPart(self.c[rows], self.base[rows], self.bias[rows], _take(self.a, rows))


@dataclass
class ProductPart:
    """Product halves of one head: q = [p_t, p_e] (m, K), the additive bias (m,) and, with content
    affinity, the content vectors as given (a, not normalised) and their inverse L2 norms (a_inv (m,),
    0 for a row without content): the cosine is (a · x) · a_inv. A unit-length copy would double the
    content in memory (288 MB at 10^6 products); `a` may be the tables' own array. It may also hold
    fewer rows than q: the rows past its end (the "unknown product" row) have a_inv 0."""

    q: np.ndarray
    bias: np.ndarray
    a: np.ndarray | None = None
    a_inv: np.ndarray | None = None

    def take(self, i) -> ProductPart:
        """Rows `i` (positions or a slice)."""
        a = None if self.a is None else _rows_of(self.a, i, len(self.bias))
        return ProductPart(self.q[i], self.bias[i], a, _take(self.a_inv, i))

    def aligned(self) -> ProductPart:
        """One product per customer row: the (n, 1, ...) shape `HeadWeights.forward` reads as aligned."""
        if self.a is None:
            return ProductPart(self.q[:, None, :], self.bias[:, None])
        a = _rows_of(self.a, slice(None), len(self.bias))
        return ProductPart(self.q[:, None, :], self.bias[:, None], a[:, None, :], self.a_inv[:, None])


def _take(x: np.ndarray | None, rows) -> np.ndarray | None:
    return None if x is None else x[rows]


def _rows_of(a: np.ndarray, i, n: int) -> np.ndarray:
    """Rows `i` (positions or a slice, of n rows) of `a`, which holds the first len(a) of them: a
    view when it can be; rows past its end come back as its last row (their a_inv is 0)."""
    if isinstance(i, slice):
        start, stop, step = i.indices(n)
        if stop <= len(a):
            return a[start:stop:step]
        i = np.arange(start, stop, step)
    return a[np.minimum(np.asarray(i), len(a) - 1)]


def inverse_norms(x: np.ndarray) -> np.ndarray:
    """float32 1 / |row| (0 for a zero row): `unit_rows(x) == x * inverse_norms(x)[:, None]`."""
    norms = np.linalg.norm(np.asarray(x, np.float32), axis=-1)
    return np.where(norms > 0, 1.0 / np.maximum(norms, 1e-30), 0.0).astype(np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """`ml.model.unit_rows` in numpy: rows at unit L2 length, zero rows stay zero."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class HeadWeights:
    """One HeadNet's weights as numpy arrays."""

    kind: str
    cust_tower: list[Dense]
    prod_tower: list[Dense]
    hist_emb: np.ndarray
    first: FirstLayer
    rest: list[Dense]  # the trunk after its first layer, then the 1-unit output
    prod_vec: Dense | None = None  # rating head
    prod_emb: np.ndarray | None = None  # pick head
    prod_off: np.ndarray | None = None
    popularity: Dense | None = None
    prod_keep: np.ndarray | None = None
    log_count: slice | None = None  # pick head: the product features' log1p(rating count) column
    wide: np.ndarray | None = None  # rating head: (PAIR_DIM,)
    mu: float = 0.0
    cust_content: list[slice] | None = None  # content affinity: the customer blocks and
    prod_content: slice | None = None  # the product block whose cosines the head takes,
    aff_wide: np.ndarray | None = None  # and their linear term (A,)

    @classmethod
    def from_net(cls, net, mu: float) -> HeadWeights:
        """Pull the weights of a built head network (`ml.model.RatingHead` or `PickHead`)."""
        trunk = _stack(net.trunk) + [_dense(net.out)]
        cust_tower, prod_tower = _stack(net.cust_tower), _stack(net.prod_tower)
        t, d = cust_tower[-1].kernel.shape[1], _numpy(net.hist_emb.embeddings).shape[1]
        w = cls(
            net.kind,
            cust_tower,
            prod_tower,
            _numpy(net.hist_emb.embeddings),
            FirstLayer.split(trunk[0], t, d, net.n_affinity),
            trunk[1:],
            mu=float(mu),
        )
        if net.n_affinity:
            w.cust_content, w.prod_content = list(net.cust_content), net.prod_content
            w.aff_wide = _dense(net.affinity).kernel[:, 0]
        if net.kind == "pick":
            w.prod_emb = _numpy(net.prod_emb.embeddings)
            w.prod_off = _numpy(net.prod_off.embeddings)[:, 0]
            w.popularity = _dense(net.popularity)
            w.prod_keep = np.asarray(net.prod_keep, np.float32)
            w.log_count = net.log_count
        else:
            w.prod_vec = _dense(net.prod_vec)
            w.wide = _dense(net.wide).kernel[:, 0]
        return w

    def customer_part(self, features: np.ndarray, prior: np.ndarray, history: np.ndarray) -> CustomerPart:
        """Tower, mean history embedding (SVD++ style) and bias of customer rows."""
        ct = _apply(self.cust_tower, features)
        mask = (history > 0).astype(np.float32)
        ce = np.einsum("nh,nhd->nd", mask, self.hist_emb[history]) / np.maximum(mask.sum(1), 1.0)[:, None]
        bias = prior if self.kind == "rating" else np.zeros_like(prior)
        base = ct @ self.first.w_ct + ce @ self.first.w_ce + self.first.bias
        a = None
        if self.cust_content:
            a = np.stack([unit_rows(features[:, s]) for s in self.cust_content], axis=1)
        return CustomerPart(
            np.concatenate([ct, ce], axis=1).astype(np.float32),
            base.astype(np.float32),
            np.asarray(bias, np.float32),
            a,
        )

    def product_part(
        self,
        features: np.ndarray,
        ids: np.ndarray,
        prior: np.ndarray,
        content: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> ProductPart:
        """Tower, vector and bias of product rows (ids: positions + 1, 0 = unknown). `content`: the
        rows' (content, inverse norms) when the caller holds them (see `ProductPart`); default: the
        features' content block (a copy)."""
        if self.prod_content is None:
            a = a_inv = None
        elif content is not None:
            a, a_inv = content
        else:
            a = np.ascontiguousarray(features[:, self.prod_content], np.float32)
            a_inv = inverse_norms(a)
        if self.kind == "rating":
            q = np.concatenate([_apply(self.prod_tower, features), self.prod_vec(features)], axis=1)
            return ProductPart(q, np.asarray(prior, np.float32), a, a_inv)
        features = features * self.prod_keep
        bias = self.prod_off[ids] + self.popularity(features[:, self.log_count])[:, 0]
        return ProductPart(
            np.concatenate([_apply(self.prod_tower, features), self.prod_emb[ids]], axis=1),
            bias.astype(np.float32),
            a,
            a_inv,
        )

    def affinity(self, c: CustomerPart, p: ProductPart) -> np.ndarray | None:
        """(n, m, A) cosines of the customers' content aggregates with the products' content, for
        either call shape of `forward`; None when the head takes none."""
        if self.aff_wide is None:
            return None
        n, n_aff, dim = c.a.shape
        if p.a.ndim == 2:  # the same products for every customer: one BLAS call, computed as
            # (m, n, A) and given back as an (n, m, A) view (einsum took 2x longer); `_grid` copies
            # one customer's (m, A) slice into its input block
            dots = p.a @ c.a.reshape(n * n_aff, dim).T
            dots *= p.a_inv[:, None]
            return dots.reshape(len(p.a), n, n_aff).transpose(1, 0, 2)
        return np.matmul(p.a, c.a.transpose(0, 2, 1)) * p.a_inv[:, :, None]

    def forward(self, c: CustomerPart, p: ProductPart, pair: np.ndarray) -> np.ndarray:
        """(n, m) head outputs for customers c (n rows) against products p: p.q is (m, K) for
        customers x items (the same items for every customer), or (n, m, K) per customer (aligned
        rows use m = 1). pair: (n, m, PAIR_DIM). The trunk's matmuls are 2-D BLAS calls; the
        wide, affinity and bias terms are added over the (n, m) result."""
        aff = self.affinity(c, p)
        if p.q.ndim == 2:
            y = self._grid(c, p, pair, aff)
        else:
            y = self._aligned(c, p, pair, aff)
        if self.wide is not None:
            y += pair @ self.wide + self.mu
        if aff is not None:
            y += aff @ self.aff_wide
        return y + c.bias[:, None] + p.bias

    def _grid(self, c: CustomerPart, p: ProductPart, pair: np.ndarray, aff: np.ndarray | None) -> np.ndarray:
        """The trunk for customers x the same m products, one customer at a time: the first layer is
        one matmul of x = [q, pair, aff, 1] (m, K + PAIR_DIM + A + 1) by that customer's kernel
        [Wq + c * Wx; W_pair; W_aff; base], so its customer term, pair and affinity blocks and bias
        cost no pass of their own over the (m, H) activations (0.5 against 0.8 us a row, measured
        on a 10,000-product catalog). The x rows of q are written once for all customers."""
        f = self.first
        n, k = c.c.shape
        m = len(p.q)
        n_aff = 0 if aff is None else aff.shape[2]
        x = np.empty((m, k + PAIR_DIM + n_aff + 1), np.float32)
        x[:, :k] = p.q
        x[:, -1] = 1.0
        w = np.empty((x.shape[1], f.w_q.shape[1]), np.float32)
        w[k : k + PAIR_DIM] = f.w_pair
        w[k + PAIR_DIM : k + PAIR_DIM + n_aff] = f.w_aff
        y = np.empty((n, m), np.float32)
        for r in range(n):
            np.multiply(c.c[r][:, None], f.w_x, out=w[:k])
            w[:k] += f.w_q
            w[-1] = c.base[r]
            x[:, k : k + PAIR_DIM] = pair[r]
            if n_aff:
                x[:, k + PAIR_DIM : -1] = aff[r]
            h = x @ w
            if f.relu:
                np.maximum(h, 0.0, out=h)
            y[r] = _apply(self.rest, h)[:, 0]
        return y

    def _aligned(
        self, c: CustomerPart, p: ProductPart, pair: np.ndarray, aff: np.ndarray | None
    ) -> np.ndarray:
        """The trunk for one set of m products per customer row (rows (customer, product)): the
        first layer as a sum of matmuls, without per-row kernels."""
        f = self.first
        n, k = c.c.shape
        m = p.q.shape[1]
        width = f.w_q.shape[1]
        q = p.q.reshape(n * m, k)
        h = q @ f.w_q + (p.q * c.c[:, None, :]).reshape(n * m, k) @ f.w_x
        h = h.reshape(n, m, width)
        h += c.base[:, None, :]
        h = h.reshape(-1, width)
        h += pair.reshape(n * m, -1) @ f.w_pair
        if aff is not None:
            h += aff.reshape(n * m, -1) @ f.w_aff
        if f.relu:
            np.maximum(h, 0.0, out=h)
        return _apply(self.rest, h)[:, 0].reshape(n, m)


class ScoringNet:
    """Both heads of a trained `ml.model.HybridModel`, evaluated in numpy."""

    def __init__(self, heads: dict[str, HeadWeights]) -> None:
        self.heads = heads

    @classmethod
    def from_model(cls, model) -> ScoringNet:
        return cls({h: HeadWeights.from_net(model.nets[h], model.spec.mu) for h in HEADS})

    def customer_part(
        self, features: np.ndarray, prior: np.ndarray, history: np.ndarray, heads: tuple[str, ...] = HEADS
    ) -> dict[str, CustomerPart]:
        return {h: self.heads[h].customer_part(features, prior, history) for h in heads}

    def product_part(
        self,
        features: np.ndarray,
        ids: np.ndarray,
        prior: np.ndarray,
        content: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> dict[str, ProductPart]:
        """Both heads' product halves; they share one (content, inverse norms) pair: `content` when
        given (see `ProductPart`), else one copy of the features' content block."""
        block = next((w.prod_content for w in self.heads.values() if w.prod_content), None)
        if content is None and block is not None:
            a = np.ascontiguousarray(features[:, block], np.float32)
            content = (a, inverse_norms(a))
        return {h: w.product_part(features, ids, prior, content) for h, w in self.heads.items()}

    def forward(
        self,
        c: dict[str, CustomerPart],
        p: dict[str, ProductPart],
        pair: np.ndarray,
        heads: tuple[str, ...] = HEADS,
    ) -> Heads:
        """The requested heads for customers x products (see HeadWeights.forward for shapes).

        Small passes (a single request on a small catalog) run BLAS on one thread: a multi-threaded
        OpenBLAS spends more on waking and syncing its threads than on a (240 x 96) @ (96 x 128)
        product. Every pass runs in blocks (GRID_BLOCK_PRODUCTS products of a grid, BLOCK_ROWS rows of
        aligned calls), each block's activations staying in the CPU cache."""
        if pair.shape[0] * pair.shape[1] > SMALL_PASS_ROWS:
            return self._blocks(c, p, pair, heads)
        with one_blas_thread():
            return self._blocks(c, p, pair, heads)

    def _blocks(
        self, c: dict[str, CustomerPart], p: dict[str, ProductPart], pair: np.ndarray, heads: tuple[str, ...]
    ) -> Heads:
        n, m = pair.shape[:2]
        if n * m <= BLOCK_ROWS:
            return self._forward(c, p, pair, heads)
        aligned = next(iter(p.values())).q.ndim == 3
        if aligned:  # rows (customer, product): blocks of rows
            cuts = [(a, min(a + BLOCK_ROWS, n)) for a in range(0, n, BLOCK_ROWS)]
            parts = [
                self._forward(
                    {h: v.take(slice(a, b)) for h, v in c.items()},
                    {h: v.take(slice(a, b)) for h, v in p.items()},
                    pair[a:b],
                    heads,
                )
                for a, b in cuts
            ]
            axis = 0
        else:  # customers x products: blocks of products
            step = GRID_BLOCK_PRODUCTS
            parts = [
                self._forward(
                    c, {h: v.take(slice(a, a + step)) for h, v in p.items()}, pair[:, a : a + step], heads
                )
                for a in range(0, m, step)
            ]
            axis = 1
        return Heads(
            *(
                None if parts[0][k] is None else np.concatenate([x[k] for x in parts], axis=axis)
                for k in range(2)
            )
        )

    def _forward(
        self, c: dict[str, CustomerPart], p: dict[str, ProductPart], pair: np.ndarray, heads: tuple[str, ...]
    ) -> Heads:
        out = {h: self.heads[h].forward(c[h], p[h], pair) if h in heads else None for h in HEADS}
        return Heads(out["rating"], out["pick"])
