"""Customer and product representations built from training data only.

Product  = content (image embedding, text embedding of title/features/description; PCA-reduced)
           + mean of its training reviews' text embeddings + rating statistics.
Customer = mean of their training reviews' text embeddings + mean and rating-weighted mean of the
           content of the products they rated + mean content of those they liked + rating statistics.

Everything is stored as *sums and counts* (`FeatureTables`), so that a training row can subtract its
own review ("leave-one-out"): the text and rating of the review whose rating is predicted is never an
input, in training as at test time. A missing modality is a zero block plus a 0/1 mask, never an error.

Mean ratings are deliberately *not* features: a leave-one-out mean next to a learned per-customer
bias (which knows the full sum) gives the held-out rating away, r = S - (n-1)·mean_loo. A ridge bias
model carries that information instead (`cust_prior`, `prod_prior`); training rows get its biases
with their own rating left out (`ml.baselines.BiasBaseline.leave_one_out`), and so does the
neighbourhood residual in the pair features (`pair_features`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import NamedTuple

import numpy as np

# A rating at or above this is "liked" (1-5 stars): the customer's liked-content block, and the
# profile of the content-kNN baseline (`ml.baselines.ContentKNN`), which that block lets the heads use.
LIKED_RATING = 4.0


@dataclass(frozen=True)
class Block:
    """A named run of columns in a feature row."""

    name: str
    width: int


@dataclass(frozen=True)
class RowLayout:
    """One side's feature row: named blocks of columns, in the order they are concatenated."""

    blocks: tuple[Block, ...]

    @property
    def width(self) -> int:
        return sum(b.width for b in self.blocks)

    def span(self, name: str) -> slice:
        """The columns of block `name` (KeyError when the row has no such block)."""
        start = 0
        for b in self.blocks:
            if b.name == name:
                return slice(start, start + b.width)
            start += b.width
        raise KeyError(f"no feature block {name!r} in {[b.name for b in self.blocks]}")

    def mask_without(self, name: str) -> np.ndarray:
        """(width,) float32 ones with block `name` zeroed: a row times it no longer holds the block."""
        keep = np.ones(self.width, np.float32)
        keep[self.span(name)] = 0.0
        return keep

    def assemble(self, **parts: np.ndarray) -> np.ndarray:
        """The (n, width) float32 row from one (n, width) array per block; a missing, extra or
        mis-sized block is an error (a silent shift of columns would be a wrong model, not a crash)."""
        names = [b.name for b in self.blocks]
        if sorted(parts) != sorted(names):
            raise ValueError(f"feature blocks {sorted(parts)} do not match the layout {names}")
        for b in self.blocks:
            if parts[b.name].ndim != 2 or parts[b.name].shape[1] != b.width:
                raise ValueError(f"feature block {b.name!r}: shape {parts[b.name].shape}, width {b.width}")
        return np.concatenate([parts[name] for name in names], axis=1).astype(np.float32)

    def to_list(self) -> list[list]:
        return [[b.name, b.width] for b in self.blocks]

    @classmethod
    def from_list(cls, blocks: list) -> RowLayout:
        return cls(tuple(Block(str(name), int(width)) for name, width in blocks))


@dataclass(frozen=True)
class FeatureLayout:
    """The customer and product feature rows by name: what `customer_features` / `product_features`
    build and what the model's towers (and the pick head's masks) read. Adding a block is one edit
    in `of` plus the array that fills it."""

    customer: RowLayout
    product: RowLayout

    @classmethod
    def of(cls, content: int, customer_text: int, product_text: int, liked: bool = True) -> FeatureLayout:
        """The layout for content vectors of width `content` and review-text vectors of the widths
        given. `liked=False`: the layout of tables written before the liked-content block existed."""
        stats = (Block("log_count", 1), Block("has_text", 1))
        # mean content of the products they liked (rated >= LIKED_RATING; all they rated when none)
        liked_block = (Block("content_liked", content),) if liked else ()
        return cls(
            customer=RowLayout(
                (
                    Block("review_text", customer_text),  # mean of their reviews' text vectors
                    Block("content_mean", content),  # mean content of the products they rated
                    Block("content_wmean", content),  # mean of (rating - mu) * content
                    *liked_block,
                    *stats,
                )
            ),
            product=RowLayout((Block("content", content), Block("review_text", product_text), *stats)),
        )

    def to_dict(self) -> dict:
        return {"customer": self.customer.to_list(), "product": self.product.to_list()}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureLayout:
        return cls(RowLayout.from_list(d["customer"]), RowLayout.from_list(d["product"]))


class ModelInputs(NamedTuple):
    """The hybrid model's inputs, by name (Keras takes them as a dict: `._asdict()`)."""

    customer: np.ndarray  # (n, layout.customer.width) float32
    product: np.ndarray  # (n, layout.product.width) float32
    product_id: np.ndarray  # (n,) int32 positions + 1, 0 = unknown
    customer_prior: np.ndarray  # (n,) ridge bias b_u
    product_prior: np.ndarray  # (n,) ridge bias b_i
    history: np.ndarray  # (n, H) int32 rated product ids (0 = none)
    pair: np.ndarray  # (n, PAIR_DIM) float32 co-occurrence and neighbourhood signals

    @classmethod
    def dummy(cls, layout: FeatureLayout) -> ModelInputs:
        """One all-zero row: what builds the model's weights."""
        z = np.zeros((1,), np.float32)
        return cls(
            np.zeros((1, layout.customer.width), np.float32),
            np.zeros((1, layout.product.width), np.float32),
            np.zeros((1,), np.int32),
            z,
            z,
            np.zeros((1, 1), np.int32),
            np.zeros((1, PAIR_DIM), np.float32),
        )


