"""The hybrid Keras model: an MLP over customer/product representations and learned id embeddings.

Two heads, each its own network over the same inputs:
- `rating`: the score (1–5) the customer would give the product = mu + prior biases (a ridge bias
  model fitted first) + learned bias corrections + MLP residual, trained with MSE on observed ratings.
  Starting from the ridge biases matters on sparse data (a few ratings per customer), where free
  neural biases overfit;
- `pick`: the logit that the customer picks the product at all, trained with binary
  cross-entropy against sampled unrated products. Ratings alone rank obscure, rarely-rated products
  too high; the ranking score combines both (see `ml.ranking`).
Written with `keras.ops` only, so it runs on TensorFlow (default) and JAX.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import keras
import numpy as np
from keras import layers, ops

from ml.features import FeatureLayout, ModelInputs

# the customer's content aggregates whose cosine with the product's content the heads take (those
# of them the layout has: older layouts lack "content_liked")
AFFINITY_BLOCKS = ("content_mean", "content_wmean", "content_liked")
ARCHITECTURE_FIELDS = (
    "id_dim",
    "tower_dim",
    "hidden",
    "dropout",
    "id_dropout",
    "l2",
    "affinity",
    "cold_dropout",
)


@dataclass
class ModelSpec:
    """Everything needed to rebuild the network before loading its weights."""

    n_customers: int
    n_products: int
    layout: FeatureLayout  # the customer and product feature rows, by named block
    mu: float
    # architecture hyper-parameters; their defaults live in ml.train.TrainConfig
    id_dim: int
    tower_dim: int
    hidden: tuple[int, ...]
    dropout: float
    id_dropout: float
    l2: float
    # rows of the id embeddings (FeatureTables.n_ids: the rated products and "unknown"); None in
    # specs written before it existed, whose networks had a row per product
    n_ids: int | None = None
    # content affinity inputs (`AFFINITY_BLOCKS`); False in specs written before they existed
    affinity: bool = False
    # training only: a pick-head row whose product id is dropped also loses the product's rating
    # statistics and the pair's co-rating signals (`PickHead`); False in specs written before it
    cold_dropout: bool = False

    @property
    def has_content(self) -> bool:
        """Whether products have a content block (image / text embeddings) of non-zero width."""
        content = self.layout.product.span("content")
        return content.stop > content.start

    @property
    def affinity_blocks(self) -> tuple[str, ...]:
        """The customer content blocks the heads take cosines of: none without affinity or content."""
        if not self.affinity or not self.has_content:
            return ()
        names = {b.name for b in self.layout.customer.blocks}
        return tuple(b for b in AFFINITY_BLOCKS if b in names)

    @property
    def n_affinity(self) -> int:
        """Affinity columns the heads take: one per customer content block."""
        return len(self.affinity_blocks)

    @property
    def id_rows(self) -> int:
        return self.n_products + 1 if self.n_ids is None else self.n_ids

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["layout"] = self.layout.to_dict()
        return d

    def __post_init__(self) -> None:  # JSON gives lists
        self.hidden = tuple(self.hidden)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        return cls(**{**d, "layout": FeatureLayout.from_dict(d["layout"])})


@keras.saving.register_keras_serializable(package="ml")
class IdDropout(layers.Layer):
    """Replaces ids by 0 ("unknown") at random in training, so the content path learns to stand
    alone: that is what scores never-rated products and new customers."""

    def __init__(self, rate: float, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rate = rate
        self.seed_gen = keras.random.SeedGenerator(seed)

    def call(self, ids, training=None):
        return self.drop(ids, training)[0]

    def drop(self, ids, training=None):
        """(ids with the dropped ones 0, float 0/1 keep mask or None when nothing is dropped)."""
        if not training or self.rate <= 0:
            return ids, None
        keep = keras.random.uniform(ops.shape(ids), seed=self.seed_gen) >= self.rate
        return ops.where(keep, ids, ops.zeros_like(ids)), ops.cast(keep, "float32")


def unit_rows(x):
    """Rows scaled to unit L2 length; all-zero rows (no content, no rated product) stay zero."""
    return x / ops.maximum(ops.sqrt(ops.sum(x * x, axis=-1, keepdims=True)), 1e-12)


def _mlp(units: tuple[int, ...], dropout: float, l2: float, name: str) -> keras.Sequential:
    stack = []
    for k, n in enumerate(units):
        stack.append(
            layers.Dense(
                n, activation="relu", kernel_regularizer=keras.regularizers.L2(l2), name=f"{name}_{k}"
            )
        )
        if dropout:
            stack.append(layers.Dropout(dropout))
    return keras.Sequential(stack, name=name)


class HeadNet(layers.Layer):
    """What both heads share: customer/product towers over the features, the mean embedding of the
    products the customer rated (as in SVD++), the co-occurrence signal, an MLP over the pair and
    a 1-unit output. `RatingHead` and `PickHead` add their own product vector and bias.

    No free per-customer parameter exists in either head, and the rating head has none per
    product: the features are leave-one-out aggregates, and a learned per-entity vector next to
    one could memorise the full aggregate and recover the left-out review (S - (n-1)·mean_loo).
    The pick head keeps learned product embeddings and popularity offsets (with id dropout) but
    sees no per-product review text, for the same reason."""

    kind = ""
    rated_rows_only = False  # trained on rated rows alone (`HybridModel.call` with `rated`), or on every row

    def __init__(self, spec: ModelSpec, **kwargs) -> None:
        super().__init__(name=f"{self.kind}_net", **kwargs)
        self.spec = spec
        kind = self.kind
        self.reg = keras.regularizers.L2(spec.l2)
        self.cust_tower = _mlp((spec.tower_dim,), 0.0, spec.l2, f"{kind}_customer_tower")
        self.prod_tower = _mlp((spec.tower_dim,), 0.0, spec.l2, f"{kind}_product_tower")
        self.hist_emb = layers.Embedding(spec.id_rows, spec.id_dim, embeddings_regularizer=self.reg)
        self.n_affinity = spec.n_affinity
        if self.n_affinity:
            self.cust_content = [spec.layout.customer.span(b) for b in spec.affinity_blocks]
            self.prod_content = spec.layout.product.span("content")
            self.affinity = layers.Dense(
                1, use_bias=False, kernel_initializer="zeros", name=f"{kind}_affinity"
            )

    def _trunk(self, out_init: str) -> None:
        """The pair MLP and the output unit (created after the head's own layers)."""
        self.trunk = _mlp(self.spec.hidden, self.spec.dropout, self.spec.l2, f"{self.kind}_trunk")
        self.out = layers.Dense(1, kernel_initializer=out_init, name=f"{self.kind}_out")

    def build(self, input_shape=None):
        self.built = True

    def customer_part(self, features, prior, history, training=False) -> dict:
        mask = ops.cast(ops.greater(history, 0), "float32")
        hist = ops.sum(self.hist_emb(history) * mask[:, :, None], axis=1) / ops.maximum(
            ops.sum(mask, axis=1, keepdims=True), 1.0
        )
        out = {"t": self.cust_tower(features, training=training), "e": hist, "b": self._offset(prior)}
        if self.n_affinity:  # (n, A, Dc): the customer's content aggregates, unit length
            out["a"] = ops.stack([unit_rows(features[:, s]) for s in self.cust_content], axis=1)
        return out

    def _offset(self, prior):
        """The customer's additive term."""
        raise NotImplementedError

    def product_part(self, features, ids, prior, training=False) -> dict:
        out = self._product_part(features, ids, prior, training=training)
        if self.n_affinity:  # (n, Dc): the product's content, unit length
            out["a"] = unit_rows(features[:, self.prod_content])
        return out

    def _product_part(self, features, ids, prior, training=False) -> dict:
        raise NotImplementedError

    def pair_part(self, c: dict, p: dict, pair, training=False):
        """The head's output for aligned rows. With content affinity, the cosines between the
        customer's content aggregates and the product's content (what content-kNN ranks by) enter
        the MLP and a linear term: a plain MLP over concatenated vectors approximates a dot product
        poorly (Rendle et al. 2020), and this one is what scores products nobody has rated yet and
        moves at once when live feedback changes the customer's aggregates."""
        parts = [c["t"], p["t"], c["t"] * p["t"], c["e"], p["e"], c["e"] * p["e"], pair]
        linear = 0.0
        if self.n_affinity:
            aff = ops.sum(c["a"] * p["a"][:, None, :], axis=-1)
            parts.append(aff)
            linear = self.affinity(aff)[:, 0]
        x = ops.concatenate(parts, axis=-1)
        return self.out(self.trunk(x, training=training))[:, 0] + c["b"] + p["b"] + linear


class RatingHead(HeadNet):
    """The rating (1-5): mu + the ridge biases + the MLP residual + a linear ("wide") term on the pair
    features, so the neighbourhood residual (ml.features.pair_features) corrects the bias prior
    directly. The product vector is a projection of its features: no per-product parameter."""

    kind = "rating"
    rated_rows_only = True

    def __init__(self, spec: ModelSpec, seed: int = 0, **kwargs) -> None:
        super().__init__(spec, **kwargs)
        self.prod_vec = layers.Dense(spec.id_dim, kernel_regularizer=self.reg, name="rating_product_vec")
        self._trunk("zeros")
        self.wide = layers.Dense(1, use_bias=False, kernel_initializer="zeros", name="rating_wide")

    def _offset(self, prior):
        return prior

    def _product_part(self, features, ids, prior, training=False) -> dict:
        return {"t": self.prod_tower(features, training=training), "e": self.prod_vec(features), "b": prior}

    def pair_part(self, c: dict, p: dict, pair, training=False):
        return super().pair_part(c, p, pair, training=training) + self.wide(pair)[:, 0] + self.spec.mu


class PickHead(HeadNet):
    """The logit that the customer picks the product: learned product embeddings and offsets (ids
    dropped at random in training, so content alone can score a never-rated product) and a
    popularity prior, a linear term on log1p(rating count) starting at slope 1, so the head ranks
    like popularity from the first epoch and learns what departs from it. The product's review text
    is masked out of its features (see HeadNet).

    With `spec.cold_dropout` (and product content) a row whose id is dropped is made to look like a
    never-rated product throughout, as DropoutNet (Volkovs et al. 2017) trains for cold start: its
    rating statistics (log count, has text) and the pair's co-rating signals are zeroed too.
    Without it such a row still shows how often the product was rated, so the content path learns
    to score products that have ratings and never sees the inputs a new arrival has."""

    kind = "pick"

    def __init__(self, spec: ModelSpec, seed: int = 0, **kwargs) -> None:
        super().__init__(spec, **kwargs)
        self.prod_id_drop = IdDropout(spec.id_dropout, seed=seed + 1)
        self.prod_emb = layers.Embedding(spec.id_rows, spec.id_dim, embeddings_regularizer=self.reg)
        self.prod_off = layers.Embedding(
            spec.id_rows, 1, embeddings_initializer="zeros", embeddings_regularizer=self.reg
        )
        self.popularity = layers.Dense(1, kernel_initializer="ones", name="pick_popularity")
        self.prod_keep = spec.layout.product.mask_without("review_text")
        self.log_count = spec.layout.product.span("log_count")
        stats = np.zeros(spec.layout.product.width, np.float32)
        for name in ("log_count", "has_text"):
            stats[spec.layout.product.span(name)] = 1.0
        self.rating_stats = stats  # the columns a never-rated product has at 0
        # only with content: without it a never-rated product has nothing to be scored by, and rows
        # made cold would teach the head nothing but to ignore the statistics
        self.cold_dropout = spec.cold_dropout and spec.has_content
        self._trunk("glorot_uniform")

    def _offset(self, prior):
        return ops.zeros_like(prior)

    def _product_part(self, features, ids, prior, training=False) -> dict:
        ids, keep = self.prod_id_drop.drop(ids, training=training)
        features = features * self.prod_keep
        out = {}
        if keep is not None and self.cold_dropout:  # dropped rows: as if never rated
            features = features * (1.0 - (1.0 - keep)[:, None] * self.rating_stats)
            out["keep"] = keep
        out.update(
            t=self.prod_tower(features, training=training),
            e=self.prod_emb(ids),
            b=self.prod_off(ids)[:, 0] + self.popularity(features[:, self.log_count])[:, 0],
        )
        return out

    def pair_part(self, c: dict, p: dict, pair, training=False):
        if "keep" in p:  # training with cold dropout: a dropped product has no co-ratings either
            pair = pair * p["keep"][:, None]
        return super().pair_part(c, p, pair, training=training)


HEAD_CLASSES = (RatingHead, PickHead)
HEADS = tuple(h.kind for h in HEAD_CLASSES)  # ("rating", "pick"): the model's output names


@keras.saving.register_keras_serializable(package="ml")
class HybridModel(keras.Model):
    """Inputs: the dict of `ml.features.ModelInputs`. Outputs dict `rating`, `pick`, each from its own
    head network (`RatingHead`, `PickHead`), so each can keep the weights of its own best
    validation epoch (`BestPerHead`): the rating head overfits sparse data within an epoch or
    two while the pick head is still learning."""

    def __init__(self, spec: ModelSpec, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.nets = {head.kind: head(spec, seed=seed + 10 * k) for k, head in enumerate(HEAD_CLASSES)}
        self.rating_net = self.nets["rating"]
        self.pick_net = self.nets["pick"]

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs, training=False):
        """Both heads on aligned rows. With `rated` (training batches, `RowBatches`: the rows with a
        rating) the rating head runs on those rows alone, its loss having no other: 1 row in
        1 + `TrainConfig.negatives`."""
        x = ModelInputs(**{k: v for k, v in inputs.items() if k != "rated"})
        rated = inputs.get("rated")
        out = {}
        for h, net in self.nets.items():
            xh = x
            if rated is not None and net.rated_rows_only:
                xh = ModelInputs(*(ops.take(v, rated, axis=0) for v in x))
            c = net.customer_part(xh.customer, xh.customer_prior, xh.history, training=training)
            p = net.product_part(xh.product, xh.product_id, xh.product_prior, training=training)
            out[h] = net.pair_part(c, p, xh.pair, training=training)
        return out

    def get_config(self) -> dict:
        return {"spec": self.spec.to_dict()}

    @classmethod
    def from_config(cls, config: dict) -> HybridModel:
        return cls(ModelSpec.from_dict(config["spec"]))


@dataclass
class TrainingRows:
    """The network's training examples in groups, one per observed rating: the group's customer side
    (`ml.features.CUSTOMER_INPUTS`, one row) and its rows (the product and pair inputs): the rated
    product first, then the products sampled as its negatives, which share that customer side
    (`ml.train.build_training_rows`). Stored once per group, not per row, the customer side is a
    ninth of what it was (on a 10k-product world ~500 MB less), and built a ninth as often."""

    customer: dict  # (G, ...) arrays
    pairs: dict  # (N, ...) arrays, each group's rows contiguous, its rated row first
    start: np.ndarray  # (G + 1,) int64: group g's rows are pairs[start[g]:start[g + 1]]
    rating: np.ndarray  # (G,) float32: the group's observed rating
    is_val: np.ndarray  # (G,) bool: validation groups, every one after every training group

    @property
    def n_train(self) -> int:
        return int((~self.is_val).sum())

    @property
    def n_rows(self) -> int:
        return int(self.start[-1])

    def split(self) -> tuple[TrainingRows, TrainingRows]:
        """(training groups, validation groups), as views: no copy of the arrays."""
        k = self.n_train
        if self.is_val[:k].any():
            raise ValueError("training groups must come before validation groups (build_training_rows)")
        r = int(self.start[k])
        return self._part(slice(0, k), slice(0, r), self.start[: k + 1]), self._part(
            slice(k, None), slice(r, None), self.start[k:] - r
        )

    def rated_rows(self) -> dict:
        """The model's inputs (aligned rows) of each group's rated row, in group order (the customer
        arrays as they are, the pair rows gathered)."""
        return {**self.customer, **{name: v[self.start[:-1]] for name, v in self.pairs.items()}}

    def _part(self, groups: slice, rows: slice, start: np.ndarray) -> TrainingRows:
        return TrainingRows(
            customer={name: v[groups] for name, v in self.customer.items()},
            pairs={name: v[rows] for name, v in self.pairs.items()},
            start=start,
            rating=self.rating[groups],
            is_val=self.is_val[groups],
        )


# `RowBatches.rated` is padded to a multiple of this: how many rated rows a batch holds varies, and a
# backend that compiles per shape (JAX) would compile a step for each count (~114 ± 10 at 1,024 rows)
RATED_PAD = 64


class RowBatches(keras.utils.PyDataset):
    """Batches of `TrainingRows` rows in a fresh random order each epoch (`shuffle`) or in order: each
    row with its group's customer side, and `rated`, the batch's rated rows (in batch order, padded to
    a multiple of RATED_PAD with row 0), which the rating head alone runs on (`HybridModel.call`).
    Targets: `rating` ([rating, 1] per rated row, [0, 0] per padding: `masked_mse`'s form) and `pick`
    (1 for a rated row, 0 for a negative). Rows, not whole groups: a
    batch of whole groups (a rating and its negatives together, the customer side computed once per
    group) fitted faster still but ranked worse on the 2023 ratings (docs/HISTORY.md). Keras' own adapter for
    in-memory arrays first copies every array into a backend tensor (~640 MB on a 10k-product world,
    once the peak of training); each batch here is a gather.

    `endless` (training: `fit(..., steps_per_epoch=len(batches))`): batch indices run on across
    epochs (`num_batches` None), so Keras keeps one data iterator for the whole fit. With a new one
    per epoch, tearing down the finished tf.data generator iterator stalled the next epoch's first
    step for 0.4-4.5 s with the cores idle (10k SYNTHETIC world, most epochs; docs/HISTORY.md, session 21):
    most likely the autotuning wait `fit_data` now avoids (session 22), not shown per epoch.
    An index's epoch is `idx // len(self)`, and each epoch's order the next permutation from `seed`,
    the batches a per-epoch RowBatches gives, in its order, whatever tf.data fetched
    ahead; `on_epoch_end` then leaves the order alone. So an epoch must be exactly `len(self)`
    steps (no `steps_per_execution` or step cap that would cut it)."""

    def __init__(
        self, rows: TrainingRows, batch_size: int, shuffle: bool, seed: int = 0, endless: bool = False
    ) -> None:
        super().__init__()
        self.rows = rows
        self.n = rows.n_rows
        self.owner = np.repeat(np.arange(len(rows.rating)), np.diff(rows.start))  # each row's group
        self.batch_size, self.shuffle, self.endless = batch_size, shuffle, endless
        self._seed = seed
        self._restart()

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    @property
    def num_batches(self) -> int | None:
        return None if self.endless else len(self)

    def _restart(self) -> None:
        self._rng = np.random.default_rng(self._seed)
        self._order = self._rng.permutation(self.n) if self.shuffle else None
        self._epoch = 0  # the epoch `_order` is for

    def _to_epoch(self, epoch: int) -> None:
        """The order of `epoch`: the permutations are drawn forwards, as Keras reads the batches;
        an earlier epoch (Keras reads the first two batches for their shapes before the fit, two
        epochs of a one-batch set) draws them again from the start."""
        if epoch < self._epoch:
            self._restart()
        while self._epoch < epoch:
            self._epoch += 1
            if self.shuffle:
                self._order = self._rng.permutation(self.n)

    def __getitem__(self, idx: int):
        if self.rows is None or not len(self):  # released (a fit that failed may still read ahead)
            raise IndexError("no training rows: released, or none to begin with")
        if self.endless:
            epoch, idx = divmod(idx, len(self))
            self._to_epoch(epoch)
        elif not 0 <= idx < len(self):
            raise IndexError(f"batch {idx} of {len(self)}")
        lo, hi = idx * self.batch_size, min((idx + 1) * self.batch_size, self.n)
        rows = np.arange(lo, hi) if self._order is None else np.sort(self._order[lo:hi])  # reads forwards
        group = self.owner[rows]
        is_rated = rows == self.rows.start[group]  # a group's first row is its rating
        x = {name: v[group] for name, v in self.rows.customer.items()}
        x.update({name: v[rows] for name, v in self.rows.pairs.items()})
        rated = np.flatnonzero(is_rated)
        pad = -len(rated) % RATED_PAD
        x["rated"] = np.concatenate([rated, np.zeros(pad, np.int64)]).astype(np.int32)
        rating = np.zeros((len(rated) + pad, 2), np.float32)  # padding: mask 0, no loss
        rating[: len(rated), 0] = self.rows.rating[group[rated]]
        rating[: len(rated), 1] = 1.0
        return x, {"rating": rating, "pick": is_rated.astype(np.float32)}

    def on_epoch_end(self) -> None:
        if not self.endless:
            self._to_epoch(self._epoch + 1)

    def release(self) -> None:
        """Drop the rows: Keras (and tf.data's generator registry) keep the dataset object alive after
        fit, and with it the views that keep the whole training rows in memory."""
        self.rows = self.owner = None


def fit_data(batches: RowBatches):
    """What `fit` reads `batches` from: the PyDataset itself, or on TensorFlow a tf.data pipeline
    over the same batches, in the same order, with tf.data's autotuning off. Keras' own pipeline
    for a PyDataset (`prefetch(AUTOTUNE)`) starts the autotuning thread, and deleting a dataset
    iterator waits out that thread's current sleep, which doubles up to 60 s while the iterator
    lives: 34 s after the last epoch of a cold 10k training run; in a small reproducer, 0.7-1.0 s
    after 4 of 12 three-epoch fits, none with autotuning off (docs/HISTORY.md, session 22)."""
    if keras.backend.backend() != "tensorflow":
        return batches
    if batches.shuffle and not batches.endless:
        # its order moves on in on_epoch_end, which Keras calls on a PyDataset only
        raise ValueError("a shuffled RowBatches must be endless")
    import tensorflow as tf

    def spec(a: np.ndarray):
        return tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype))

    def generate():  # a new iterator starts at batch 0, as Keras' generator over a PyDataset does
        for i in itertools.count() if batches.endless else range(len(batches)):
            yield batches[i]

    options = tf.data.Options()
    options.autotune.enabled = False
    ds = tf.data.Dataset.from_generator(generate, output_signature=tf.nest.map_structure(spec, batches[0]))
    if not batches.endless:  # a known length: Keras stops there instead of running into the end
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(batches)))
    return ds.prefetch(2).with_options(options)


