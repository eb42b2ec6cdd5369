"""The hybrid Keras model: an MLP over customer/product representations and learned id embeddings.

Two heads, each its own network over the same inputs:
- `rating`: the score (1–5) the customer would give the product = mu + prior biases (a ridge bias
  model fitted first) + learned bias corrections + MLP residual, trained with MSE on observed ratings.
  Starting from the ridge biases matters on sparse data (a few ratings per customer), where free
  neural biases overfit;
- `interact`: the logit that the customer picks the product at all, trained with binary
  cross-entropy against sampled unrated products. Ratings alone rank obscure, rarely-rated products
  too high; the ranking score combines both (see `ranking_score`).
Written with `keras.ops` only, so it runs on TensorFlow (default) and JAX.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import numpy as np
from keras import layers, ops

from ml.features import PAIR_DIM, PRODUCT_LOG_COUNT

ARCHITECTURE_FIELDS = ("id_dim", "tower_dim", "hidden", "dropout", "id_dropout", "l2")


@dataclass
class ModelSpec:
    """Everything needed to rebuild the network before loading its weights."""

    n_customers: int
    n_products: int
    cust_dim: int
    prod_dim: int
    mu: float
    # architecture hyper-parameters; their defaults live in ml.train.TrainConfig
    id_dim: int
    tower_dim: int
    hidden: tuple[int, ...]
    dropout: float
    id_dropout: float
    l2: float
    prod_review_span: tuple[int, int] = (0, 0)  # where product features hold review text

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["prod_review_span"] = list(self.prod_review_span)
        return d

    def __post_init__(self) -> None:  # JSON gives lists
        self.hidden = tuple(self.hidden)
        self.prod_review_span = tuple(self.prod_review_span)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        return cls(**d)


@keras.saving.register_keras_serializable(package="ml")
class IdDropout(layers.Layer):
    """Replaces ids by 0 ("unknown") at random in training, so the content path learns to stand
    alone: that is what scores never-rated products and new customers."""

    def __init__(self, rate: float, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rate = rate
        self.seed_gen = keras.random.SeedGenerator(seed)

    def call(self, ids, training=None):
        if not training or self.rate <= 0:
            return ids
        keep = keras.random.uniform(ops.shape(ids), seed=self.seed_gen) >= self.rate
        return ops.where(keep, ids, ops.zeros_like(ids))


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
    """One head's network: customer/product towers over the features, the mean embedding of the
    products the customer rated (as in SVD++), the co-occurrence signal, an MLP over the pair and
    a 1-unit output.

    No free per-customer parameter exists in either head, and the rating head has none per
    product: the features are leave-one-out aggregates, and a learned per-entity vector next to
    one could memorise the full aggregate and recover the left-out review (S - (n-1)·mean_loo).
    The pick head keeps learned product embeddings and popularity offsets (with id dropout) but
    sees no per-product review text, for the same reason."""

    def __init__(self, spec: ModelSpec, kind: str, seed: int = 0, **kwargs) -> None:
        super().__init__(name=f"{kind}_net", **kwargs)
        self.spec = spec
        self.kind = kind
        reg = keras.regularizers.L2(spec.l2)
        self.cust_tower = _mlp((spec.tower_dim,), 0.0, spec.l2, f"{kind}_customer_tower")
        self.prod_tower = _mlp((spec.tower_dim,), 0.0, spec.l2, f"{kind}_product_tower")
        self.hist_emb = layers.Embedding(spec.n_products + 1, spec.id_dim, embeddings_regularizer=reg)
        if kind == "interact":
            self.prod_id_drop = IdDropout(spec.id_dropout, seed=seed + 1)
            self.prod_emb = layers.Embedding(spec.n_products + 1, spec.id_dim, embeddings_regularizer=reg)
            self.prod_off = layers.Embedding(
                spec.n_products + 1, 1, embeddings_initializer="zeros", embeddings_regularizer=reg
            )
            # popularity prior: a linear term on log1p(rating count), starting at slope 1, so the
            # head ranks like popularity from the first epoch and learns what departs from it
            self.popularity = layers.Dense(1, kernel_initializer="ones", name=f"{kind}_popularity")
            start, stop = spec.prod_review_span
            keep = np.ones(spec.prod_dim, np.float32)
            keep[start:stop] = 0.0
            self.prod_keep = keep
        else:
            self.prod_vec = layers.Dense(spec.id_dim, kernel_regularizer=reg, name=f"{kind}_product_vec")
        self.trunk = _mlp(spec.hidden, spec.dropout, spec.l2, f"{kind}_trunk")
        init = "zeros" if kind == "rating" else "glorot_uniform"
        self.out = layers.Dense(1, kernel_initializer=init, name=f"{kind}_out")
        # "wide" part of the rating head: a linear term on the pair features, so the neighbourhood
        # residual (ml.features.pair_features) can correct the bias prior directly
        self.wide = (
            layers.Dense(1, use_bias=False, kernel_initializer="zeros", name=f"{kind}_wide")
            if kind == "rating"
            else None
        )

    def build(self, input_shape=None):
        self.built = True

    def customer_part(self, features, prior, history, training=False) -> dict:
        mask = ops.cast(ops.greater(history, 0), "float32")
        hist = ops.sum(self.hist_emb(history) * mask[:, :, None], axis=1) / ops.maximum(
            ops.sum(mask, axis=1, keepdims=True), 1.0
        )
        offset = prior if self.kind == "rating" else ops.zeros_like(prior)
        return {"t": self.cust_tower(features, training=training), "e": hist, "b": offset}

    def product_part(self, features, ids, prior, training=False) -> dict:
        if self.kind == "rating":
            return {
                "t": self.prod_tower(features, training=training),
                "e": self.prod_vec(features),
                "b": prior,
            }
        ids = self.prod_id_drop(ids, training=training)
        features = features * self.prod_keep
        log_count = features[:, PRODUCT_LOG_COUNT : PRODUCT_LOG_COUNT + 1]
        return {
            "t": self.prod_tower(features, training=training),
            "e": self.prod_emb(ids),
            "b": self.prod_off(ids)[:, 0] + self.popularity(log_count)[:, 0],
        }

    def pair_part(self, c: dict, p: dict, pair, training=False):
        x = ops.concatenate([c["t"], p["t"], c["t"] * p["t"], c["e"], p["e"], c["e"] * p["e"], pair], axis=-1)
        y = self.out(self.trunk(x, training=training))[:, 0] + c["b"] + p["b"]
        if self.wide is None:
            return y
        return y + self.wide(pair)[:, 0] + self.spec.mu


HEADS = ("rating", "interact")


@keras.saving.register_keras_serializable(package="ml")
class HybridModel(keras.Model):
    """Inputs: dict with `customer` (n, cust_dim), `product` (n, prod_dim) float features,
    `product_id` int positions + 1 (0 = unknown), `customer_prior`, `product_prior`
    (n,) ridge biases, `history` (n, H) rated product ids (0 = none) and `pair` (n, PAIR_DIM) the
    co-occurrence and neighbourhood signals (ml.features.pair_features). Outputs dict `rating`,
    `interact`, each from its own `HeadNet`, so each can keep the weights of its own best
    validation epoch (`BestPerHead`): the rating head overfits sparse data within an epoch or
    two while the pick head is still learning."""

    def __init__(self, spec: ModelSpec, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.nets = {h: HeadNet(spec, h, seed=seed + 10 * k) for k, h in enumerate(HEADS)}
        self.rating_net = self.nets["rating"]
        self.interact_net = self.nets["interact"]

    def build(self, input_shape=None):
        self.built = True

    def customer_part(self, features, prior, history, training=False) -> dict:
        """Per-customer halves of both heads (computed once per customer at serving time)."""
        return {
            f"{h}.{k}": v
            for h, net in self.nets.items()
            for k, v in net.customer_part(features, prior, history, training=training).items()
        }

    def product_part(self, features, ids, prior, training=False) -> dict:
        """Per-product halves of both heads (computed once per catalog at serving time)."""
        return {
            f"{h}.{k}": v
            for h, net in self.nets.items()
            for k, v in net.product_part(features, ids, prior, training=training).items()
        }

    def pair_part(self, c: dict, p: dict, pair, training=False) -> dict:
        """Both heads for aligned rows of customer and product parts and pair features (n, 1)."""
        out = {}
        for h, net in self.nets.items():
            cc = {k.split(".", 1)[1]: v for k, v in c.items() if k.startswith(h + ".")}
            pp = {k.split(".", 1)[1]: v for k, v in p.items() if k.startswith(h + ".")}
            out[h] = net.pair_part(cc, pp, pair, training=training)
        return out

    def call(self, inputs, training=False):
        c = self.customer_part(
            inputs["customer"], inputs["customer_prior"], inputs["history"], training=training
        )
        p = self.product_part(
            inputs["product"], inputs["product_id"], inputs["product_prior"], training=training
        )
        return self.pair_part(c, p, inputs["pair"], training=training)

    def get_config(self) -> dict:
        return {"spec": self.spec.to_dict()}

    @classmethod
    def from_config(cls, config: dict) -> HybridModel:
        return cls(ModelSpec.from_dict(config["spec"]))


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


def interact_bce(y_true, y_pred):
    """Binary cross-entropy on the interaction logit."""
    y = ops.reshape(y_true, (-1,))
    return ops.mean(keras.losses.binary_crossentropy(y, ops.reshape(y_pred, (-1,)), from_logits=True))


def ranking_score(rating: np.ndarray, interact_logit: np.ndarray, rating_weight: float = 1.0) -> np.ndarray:
    """P(customer picks it) × (predicted rating on a 0–1 scale) ** rating_weight.

    rating_weight 0 ranks by the pick probability alone; larger values favour what the customer
    would rate highly. Training picks it on validation customers (see ml.train)."""
    p = 1.0 / (1.0 + np.exp(-np.clip(interact_logit, -30, 30)))
    return p * ((np.clip(rating, 1.0, 5.0) - 0.5) / 4.5) ** rating_weight


def build_model(spec: ModelSpec, seed: int = 0) -> HybridModel:
    """A built (weights created) model for `spec`."""
    model = HybridModel(spec, seed=seed)
    dummy = {
        "customer": np.zeros((1, spec.cust_dim), np.float32),
        "product": np.zeros((1, spec.prod_dim), np.float32),
        "product_id": np.zeros((1,), np.int32),
        "customer_prior": np.zeros((1,), np.float32),
        "history": np.zeros((1, 1), np.int32),
        "pair": np.zeros((1, PAIR_DIM), np.float32),
        "product_prior": np.zeros((1,), np.float32),
    }
    model(dummy)
    return model