@dataclass
class FeatureTables:
    """Sums and counts from the training ratings, indexed by customer and product position."""

    customer_ids: np.ndarray  # (C,) str
    product_ids: np.ndarray  # (P,) str
    mu: float  # global mean training rating
    prod_content: np.ndarray  # (P, Dc) float32: image + product-text PCA blocks and their masks
    prod_review_sum: np.ndarray  # (P, Dt) sum of training review-text vectors
    prod_text_count: np.ndarray  # (P,) reviews with text
    prod_count: np.ndarray  # (P,) training ratings
    prod_rating_sum: np.ndarray  # (P,)
    cust_review_sum: np.ndarray  # (C, Dt)
    cust_text_count: np.ndarray  # (C,)
    cust_count: np.ndarray  # (C,)
    cust_content_sum: np.ndarray  # (C, Dc) sum of content of rated products
    cust_content_wsum: np.ndarray  # (C, Dc) sum of (rating - mu) * content
    cust_history: np.ndarray  # (C, H) int32: positions + 1 of the latest rated products, 0 = padding
    rated_indptr: np.ndarray  # CSR (customer -> rated product positions)
    rated_indices: np.ndarray
    rated_rating: np.ndarray  # the CSR's data: the training rating of each (customer, product)
    cooc_indptr: np.ndarray  # CSR (product x product): customers who rated both, zero diagonal
    cooc_indices: np.ndarray
    cooc_data: np.ndarray
    cust_prior: np.ndarray  # (C,) ridge bias b_u fitted on the training ratings
    prod_prior: np.ndarray  # (P,) ridge bias b_i
    # (P,) int32: the product's row in the network's id embeddings, 0 = none (the shared "unknown" row).
    # Only products rated in training have one: the tables (and each step of training, which updates
    # whole embedding tables) grow with the rated products, not the catalog. Artifacts from before it
    # was stored: position + 1 for the rated products, as their networks were built.
    prod_id: np.ndarray | None = None
    # (C, Dc) sum of the content of the products the customer rated >= LIKED_RATING, and (C,) how
    # many; None in tables written before they existed (their layouts have no "content_liked" block)
    cust_liked_sum: np.ndarray | None = None
    cust_liked_count: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.prod_id is None:
            rated = self.prod_count > 0
            self.prod_id = np.where(rated, np.arange(1, len(rated) + 1), 0).astype(np.int32)
        # `_hits` binary-searches C's rows: their indices must be sorted (`_cooccurrence` sorts them;
        # checked here for tables from elsewhere, ~2 ms a million entries)
        if not _sorted_rows(self.cooc_indptr, self.cooc_indices):
            from scipy import sparse

            c = sparse.csr_matrix((self.cooc_data, self.cooc_indices, self.cooc_indptr), copy=True)
            c.sum_duplicates()  # sorts each row, one entry per (row, column)
            self.cooc_indices, self.cooc_data = c.indices.astype(np.int32), c.data

    @property
    def n_ids(self) -> int:
        """Rows of the network's id embeddings these tables index (the unknown row included)."""
        return int(self.prod_id.max(initial=0)) + 1

    @property
    def n_customers(self) -> int:
        return len(self.customer_ids)

    @property
    def n_products(self) -> int:
        return len(self.product_ids)

    @property
    def layout(self) -> FeatureLayout:
        """The feature rows these tables give (widths from the stored sums)."""
        return FeatureLayout.of(
            self.prod_content.shape[1],
            self.cust_review_sum.shape[1],
            self.prod_review_sum.shape[1],
            liked=self.cust_liked_sum is not None,
        )

    def save(self, path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})

    @classmethod
    def load(cls, path) -> FeatureTables:
        with np.load(path, allow_pickle=False) as z:
            # older tables lack the later fields (prod_id, the liked sums): their defaults stand
            kwargs = {f.name: z[f.name] for f in fields(cls) if f.name in z.files}
        kwargs["mu"] = float(kwargs["mu"])
        return cls(**kwargs)