class EpochReport(keras.callbacks.Callback):
    """Calls `report({"stage": "fit", "epoch": n, "epochs": m})` after each epoch: how a training job
    tells its client how far it is (early stopping can end it before epoch m)."""

    def __init__(self, report, epochs: int) -> None:
        super().__init__()
        self.report = report
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        self.report({"stage": "fit", "epoch": epoch + 1, "epochs": self.epochs})


class BestPerHead(keras.callbacks.Callback):
    """Early stopping per head: keeps each head's weights from its own best validation epoch and
    stops when neither head has improved by more than `min_delta` for `patience` epochs (on the
    2023 ratings the rating head otherwise creeps down by 2e-5 an epoch and never stops)."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        super().__init__()
        self.patience = patience
        self.min_delta = min_delta
        self.best = {h: np.inf for h in HEADS}
        self.best_epoch = {h: -1 for h in HEADS}  # last epoch that improved by more than min_delta
        self.saved: dict = {}
        self._mark = {h: np.inf for h in HEADS}  # the loss at best_epoch

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for h in HEADS:
            value = logs.get(f"val_{h}_loss")
            if value is None:
                continue
            if value < self.best[h]:
                self.best[h] = float(value)
                self.saved[h] = [np.array(w) for w in self.model.nets[h].get_weights()]
            if value < self._mark[h] - self.min_delta:
                self._mark[h], self.best_epoch[h] = float(value), epoch
        if all(epoch - self.best_epoch[h] >= self.patience for h in HEADS):
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        for h, weights in self.saved.items():
            self.model.nets[h].set_weights(weights)


def masked_mse(y_true, y_pred):
    """MSE over rows with a rating: y_true[:, 0] = rating, y_true[:, 1] = 1 if observed."""
    y_true = ops.reshape(y_true, (-1, 2))
    mask = y_true[:, 1]
    err = (ops.reshape(y_pred, (-1,)) - y_true[:, 0]) * mask
    return ops.sum(err * err) / ops.maximum(ops.sum(mask), 1.0)


def pick_bce(y_true, y_pred):
    """Binary cross-entropy on the pick logit."""
    y = ops.reshape(y_true, (-1,))
    return ops.mean(keras.losses.binary_crossentropy(y, ops.reshape(y_pred, (-1,)), from_logits=True))


def build_model(spec: ModelSpec, seed: int = 0) -> HybridModel:
    """A built (weights created) model for `spec`."""
    model = HybridModel(spec, seed=seed)
    model(ModelInputs.dummy(spec.layout)._asdict())
    return model