def build_tables(
    customer_ids: np.ndarray,
    product_ids: np.ndarray,
    u: np.ndarray,
    i: np.ndarray,
    rating: np.ndarray,
    review_vecs: np.ndarray,
    review_has_text: np.ndarray,
    prod_content: np.ndarray,
    mu: float | None = None,
    recency: np.ndarray | None = None,
    history_len: int = 32,
    cust_prior: np.ndarray | None = None,
    prod_prior: np.ndarray | None = None,
    ids: np.ndarray | None = None,
) -> FeatureTables:
    """Aggregate training ratings (u, i, rating) and their review vectors into sums and counts.

    `mu`, `cust_prior`, `prod_prior`: a bias model (mu + b_u + b_i) the network starts from.
    `ids`: the id rows of a network trained on other tables (`FeatureTables.prod_id`), kept for the
    products rated here; default: rows 1..K for the K rated products, in position order."""
    n_c, n_p = len(customer_ids), len(product_ids)
    rating = rating.astype(np.float64)
    if mu is None:
        mu = float(rating.mean()) if len(rating) else 3.0
    tw = review_has_text.astype(np.float32)[:, None]
    dt = review_vecs.shape[1]
    dc = prod_content.shape[1]

    def scatter(idx: np.ndarray, n: int, values: np.ndarray) -> np.ndarray:
        out = np.zeros((n,) + values.shape[1:], dtype=np.float64)
        np.add.at(out, idx, values)
        return out.astype(np.float32)

    content = prod_content[i] if dc else np.zeros((len(i), 0), np.float32)
    liked = rating >= LIKED_RATING
    rated = np.bincount(i, minlength=n_p) > 0
    ids = np.cumsum(rated) if ids is None else ids
    return FeatureTables(
        customer_ids=np.asarray(customer_ids, dtype=str),
        product_ids=np.asarray(product_ids, dtype=str),
        mu=mu,
        prod_content=prod_content.astype(np.float32),
        prod_review_sum=scatter(i, n_p, review_vecs * tw) if dt else np.zeros((n_p, 0), np.float32),
        prod_text_count=np.bincount(i, weights=tw[:, 0], minlength=n_p).astype(np.float32),
        prod_count=np.bincount(i, minlength=n_p).astype(np.float32),
        prod_rating_sum=np.bincount(i, weights=rating, minlength=n_p).astype(np.float32),
        cust_review_sum=scatter(u, n_c, review_vecs * tw) if dt else np.zeros((n_c, 0), np.float32),
        cust_text_count=np.bincount(u, weights=tw[:, 0], minlength=n_c).astype(np.float32),
        cust_count=np.bincount(u, minlength=n_c).astype(np.float32),
        cust_content_sum=scatter(u, n_c, content) if dc else np.zeros((n_c, 0), np.float32),
        cust_content_wsum=scatter(u, n_c, content * (rating - mu)[:, None].astype(np.float32))
        if dc
        else np.zeros((n_c, 0), np.float32),
        cust_history=_history(u, i, n_c, recency, history_len),
        **_cooccurrence(u, i, rating, n_c, n_p),
        cust_prior=(np.zeros(n_c) if cust_prior is None else cust_prior).astype(np.float32),
        prod_prior=(np.zeros(n_p) if prod_prior is None else prod_prior).astype(np.float32),
        prod_id=np.where(rated, ids, 0).astype(np.int32),
        cust_liked_sum=scatter(u[liked], n_c, content[liked]),
        cust_liked_count=np.bincount(u[liked], minlength=n_c).astype(np.float32),
    )


def _history(u: np.ndarray, i: np.ndarray, n_c: int, recency: np.ndarray | None, length: int) -> np.ndarray:
    """Each customer's latest `length` rated products (positions + 1), most recent last."""
    out = np.zeros((n_c, length), np.int32)
    if len(u) == 0 or length == 0:
        return out
    rec = np.arange(len(u)) if recency is None else recency
    order = np.lexsort((rec, u))
    su, si = u[order], i[order]
    ends = np.searchsorted(su, np.arange(n_c), side="right")
    rank_from_end = ends[su] - np.arange(len(su))  # 1 = latest
    keep = rank_from_end <= length
    out[su[keep], length - rank_from_end[keep]] = si[keep] + 1
    return out


def _sorted_rows(indptr: np.ndarray, indices: np.ndarray) -> bool:
    """Whether each row of a CSR matrix lists its column indices in strictly increasing order."""
    step = np.diff(indices)
    step[indptr[1:-1][(indptr[1:-1] > 0) & (indptr[1:-1] < len(indices))] - 1] = 1  # row starts
    return bool((step > 0).all())


def _cooccurrence(u: np.ndarray, i: np.ndarray, rating: np.ndarray, n_c: int, n_p: int) -> dict:
    """Rated-products CSR per customer (with the ratings) and the product co-occurrence counts
    C = XᵀX (diagonal 0)."""
    from scipy import sparse

    x = sparse.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(n_c, n_p))
    xr = sparse.csr_matrix((np.asarray(rating, np.float64), (u, i)), shape=(n_c, n_p))  # same structure
    rated_rating = (xr.data / x.data).astype(np.float32)  # duplicates: their mean rating
    x.data[:] = 1.0  # duplicates count once
    c = (x.T @ x).tocsr()
    c.setdiag(0)
    c.eliminate_zeros()
    c.sort_indices()
    return {
        "rated_indptr": x.indptr.astype(np.int64),
        "rated_indices": x.indices.astype(np.int32),
        "rated_rating": rated_rating,
        "cooc_indptr": c.indptr.astype(np.int64),
        "cooc_indices": c.indices.astype(np.int32),
        "cooc_data": c.data.astype(np.float32),
    }


KNN_SHRINK = (3.0, 30.0)  # shrinkage (in links) of the neighbourhood residual columns
PAIR_DIM = 1 + len(KNN_SHRINK)
LINK_ENTRY_BUDGET = 4_000_000  # co-occurrence entries expanded at once by _link_sums (bounds memory)
DENSE_KEYS = 2_000_000  # customers x products key slots of one _link_sums lookup table (8 MB)


def _pair_columns(links: np.ndarray, item_resid: np.ndarray, b_u: np.ndarray) -> np.ndarray:
    """[log1p(links), (item_resid - b_u·links) / (links + λ) for λ in KNN_SHRINK], last axis."""
    links = np.maximum(links, 0.0)
    resid = item_resid - b_u * links
    cols = [np.log1p(links)] + [resid / (links + lam) for lam in KNN_SHRINK]
    return np.stack(cols, axis=-1).astype(np.float32)


def _ranges(starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, index) of every element of the ranges [starts[k], starts[k] + lens[k])."""
    owner = np.repeat(np.arange(len(starts)), lens)
    first = np.cumsum(lens) - lens
    return owner, np.arange(int(lens.sum()), dtype=np.int64) - first[owner] + starts[owner]


def _ragged(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, position) of every CSR entry of `rows`: owner indexes `rows`, position the data."""
    starts = indptr[rows].astype(np.int64)
    return _ranges(starts, indptr[rows + 1].astype(np.int64) - starts)


def _rated(t: FeatureTables, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, product, residual r - mu - b_j) of the training ratings of customer rows `u` (-1: none)."""
    known = np.flatnonzero(np.asarray(u) >= 0)
    owner, pos = _ragged(t.rated_indptr, np.asarray(u)[known])
    j = t.rated_indices[pos].astype(np.int64)
    return known[owner], j, (t.rated_rating[pos] - t.mu - t.prod_prior[j]).astype(np.float64)


class LinkSums(NamedTuple):
    """`_link_sums`' accumulators, one entry per key (customer row x product)."""

    links: np.ndarray  # Σ_j C(j, product)
    resid: np.ndarray  # Σ_j C(j, product)·(r_uj - mu - b_j)
    knn: np.ndarray | None  # Σ_j C(j, product) / (sqrt(n_j·n_product) + shrink), when asked


def rater_norm(t: FeatureTables) -> np.ndarray:
    """(P,) sqrt of each product's distinct training raters (the diagonal C leaves out): the cosine
    norm of item-kNN. Computed once per tables object; live feedback adds to the customers' rated
    lists but not to C: `Recommender` takes the norm at load, before any feedback."""
    cached = t.__dict__.get("_rater_norm")
    if cached is None:
        counts = np.bincount(t.rated_indices[: t.rated_indptr[-1]], minlength=t.n_products)
        cached = t.__dict__["_rater_norm"] = np.sqrt(counts.astype(np.float64))
    return cached


def _link_sums(
    t: FeatureTables,
    u: np.ndarray,
    keys: np.ndarray,
    knn_shrink: float | None = None,
    norm: np.ndarray | None = None,
) -> LinkSums:
    """THE pair-signal core: for sorted unique keys row * P + product, (Σ_j C(j, product),
    Σ_j C(j, product)·(r_uj - mu - b_j)) over the products j that customer u[row] rated, and with
    `knn_shrink` the shrunk item-kNN score Σ_j C(j, product) / (sqrt(n_j·n_product) + shrink)
    (`ml.baselines.ItemKNN`'s score, from the same entries).

    Works from the sparse rows of C at the rated products only (never a dense catalog row), finding
    the entries that land on a key one of two ways, whichever costs less for each rated product
    (`_hits`): a scan of its whole C row (cost: its entries) or a binary search of each of the
    customer's keys in it (cost: the keys), so scoring a few candidates does not touch the rest of
    the catalog. Rows are processed in chunks of at most LINK_ENTRY_BUDGET entries.
    `norm`: the kNN norm when not `rater_norm(t)` (`held_out_knn_grid`)."""
    n_p = np.int64(t.n_products)
    links = np.zeros(len(keys), np.float64)
    resid = np.zeros(len(keys), np.float64)
    knn = None if knn_shrink is None else np.zeros(len(keys), np.float64)
    if knn_shrink is not None and norm is None:
        norm = rater_norm(t)
    row, j, res = _rated(t, u)  # sorted by row
    entries = t.cooc_indptr[j + 1] - t.cooc_indptr[j]  # (not a diff of the whole catalog's indptr)
    cum = np.cumsum(np.bincount(row, weights=entries, minlength=len(u)))
    per_chunk = max(1, DENSE_KEYS // int(n_p))  # customers whose key slots fit one lookup table
    lo = 0
    while lo < len(u):
        done = cum[lo - 1] if lo else 0.0
        hi = max(lo + 1, int(np.searchsorted(cum, done + LINK_ENTRY_BUDGET, side="right")))
        hi = min(hi, lo + per_chunk)
        r0, r1 = np.searchsorted(row, [lo, hi])
        k0, k1 = np.searchsorted(keys, [lo * n_p, hi * n_p])
        if r1 > r0 and k1 > k0:
            at, r, pos = _hits(t, RatedRows(row[r0:r1], j[r0:r1], entries[r0:r1]), keys[k0:k1], lo, hi)
            val = t.cooc_data[pos].astype(np.float64)
            links[k0:k1] += np.bincount(at, weights=val, minlength=k1 - k0)
            resid[k0:k1] += np.bincount(at, weights=val * res[r0:r1][r], minlength=k1 - k0)
            if knn is not None:
                sim = val / (norm[j[r0:r1][r]] * norm[t.cooc_indices[pos]] + knn_shrink)
                knn[k0:k1] += np.bincount(at, weights=sim, minlength=k1 - k0)
        lo = hi
    return LinkSums(links, resid, knn)


class RatedRows(NamedTuple):
    """A chunk of `_rated`'s entries: customer row, rated product and its C row's entry count."""

    row: np.ndarray
    j: np.ndarray
    entries: np.ndarray


# Cost of a binary search in `_hits`, in scanned C entries: per rated product searched (a numpy
# call) and per key searched. Measured on the 100k SYNTHETIC catalog (a two-stage request: 1,000
# candidates, ~17 rated products with 14 to 8,698 C entries each).
SEARCH_CALL_COST = 250
SEARCH_KEY_COST = 2
# A scan looks its entries up in a table of (rows x P) key slots when it fills fewer than this many
# slots per entry (a fill costs ~0.09 ns a slot, a binary search in 1,000 keys ~12 ns an entry).
TABLE_SLOTS_PER_ENTRY = 100


def _hits(
    t: FeatureTables, rated: RatedRows, kk: np.ndarray, lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slot in `kk`, rated entry, C position) of every co-rating entry (j, product) whose key
    row * P + product is in `kk` (sorted keys of rows lo..hi-1), row and j those of a rated entry.
    Each rated entry's C row is either scanned whole, its entries found among the keys, or, when
    its row has few keys against its C entries, searched for each key's product (C's rows have
    sorted indices): whichever costs less."""
    n_p = np.int64(t.n_products)
    kb, ke = (np.searchsorted(kk, (rated.row + d) * n_p) for d in (0, 1))
    has_keys = ke > kb
    search = (SEARCH_CALL_COST + SEARCH_KEY_COST * (ke - kb) < rated.entries) & has_keys
    found = _hits_by_search(t, rated, kk, kb, ke, np.flatnonzero(search))
    scan = np.flatnonzero(~search & has_keys)
    if len(scan) == 0:
        return found
    return tuple(np.concatenate(x) for x in zip(found, _hits_by_scan(t, rated, kk, lo, hi, scan)))


def _hits_by_scan(
    t: FeatureTables, rated: RatedRows, kk: np.ndarray, lo: int, hi: int, which: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_hits` of the rated entries `which` by a scan of their whole C rows, each entry's key found
    by a binary search in `kk`, or in a lookup table of the (rows lo..hi-1) x P key slots when
    filling it costs less (a binary search per entry cost 3x a table lookup)."""
    n_p = np.int64(t.n_products)
    owner, pos = _ragged(t.cooc_indptr, rated.j[which])
    owner = which[owner]
    key = rated.row[owner] * n_p + t.cooc_indices[pos]
    if TABLE_SLOTS_PER_ENTRY * len(key) < (hi - lo) * n_p:
        at = np.minimum(np.searchsorted(kk, key), len(kk) - 1)
        hit = kk[at] == key
    else:
        lookup = np.full((hi - lo) * int(n_p), -1, np.int32)
        lookup[kk - lo * n_p] = np.arange(len(kk), dtype=np.int32)
        at = lookup[key - lo * n_p]
        hit = at >= 0
    return at[hit], owner[hit], pos[hit]


def _hits_by_search(
    t: FeatureTables, rated: RatedRows, kk: np.ndarray, kb: np.ndarray, ke: np.ndarray, which: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_hits` of the rated entries `which` by binary search: keys kk[kb[r]:ke[r]] in C's row j[r]."""
    if len(which) == 0:
        return tuple(np.zeros(0, np.int64) for _ in range(3))
    ptr, ind = t.cooc_indptr, t.cooc_indices
    cols = (kk % np.int64(t.n_products)).astype(ind.dtype)  # the haystack's dtype: searched without a copy
    found = [
        np.searchsorted(ind[ptr[j] : ptr[j + 1]], cols[a:b])
        for j, a, b in zip(rated.j[which], kb[which], ke[which])
    ]
    owner, slot = _ranges(kb[which], ke[which] - kb[which])
    owner = which[owner]
    step = np.concatenate(found).astype(np.int64)
    inside = step < rated.entries[owner]
    pos = ptr[rated.j[owner]] + step
    hit = inside.copy()
    hit[inside] = ind[pos[inside]] == cols[slot[inside]]
    return slot[hit], owner[hit], pos[hit]


def _own_terms(t: FeatureTables, u: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row (u, i): the customer's rating count, the sum of their residuals and the residual of
    (u, i) itself (0 when not rated): what leave-one-out takes out of the link sums."""
    uniq, inv = np.unique(u, return_inverse=True)
    inv = inv.reshape(-1).astype(np.int64)
    row, j, res = _rated(t, uniq)
    n_rated = np.bincount(row, minlength=len(uniq))[inv].astype(np.float64)
    total = np.bincount(row, weights=res, minlength=len(uniq))[inv]
    own = np.zeros(len(u), np.float64)
    if len(row):
        rk = row * np.int64(t.n_products) + j
        order = np.argsort(rk, kind="stable")
        rk, res = rk[order], res[order]
        q = inv * t.n_products + np.maximum(i, 0)
        slot = np.minimum(np.searchsorted(rk, q), len(rk) - 1)
        hit = (rk[slot] == q) & (i >= 0)
        own[hit] = res[slot[hit]]
    return n_rated, total, own


class PairSignals(NamedTuple):
    """What the co-ratings say of customers x products: the pair features the network takes, and
    the item-kNN score the ranking may add (None unless asked)."""

    features: np.ndarray | None  # (..., PAIR_DIM)
    knn: np.ndarray | None  # (...)

    def take(self, index) -> PairSignals:
        """The same `index` (over the leading axes) of both arrays."""
        return PairSignals(self.features[index], None if self.knn is None else self.knn[index])


def pair_signals_grid(
    t: FeatureTables,
    u: np.ndarray,
    items: np.ndarray | None = None,
    knn_shrink: float | None = None,
    features: bool = True,
    norm: np.ndarray | None = None,
) -> PairSignals:
    """Pair signals of each customer `u` with each of `items` (product positions, -1 = unknown; the
    whole catalog when None): features (len(u), m, PAIR_DIM) unless `features` is False, knn
    (len(u), m) with `knn_shrink` (and `norm`, as `_link_sums`). The grid call shape of
    `pair_features`, same core."""
    u = np.asarray(u, np.int64)
    items = np.arange(t.n_products) if items is None else np.asarray(items, np.int64)
    uniq, inv = np.unique(np.maximum(items, 0), return_inverse=True)
    keys = (np.arange(len(u), dtype=np.int64)[:, None] * t.n_products + uniq[None, :]).ravel()
    sums = _link_sums(t, u, keys, knn_shrink, norm)
    links, resid, knn = (None if x is None else x.reshape(len(u), len(uniq))[:, inv] for x in sums)
    unknown = items < 0
    for x in (links, resid, knn):
        if x is not None:
            x[:, unknown] = 0.0
    return PairSignals(
        _pair_columns(links, resid, customer_prior(t, u)[:, None]) if features else None,
        None if knn is None else knn.astype(np.float32),
    )


def pair_grid(t: FeatureTables, u: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
    """(len(u), m, PAIR_DIM) pair features of `pair_signals_grid`."""
    return pair_signals_grid(t, u, items).features


def knn_grid(t: FeatureTables, u: np.ndarray, shrink: float, items: np.ndarray | None = None) -> np.ndarray:
    """(len(u), m) item-kNN scores of `pair_signals_grid`."""
    return pair_signals_grid(t, u, items, shrink, features=False).knn


def held_out_knn_grid(
    full: FeatureTables, fit: FeatureTables, u: np.ndarray, held: np.ndarray, shrink: float
) -> np.ndarray:
    """(len(u), P) item-kNN scores of customers `u` (positions) over their histories in `fit`
    (which lacks their held-out ratings), from the co-ratings of `full` (every rating) less the
    customer's own co-ratings of its held-out product `held[k]`, of whose raters it is no longer one.

    What serving would score for that product had the customer's rating of it not arrived yet: every
    other customer's ratings count, as they do at serving, where `fit`'s co-ratings lack every
    held-out rating at once (docs/HISTORY.md, session 19: that understated the ranking's kNN term)."""
    u, held = np.asarray(u, np.int64), np.asarray(held, np.int64)
    norm = rater_norm(full)
    mixed = replace(
        full, rated_indptr=fit.rated_indptr, rated_indices=fit.rated_indices, rated_rating=fit.rated_rating
    )
    knn = pair_signals_grid(mixed, u, None, shrink, features=False, norm=norm).knn
    rows, cells = _held_out_cells(full, fit, u, held, shrink, norm)
    knn[rows, held[rows]] = cells
    return knn


def _held_out_cells(
    full: FeatureTables, fit: FeatureTables, u: np.ndarray, held: np.ndarray, shrink: float, norm: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, kNN score of row's held product) of `held_out_knn_grid`, from the held product's
    co-rating row (C is symmetric): each product of the customer's history shares one rater fewer with
    it. A customer that rated the held product twice (its other rating in `fit`) is still one of its
    raters: its row is left out, its score as the grid has it."""
    n_p = np.int64(full.n_products)
    h_owner, h_pos = _ragged(fit.rated_indptr, u)
    again = np.zeros(len(u), bool)
    again[h_owner[fit.rated_indices[h_pos] == held[h_owner]]] = True
    owner, pos = _ragged(full.cooc_indptr, held)
    mine = np.isin(owner * n_p + full.cooc_indices[pos], h_owner * n_p + fit.rated_indices[h_pos])
    owner, pos = owner[mine], pos[mine]
    shared = full.cooc_data[pos].astype(np.float64) - 1.0
    denom = norm[full.cooc_indices[pos]] * np.sqrt(np.maximum(norm[held[owner]] ** 2 - 1.0, 0.0)) + shrink
    term = np.divide(shared, denom, out=np.zeros_like(shared), where=shared > 0)
    rows = np.flatnonzero(~again)
    return rows, np.bincount(owner, term, len(u))[rows]


def knn_top(t: FeatureTables, u: int, n: int, shrink: float, exclude: np.ndarray | None = None) -> np.ndarray:
    """Positions of the (at most) `n` products with the highest item-kNN score for customer `u`,
    best first, none of `exclude`: the products co-rated with theirs, from the co-rating rows of
    their rated products only (no catalog-wide pass). Two-stage serving adds them to the retriever's
    candidates when the ranking uses the kNN term, which the retriever does not learn."""
    _, j, _ = _rated(t, np.array([u], np.int64))
    owner, pos = _ragged(t.cooc_indptr, j)
    other = t.cooc_indices[pos].astype(np.int64)
    norm = rater_norm(t)
    uniq, inv = np.unique(other, return_inverse=True)
    score = np.bincount(
        inv, weights=t.cooc_data[pos] / (norm[j[owner]] * norm[other] + shrink), minlength=len(uniq)
    )
    if exclude is not None and len(exclude):
        keep = ~np.isin(uniq, exclude)
        uniq, score = uniq[keep], score[keep]
    if len(uniq) > n:
        best = np.argpartition(-score, n - 1)[:n]
        uniq, score = uniq[best], score[best]
    return uniq[np.lexsort((uniq, -score))]


def pair_features(
    t: FeatureTables,
    u: np.ndarray,
    i: np.ndarray,
    leave_out: np.ndarray | None = None,
    cust_prior: np.ndarray | None = None,
) -> np.ndarray:
    """(n, PAIR_DIM) item-to-item signals of aligned rows (u, i), from the products j the customer
    rated and the co-rating counts C(i, j) (customers who rated both):
    - links = Σ_j C(i, j): "customers who bought X also bought Y";
    - neighbourhood residual = Σ_j C(i, j)·(r_uj - mu - b_u - b_j) / (links + λ): how the customer
      rated, beyond the bias model, the products that share raters with i (the item-kNN term of
      Koren's integrated model), shrunk towards 0 when few links back it.
    For a training rating (`leave_out` 1) the customer's own co-ratings are subtracted from C,
    and `cust_prior` (the row's b_u with its rating left out) replaces the table's b_u: either
    would otherwise give the rating away. `pair_grid` is the customers x items shape of the same."""
    u, i = np.asarray(u, np.int64), np.asarray(i, np.int64)
    b_u = customer_prior(t, u) if cust_prior is None else np.asarray(cust_prior, np.float32)
    links, resid, _ = _aligned_sums(t, u, i)
    if leave_out is not None:
        lo = np.asarray(leave_out, np.float64)
        n_rated, total, own = _own_terms(t, u, i)
        links = links - lo * np.maximum(n_rated - 1, 0)
        resid = resid - lo * (total - own)
    return _pair_columns(links, resid, b_u)


def pair_signals(
    t: FeatureTables, u: np.ndarray, i: np.ndarray, knn_shrink: float | None = None
) -> PairSignals:
    """Pair signals of aligned serving rows (u[k], i[k]): `pair_features` without leave-out, and the
    item-kNN score with `knn_shrink`."""
    u, i = np.asarray(u, np.int64), np.asarray(i, np.int64)
    links, resid, knn = _aligned_sums(t, u, i, knn_shrink)
    return PairSignals(
        _pair_columns(links, resid, customer_prior(t, u)), None if knn is None else knn.astype(np.float32)
    )


def _aligned_sums(
    t: FeatureTables, u: np.ndarray, i: np.ndarray, knn_shrink: float | None = None
) -> LinkSums:
    """`_link_sums` of aligned rows (u[k], i[k]); unknown products (-1) get zeros."""
    uniq, inv = np.unique(u, return_inverse=True)
    keys, back = np.unique(inv.astype(np.int64) * t.n_products + np.maximum(i, 0), return_inverse=True)
    known = i >= 0
    return LinkSums(
        *(
            None if x is None else np.where(known, x[back.reshape(-1)], 0.0)
            for x in _link_sums(t, uniq, keys, knn_shrink)
        )
    )


@dataclass
class Exclusion:
    """One training review to leave out of a row's features (all arrays aligned with the rows).

    `active` is 0 for rows that exclude nothing (serving, evaluation)."""

    active: np.ndarray  # (n,) float32 0/1
    rating: np.ndarray  # (n,) float32
    review_vec: np.ndarray  # (n, Dt)
    has_text: np.ndarray  # (n,) float32 0/1

    def take(self, rows) -> Exclusion:
        """The exclusions of `rows` (positions or a slice)."""
        return Exclusion(self.active[rows], self.rating[rows], self.review_vec[rows], self.has_text[rows])

    @classmethod
    def none(cls, n: int, dt: int) -> Exclusion:
        z = np.zeros(n, np.float32)
        return cls(z, z, np.zeros((n, dt), np.float32), z)


def _mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    return total / np.maximum(count, 1.0)[:, None]


def _review_aggregate(
    pos: np.ndarray, ex: Exclusion, review_sum: np.ndarray, text_count: np.ndarray, count: np.ndarray
):
    """Shared by both sides: (clamped positions, known mask, leave-one-out mean review vector,
    leave-one-out rating count, [log1p(count), has-text] stats) for entity positions `pos`."""
    known = (pos >= 0).astype(np.float32)
    pp = np.maximum(pos, 0)
    a = ex.active
    text_cnt = (text_count[pp] - a * ex.has_text) * known
    total = (review_sum[pp] - (a * ex.has_text)[:, None] * ex.review_vec) * known[:, None]
    cnt = (count[pp] - a) * known
    stats = np.stack([np.log1p(cnt), (text_cnt > 0).astype(np.float32)], 1)
    return pp, known, _mean(total, text_cnt), cnt, stats


def customer_features(
    t: FeatureTables, u: np.ndarray, ex_item: np.ndarray | None = None, ex: Exclusion | None = None
) -> np.ndarray:
    """(n, cust_dim) rows for customer positions `u` (-1 = unknown customer: all zeros).

    With `ex`, the review `ex` (and the product `ex_item`'s content) is subtracted from the sums."""
    ex = ex or Exclusion.none(len(u), t.cust_review_sum.shape[1])
    uu, known, review_mean, cnt, stats = _review_aggregate(
        u, ex, t.cust_review_sum, t.cust_text_count, t.cust_count
    )
    a = ex.active
    csum = t.cust_content_sum[uu]
    cwsum = t.cust_content_wsum[uu]
    liked = t.cust_liked_sum is not None
    lsum = t.cust_liked_sum[uu] if liked else None
    lcnt = t.cust_liked_count[uu] if liked else None
    if csum.shape[1] and ex_item is not None:
        content = t.prod_content[np.maximum(ex_item, 0)] * a[:, None]
        csum = csum - content
        cwsum = cwsum - content * (ex.rating - t.mu)[:, None]
        if liked:
            was_liked = (ex.rating >= LIKED_RATING).astype(np.float32)
            lsum = lsum - content * was_liked[:, None]
            lcnt = lcnt - a * was_liked
    csum = csum * known[:, None]
    cwsum = cwsum * known[:, None]
    parts = {}
    if liked:  # a customer who liked none of theirs: the mean of all they rated (as content-kNN)
        parts["content_liked"] = np.where((lcnt > 0)[:, None], _mean(lsum, lcnt), _mean(csum, cnt))
        parts["content_liked"] *= known[:, None]
    return t.layout.customer.assemble(
        review_text=review_mean,
        content_mean=_mean(csum, cnt),
        content_wmean=_mean(cwsum, cnt),
        **parts,
        log_count=stats[:, :1],
        has_text=stats[:, 1:],
    )


def product_features(t: FeatureTables, i: np.ndarray, ex: Exclusion | None = None) -> np.ndarray:
    """(n, prod_dim) rows for product positions `i` (-1 = unknown product: all zeros)."""
    ex = ex or Exclusion.none(len(i), t.prod_review_sum.shape[1])
    ii, known, review_mean, _, stats = _review_aggregate(
        i, ex, t.prod_review_sum, t.prod_text_count, t.prod_count
    )
    return t.layout.product.assemble(
        content=t.prod_content[ii] * known[:, None],
        review_text=review_mean,
        log_count=stats[:, :1],
        has_text=stats[:, 1:],
    )


CUSTOMER_INPUTS = ("customer", "customer_prior", "history")  # the ModelInputs a customer's rows share


def customer_inputs(
    t: FeatureTables,
    u: np.ndarray,
    ex: Exclusion | None = None,
    ex_item: np.ndarray | None = None,
    prior: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The customer side of the model's inputs (`CUSTOMER_INPUTS`) for customer positions `u`, each
    row with `ex`'s review of `ex_item` left out; `prior` replaces the tables' b_u row by row."""
    return {
        "customer": customer_features(t, u, ex_item, ex),
        "customer_prior": customer_prior(t, u) if prior is None else np.asarray(prior, np.float32),
        "history": customer_history(t, u, ex_item, ex),
    }


def pair_inputs(
    t: FeatureTables,
    u: np.ndarray,
    i: np.ndarray,
    prod_ex: Exclusion | None = None,
    is_rated: np.ndarray | None = None,
    cust_prior: np.ndarray | None = None,
    prod_prior: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The product and pair side of the model's inputs (the rest of `ModelInputs`) for rows (u, i);
    product ids are shifted by one (0 = unknown)."""
    cust_prior = customer_prior(t, u) if cust_prior is None else np.asarray(cust_prior, np.float32)
    return {
        "product": product_features(t, i, prod_ex),
        "product_id": product_id_input(t, i),
        "product_prior": product_prior(t, i) if prod_prior is None else np.asarray(prod_prior, np.float32),
        "pair": pair_features(t, u, i, is_rated, cust_prior),
    }


def model_inputs(
    t: FeatureTables,
    u: np.ndarray,
    i: np.ndarray,
    cust_ex: Exclusion | None = None,
    prod_ex: Exclusion | None = None,
    cust_ex_item: np.ndarray | None = None,
    cust_prior: np.ndarray | None = None,
    prod_prior: np.ndarray | None = None,
    is_rated: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The hybrid model's input dict for aligned rows (u, i): `customer_inputs` and `pair_inputs`.
    `cust_prior`/`prod_prior` replace the tables' biases row by row (training rows leave their
    own rating out of them); `is_rated`: 1 where the row's own pair is a training rating."""
    cust = customer_inputs(t, u, cust_ex, cust_ex_item, cust_prior)
    pair = pair_inputs(t, u, i, prod_ex, is_rated, cust["customer_prior"], prod_prior)
    return ModelInputs(**cust, **pair)._asdict()


def customer_history(
    t: FeatureTables, u: np.ndarray, ex_item: np.ndarray | None = None, ex: Exclusion | None = None
) -> np.ndarray:
    """(n, H) id rows (`FeatureTables.prod_id`) of each row's rated products, without the excluded
    product (leave-one-out); 0 = none."""
    u = np.asarray(u)
    hist = np.where((u >= 0)[:, None], t.cust_history[np.maximum(u, 0)], 0)
    if ex_item is not None and ex is not None:
        drop = (hist == (np.asarray(ex_item) + 1)[:, None]) & (ex.active > 0)[:, None]
        hist = np.where(drop, 0, hist)
    return np.where(hist > 0, t.prod_id[np.maximum(hist - 1, 0)], 0).astype(np.int32)


def customer_prior(t: FeatureTables, u: np.ndarray) -> np.ndarray:
    u = np.asarray(u)
    return np.where(u >= 0, t.cust_prior[np.maximum(u, 0)], 0.0).astype(np.float32)


def product_prior(t: FeatureTables, i: np.ndarray) -> np.ndarray:
    i = np.asarray(i)
    return np.where(i >= 0, t.prod_prior[np.maximum(i, 0)], 0.0).astype(np.float32)


def product_id_input(t: FeatureTables, i: np.ndarray) -> np.ndarray:
    """Model id input for products: their id row (`FeatureTables.prod_id`), or 0 ("unknown") for
    products without a training rating — they have no embedding of their own, the shared unknown one
    was trained (id dropout). Fixed at training: a product first rated by live feedback stays unknown
    until the next training gives it a row."""
    i = np.asarray(i)
    return np.where(i >= 0, t.prod_id[np.maximum(i, 0)], 0).astype(np.int32)


def reduce_block(x: np.ndarray, present: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """PCA-reduce the rows of `x` that are present to at most `dim` dimensions, scaled to unit
    average variance; absent rows stay zero. Small catalogs keep the MLP from overfitting 1280-d inputs."""
    from sklearn.decomposition import PCA

    out_dim = int(min(dim, max(int(present.sum()) - 1, 0), x.shape[1] if x.ndim == 2 else 0))
    out = np.zeros((len(x), out_dim), np.float32)
    if out_dim == 0:
        return out
    rows = x[present.astype(bool)].astype(np.float32)
    z = PCA(n_components=out_dim, random_state=seed).fit_transform(rows)
    z /= max(float(z.std()), 1e-6)
    out[present.astype(bool)] = z
    return out


def product_content(
    image_vecs: np.ndarray | None,
    has_image: np.ndarray,
    text_vecs: np.ndarray | None,
    has_text: np.ndarray,
    dim: int,
    seed: int = 0,
) -> np.ndarray:
    """(P, Dc) content block: reduced image and product-text embeddings, each followed by its mask.
    A modality that no product has is left out entirely."""
    blocks = []
    for vecs, mask in ((image_vecs, has_image), (text_vecs, has_text)):
        if vecs is None or not np.any(mask):
            continue
        blocks.append(reduce_block(vecs, mask, dim, seed))
        blocks.append(mask.astype(np.float32)[:, None])
    if not blocks:
        return np.zeros((len(has_image), 0), np.float32)
    return np.concatenate(blocks, axis=1).astype(np.float32)
