"""Training: data → embeddings → feature tables → Keras hybrid model → versioned artifact directory.

The model is built and fitted in memory; its ranking rule is chosen, and its retriever distilled,
on the serving object over that in-memory artifact (`ml.recommender.Recommender(Artifact)`), and the
artifact is then written once (`ml.artifact.Artifact.write`: atomic, the manifest last).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ml.artifact import ARTIFACT_FORMAT, Artifact
from ml.baselines import BiasBaseline
from ml.config import Settings
from ml.embed import Embeddings, embed_dataset
from ml.features import (
    Exclusion,
    FeatureTables,
    build_tables,
    customer_inputs,
    customer_prior,
    pair_inputs,
    product_content,
    product_prior,
    reduce_block,
)
from ml.heap import generator_fit
from ml.model import (
    ARCHITECTURE_FIELDS,
    BestPerHead,
    EpochReport,
    ModelSpec,
    RowBatches,
    TrainingRows,
    build_model,
    fit_data,
    masked_mse,
    pick_bce,
)
from ml.ranking import choose_ranking
from ml.recommender import Recommender
from ml.retrieval import RetrievalConfig, build_retriever, teacher_from_recommender
from ml.split import split_reviews

log = logging.getLogger(__name__)

# Told how far a training run is: {"stage": ...} dicts (fit_artifact says which), JSON-able.
Report = Callable[[dict], None]


@dataclass
class TrainConfig:
    """Hyper-parameters; every field is recorded in the manifest."""

    epochs: int = 40
    # Rows per step; 0: chosen by the number of training rows (`step_plan`), with the learning rate
    # (given for BASE_BATCH rows) scaled to it. A set size is used as it is, with learning_rate as given.
    batch_size: int = 0
    learning_rate: float = 1e-3
    negatives: int = 8
    val_fraction: float = 0.3  # share of customers whose latest training rating validates
    patience: int = 4
    min_delta: float = 1e-4  # a smaller drop of a head's validation loss does not count as progress
    seed: int = 0
    use_images: bool = True
    use_text: bool = True
    pca_dim: int = 64
    # network architecture (copied into ml.model.ModelSpec)
    id_dim: int = 32
    tower_dim: int = 64
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.2
    id_dropout: float = 0.25
    l2: float = 1e-4
    affinity: bool = True  # the heads take customer-product content cosines (ml.model.AFFINITY_BLOCKS)
    # pick rows with a dropped id look never-rated (ml.model.PickHead). Off: at 10^6 products the
    # retriever distilled from a head trained with it found far less of its top 10 (README)
    cold_dropout: bool = False
    history_len: int = 32
    verbose: int = 2
    progress: bool = True
    # Build the two-tower retriever: "auto" only for catalogs served two-stage (more than
    # Settings.exact_max_products products), "always" or "never". Distilling costs seconds on a
    # toy world and minutes on a large one, for nothing when every request is scored exactly.
    retriever: str = "auto"

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "hidden" in d:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)


def _positions(ids: pd.Series, index: pd.Index) -> np.ndarray:
    return index.get_indexer(ids.astype(str)).astype(np.int64)


def _sample_negatives(u, i, n_products, k, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k unrated products per positive row: (source row, customer, product)."""
    src = np.repeat(np.arange(len(u)), k)
    nu = u[src]
    ni = rng.integers(0, n_products, size=len(src))
    rated = np.unique(u * n_products + i)
    for _ in range(5):
        clash = np.isin(nu * n_products + ni, rated)
        if not clash.any():
            break
        ni[clash] = rng.integers(0, n_products, size=int(clash.sum()))
    keep = ~np.isin(nu * n_products + ni, rated)
    return src[keep], nu[keep], ni[keep]


def _last_rows(u: np.ndarray, recency: np.ndarray | None, rng, fraction: float) -> np.ndarray:
    """Validation rows that look like the test rows: the latest rating of a random `fraction`
    of the customers with at least two ratings (so early stopping picks what generalises forward)."""
    n = len(u)
    rec = np.arange(n) if recency is None else recency
    order = np.lexsort((rec, u))
    last = np.zeros(n, bool)
    is_last = np.append(u[order][1:] != u[order][:-1], True)
    counts = np.bincount(u)
    chosen = rng.random(counts.shape[0]) < fraction
    rows = order[is_last]
    last[rows[(counts[u[rows]] >= 2) & chosen[u[rows]]]] = True
    return last


ROWS_CHUNK = 32_768  # training rows whose features are built at once (build_training_rows)


@dataclass
class _LeftOut:
    """One side's left-out training review for every row of that side (a group's customer side, a
    pair row's product side), by position: row k leaves out
    review `review[k]` times `active[k]` (0: nothing). `take` gathers a chunk's `Exclusion`, so the
    review vectors are never copied for all rows at once (they were: ~270 MB on a 10k-product world,
    at the peak of training's memory)."""

    review: np.ndarray  # (rows,) int64
    active: np.ndarray  # (rows,) float32 0/1

    def take(self, rows, rating: np.ndarray, review_vecs: np.ndarray, has_text: np.ndarray) -> Exclusion:
        idx, a = self.review[rows], self.active[rows]
        return Exclusion(a, rating[idx] * a, review_vecs[idx] * a[:, None], has_text[idx] * a)


def build_training_rows(
    tables: FeatureTables,
    u: np.ndarray,
    i: np.ndarray,
    rating: np.ndarray,
    review_vecs: np.ndarray,
    has_text: np.ndarray,
    config: TrainConfig,
    val_pos: np.ndarray,
    loo_prior: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainingRows:
    """A group per observed rating (`TrainingRows`): its positive row and its sampled negatives, each
    with its own review left out.

    A positive (u, i) excludes u's review of i from both sides. Its negatives (u, j) reuse the same
    customer-side exclusion (so the group's customer side is built once), and leave a random review of
    j out of j's side, so positives and negatives see features of the same kind (counts one lower) and
    the count cannot give them away. `loo_prior`: each positive's bias-model (b_u, b_i) with its own
    rating left out of the fit (`BiasBaseline.leave_one_out`); its negatives share the customer's."""
    rng = np.random.default_rng(config.seed)
    n = len(u)
    ht = has_text.astype(np.float32)
    r = rating.astype(np.float32)

    src, nu, ni = _sample_negatives(u, i, tables.n_products, config.negatives, rng)
    by_product = np.argsort(i, kind="stable")
    counts = np.bincount(i, minlength=tables.n_products)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    c = counts[ni]
    pick = by_product[np.minimum(starts[ni] + (rng.random(len(ni)) * c).astype(np.int64), max(n - 1, 0))]
    # Which review each row leaves out of each side, as positions (no copy of any review vector):
    # a positive its own on both sides; a negative its source's on the customer side and `pick` (a
    # review of its product, none when the product has no review) on the product side.
    cust_ex = _LeftOut(np.arange(n), np.ones(n, np.float32))
    prod_ex = _LeftOut(
        np.concatenate([np.arange(n), pick]), np.concatenate([np.ones(n), c > 0]).astype(np.float32)
    )
    reviews = (r, review_vecs, ht)
    all_u, all_i, owner = (
        np.concatenate([u, nu]),
        np.concatenate([i, ni]),
        np.concatenate([np.arange(n), src]),
    )
    if loo_prior is not None:
        loo_u, loo_i = (np.asarray(x, np.float32) for x in loo_prior)
        prod_prior = np.concatenate([loo_i, product_prior(tables, ni)])
    else:
        loo_u, prod_prior = customer_prior(tables, u), None
    # Groups shuffled, the training ones first, then the validation ones, so that fit_model takes each
    # part as a view, not a copy; each group's rows follow its order, its positive first.
    groups = np.concatenate(
        [rng.permutation(np.flatnonzero(~val_pos)), rng.permutation(np.flatnonzero(val_pos))]
    )
    rows, start = _group_rows(groups, n, src)

    def customer_chunk(g):
        return customer_inputs(tables, u[g], cust_ex.take(g, *reviews), i[g], loo_u[g])

    def pair_chunk(k):
        p = None if prod_prior is None else prod_prior[k]
        return pair_inputs(
            tables,
            all_u[k],
            all_i[k],
            prod_ex.take(k, *reviews),
            (k < n).astype(np.float32),
            loo_u[owner[k]],
            p,
        )

    return TrainingRows(
        _built(customer_chunk, groups), _built(pair_chunk, rows), start, r[groups], val_pos[groups]
    )


def _group_rows(groups: np.ndarray, n: int, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions, group offsets): the positions (positives 0..n-1, then the negatives in `src` order)
    of the rows of `groups`, group after group, each group's positive first and then its negatives
    (those whose `src` is the group); `TrainingRows.start` of that order."""
    neg = np.argsort(src, kind="stable")
    size = np.bincount(src, minlength=n)
    first_neg = np.concatenate([[0], np.cumsum(size)[:-1]])
    sizes = 1 + size[groups]
    start = np.concatenate([[0], np.cumsum(sizes)])
    offset = np.arange(int(start[-1])) - np.repeat(start[:-1], sizes)  # 0: the positive
    g = np.repeat(groups, sizes)
    out = g.astype(np.int64)
    is_neg = offset > 0
    out[is_neg] = n + neg[first_neg[g[is_neg]] + offset[is_neg] - 1]
    return out, start


def _built(build: Callable[[np.ndarray], dict], positions: np.ndarray) -> dict[str, np.ndarray]:
    """`build(positions)`'s arrays, built ROWS_CHUNK positions at a time into arrays allocated once:
    every feature is a function of its own row, and the temporaries of a whole build (several times
    the rows' size on a 10k-product world) were the peak of training's memory."""
    out: dict[str, np.ndarray] = {}
    for s in range(0, max(len(positions), 1), ROWS_CHUNK):  # once when empty: the arrays' shapes
        part = build(positions[s : s + ROWS_CHUNK])
        for name, v in part.items():
            if name not in out:
                out[name] = np.empty((len(positions), *v.shape[1:]), v.dtype)
            out[name][s : s + len(v)] = v
    return out


BASE_BATCH = 256  # rows per step of a small data set (and what TrainConfig.learning_rate is for)
MAX_BATCH = 1024
MAX_STEPS = 256  # an automatic batch grows (powers of two, up to MAX_BATCH) while an epoch has more steps


def step_plan(config: TrainConfig, n_rows: int) -> tuple[int, float]:
    """(batch size, learning rate) for `n_rows` training rows.

    A step's cost on the CPU is mostly fixed, not per row (hundreds of small ops: 20 ms for 256 rows,
    37 ms for 1,024 on this 2-core machine, 10k-product world), so a large data set trains in larger
    batches: an epoch of 263k rows took 21 s at 256 and 9.6 s at 1,024. Adam's step size grows with
    the square root of the batch (Hoffer et al. 2017; Malladi et al. 2022), keeping the update noise
    about the same. Small data sets (the demo world, the tests) keep 256 rows and the given rate."""
    if config.batch_size < 0:
        raise ValueError(f"batch_size must be 0 (automatic) or positive, got {config.batch_size}")
    if config.batch_size > 0:
        return config.batch_size, config.learning_rate
    batch = BASE_BATCH
    while batch < MAX_BATCH and n_rows > batch * MAX_STEPS:
        batch *= 2
    return batch, config.learning_rate * math.sqrt(batch / BASE_BATCH)


def fit_model(tables: FeatureTables, rows: TrainingRows, config: TrainConfig, report: Report | None = None):
    """Fit the Keras model with a validation split and per-head early stopping; returns
    (model, spec, history).
    `report`: told each finished epoch (ml.model.EpochReport)."""
    import keras

    keras.utils.set_random_seed(config.seed)
    spec = ModelSpec(
        n_customers=tables.n_customers,
        n_products=tables.n_products,
        layout=tables.layout,
        mu=tables.mu,
        n_ids=tables.n_ids,
        **{name: getattr(config, name) for name in ARCHITECTURE_FIELDS},
    )
    model = build_model(spec, seed=config.seed)
    train, val = rows.split()
    batch, rate = step_plan(config, train.n_rows)
    model.compile(optimizer=keras.optimizers.Adam(rate), loss={"rating": masked_mse, "pick": pick_bce})
    has_val = len(val.rating) > 0
    callbacks = [BestPerHead(config.patience, config.min_delta)] if has_val else []
    if report is not None:
        callbacks.append(EpochReport(report, config.epochs))
    batches = RowBatches(train, batch, True, config.seed, endless=True)
    val_batches = RowBatches(val, batch, False) if has_val else None
    try:
        with generator_fit():  # malloc as TensorFlow sets it for the fit, large arrays on the heap after
            history = model.fit(
                fit_data(batches),
                validation_data=None if val_batches is None else fit_data(val_batches),
                epochs=config.epochs,
                steps_per_epoch=len(batches),
                shuffle=False,  # RowBatches draws each epoch's order (Keras' own ignores an endless set)
                callbacks=callbacks,
                verbose=config.verbose,
            )
    finally:
        for b in (batches, val_batches):
            if b is not None:
                b.release()
    hist = {k: [float(x) for x in v] for k, v in history.history.items()}
    return serving_copy(model, spec), spec, hist


def serving_copy(model, spec: ModelSpec):
    """The fitted network's weights in a fresh, uncompiled model: the optimizer's state (Adam keeps
    two slots per weight, 2/3 of the weights file on a large catalog) is let go for the rest of
    training and never written into the artifact, which serving never reads it from."""
    fresh = build_model(spec)
    fresh.set_weights(model.get_weights())
    return fresh


def product_records(products: pd.DataFrame) -> list[dict]:
    """products.json: what serving shows (title, image) and filters on (category path, price; an unknown
    price is null), so a worker needs no training data files to filter (ml.catalog.read_attributes)."""
    records = products[["product_id", "title", "image", "categories"]].fillna("").to_dict("records")
    for record, price in zip(records, pd.to_numeric(products["price"], errors="coerce")):
        record["price"] = float(price) if np.isfinite(price) and price >= 0 else None
    return records


def is_synthetic(dataset) -> bool:
    p = Path(dataset.path)
    return (p / "SYNTHETIC.md").is_file() if p.is_dir() else False


@dataclass
class Ratings:
    """The training ratings as positions: customers (sorted ids), products (the catalog's order)."""

    customer_ids: np.ndarray
    product_index: pd.Index
    u: np.ndarray
    i: np.ndarray
    rating: np.ndarray

    @classmethod
    def of(cls, train: pd.DataFrame, products: pd.DataFrame) -> Ratings:
        if len(train) == 0:
            raise ValueError("no training ratings: the data set is empty after the split")
        product_index = pd.Index(products["product_id"].astype(str))
        customer_ids = np.sort(train["customer_id"].astype(str).unique())
        u = _positions(train["customer_id"], pd.Index(customer_ids))
        i = _positions(train["product_id"], product_index)
        if (i < 0).any():
            raise ValueError("reviews name products missing from the product table")
        return cls(customer_ids, product_index, u, i, train["rating"].to_numpy(np.float32))


def _embed(
    products: pd.DataFrame, train: pd.DataFrame, config: TrainConfig, settings: Settings, stages: dict
):
    """(embeddings, image report): photos given as URLs are localised into the image cache (a failed
    one is a missing photo) while the texts are embedded, then the images (all cached by content);
    seconds into `stages` (`ml.embed.STAGES`; fetch overlaps encoders and embed_texts: the stages add up
    to more than the wall time)."""
    image_report: dict = {}

    def localize(products: pd.DataFrame, stop) -> pd.DataFrame:
        from ml.data.images import fetch_images

        local, report = fetch_images(products, settings.cache_dir, progress=config.progress, stop=stop)
        image_report.update(report)
        return local

    emb = embed_dataset(
        products,
        train,
        settings.cache_dir,
        config.use_images,
        config.use_text,
        config.progress,
        verify_sample=settings.cache_verify_sample,
        localize=localize if config.use_images else None,
    )
    stages.update({"fetch": 0.0, **emb.stats.get("seconds", {})})
    return emb, image_report


def _recency(train: pd.DataFrame) -> np.ndarray:
    """Each training row's rank in time (timestamp, then file order): larger is later."""
    ts = train["timestamp"].fillna(-np.inf).to_numpy() if "timestamp" in train else np.zeros(len(train))
    order_col = train["order"].to_numpy() if "order" in train else np.arange(len(train))
    return np.lexsort((order_col, ts)).argsort()


class Prepared(NamedTuple):
    """What training fits from: the tables serving reads, the training rows, the validation rows
    mask (the network's), and for the ranking's choice `last` (every customer's latest rating, the
    validation rows among them) with `fit_tables`, the same tables without those ratings."""

    tables: FeatureTables
    rows: TrainingRows
    val_rows: np.ndarray
    last: np.ndarray
    fit_tables: FeatureTables


def _tables_and_rows(r: Ratings, emb: Embeddings, train: pd.DataFrame, config: TrainConfig, drop_raw: bool):
    """(feature tables, training rows, validation rows mask) from the ratings and the embeddings;
    `drop_raw`: let go of the raw vectors once reduced (training holds one copy of them at most).

    The rating head starts from a ridge bias model. Serving uses biases fitted on every training
    rating; each training (and validation) row sees its biases with its own rating left out, as a
    rating to predict would: in-sample biases contain the answer (on the 2023 set they fit the
    training ratings with RMSE 0.82, against 1.12 on held-out ones)."""
    if emb.review_text is not None:
        review_vecs = reduce_block(emb.review_text, emb.has_review_text, config.pca_dim, config.seed)
    else:
        review_vecs = np.zeros((len(train), 0), np.float32)
    content = product_content(
        emb.product_image, emb.has_image, emb.product_text, emb.has_product_text, config.pca_dim, config.seed
    )
    if drop_raw:
        emb.product_image = emb.product_text = emb.review_text = None
    recency = _recency(train)
    val_rows = _last_rows(r.u, recency, np.random.default_rng(config.seed), config.val_fraction)
    every = np.ones(len(r.u), bool)
    tables, prior = _build_tables(r, every, review_vecs, emb.has_review_text, content, recency, config)
    # the ranking rule is chosen on every customer's latest rating (val_rows among them), scored from
    # tables that hold none of them
    last = _last_rows(r.u, recency, np.random.default_rng(config.seed), 1.0)
    fit_tables, _ = _build_tables(
        r, ~last, review_vecs, emb.has_review_text, content, recency, config, ids=tables.prod_id
    )
    rows = build_training_rows(
        tables,
        r.u,
        r.i,
        r.rating,
        review_vecs,
        emb.has_review_text,
        config,
        val_rows,
        loo_prior=prior.leave_one_out(r.u, r.i, r.rating),
    )
    return Prepared(tables, rows, val_rows, last, fit_tables)


def _build_tables(
    r: Ratings, keep: np.ndarray, review_vecs, has_text, content, recency, config: TrainConfig, ids=None
) -> tuple[FeatureTables, BiasBaseline]:
    """Feature tables (and the ridge bias model they start from) of the ratings `keep` selects;
    `ids`: the network's id rows (tables for a network fitted on other ratings)."""
    n_c, n_p = len(r.customer_ids), len(r.product_index)
    u, i, rating = r.u[keep], r.i[keep], r.rating[keep]
    prior = BiasBaseline().fit(pd.DataFrame({"u": u, "i": i, "rating": rating}), n_c, n_p)
    tables = build_tables(
        r.customer_ids,
        r.product_index.to_numpy(str),
        u,
        i,
        rating,
        review_vecs[keep],
        has_text[keep],
        content,
        prior.mu_,
        recency[keep],
        config.history_len,
        prior.b_u_,
        prior.b_i_,
        ids=ids,
    )
    return tables, prior


def _validation_metrics(model, rows: TrainingRows, epochs_run: int) -> dict:
    """Epochs run, and the rating head's RMSE/MAE on the validation ratings (clipped to 1-5)."""
    metrics: dict = {"epochs_run": epochs_run}
    _, val = rows.split()
    if len(val.rating):
        pred = np.clip(np.asarray(model.predict(val.rated_rows(), verbose=0)["rating"]), 1, 5)
        err = pred - val.rating
        metrics.update(val_rmse=float(np.sqrt(np.mean(err**2))), val_mae=float(np.mean(np.abs(err))))
    return metrics


def _manifest(
    version: str,
    dataset,
    train,
    r: Ratings,
    emb: Embeddings,
    image_report: dict,
    config,
    split,
    spec,
    metrics,
) -> dict:
    """The manifest's description of the run (ranking, retrieval and timings are added after)."""
    return {
        "format": ARTIFACT_FORMAT,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": {
            "path": str(dataset.path),
            "source": dataset.source,
            "fingerprint": dataset.fingerprint(),
            "synthetic": is_synthetic(dataset),
            "n_ratings": int(len(dataset.reviews)),
            "n_train": int(len(train)),
            "n_customers": int(len(r.customer_ids)),
            "n_products": int(len(r.product_index)),
        },
        "split": split,
        "encoders": emb.encoders,
        "images": {"with_photo": int(np.count_nonzero(emb.has_image)), **image_report},
        "embedding": {k: v for k, v in emb.stats.items() if k != "seconds"},
        "config": {**asdict(config), "hidden": list(config.hidden)},
        "spec": spec.to_dict(),
        "metrics": metrics,
    }


def fit_artifact(
    dataset,
    train: pd.DataFrame,
    out_dir: Path,
    config: TrainConfig,
    split: str,
    settings: Settings | None = None,
    embeddings: Embeddings | None = None,
    retrieval: RetrievalConfig | None = None,
    timings: dict | None = None,
    report: Report | None = None,
    feedback: dict | None = None,
) -> dict:
    """Train on `train` (rows of dataset.reviews) and write the artifact directory `out_dir`.

    `embeddings`: precomputed (products, and `train`'s reviews in order) instead of running the
    encoders (the catalog benchmark generates content vectors for a million products).
    `retrieval`: two-tower/index settings, when the retriever is built (`TrainConfig.retriever`).
    `timings`: seconds of stages before this call (`load`), recorded with encoders, fetch, embed_images,
    embed_texts and fit (everything after embedding but the write) in the manifest's `stages_s`,
    with the fit's parts in `stages_s.fit_parts` (rows, network, validation, ranking; retriever
    when one is built).
    `report`: told each stage as it starts ({"stage": "embed" | "fit" | "finish"}) and each epoch.
    `feedback`: what live feedback `train` holds (ml.feedback.merge_into's report), for the manifest:
    a worker replays the feedback stream after its `last_id`."""
    settings = settings or Settings.from_env()
    report = report or (lambda _: None)
    started, out_dir = time.time(), Path(out_dir)
    products, train = dataset.products.reset_index(drop=True), train.reset_index(drop=True)
    r = Ratings.of(train, products)
    log.info("embedding %d products and %d training reviews", len(products), len(train))
    report({"stage": "embed", "products": len(products), "reviews": len(train)})
    stages = dict(timings or {})
    emb, image_report = (
        (embeddings, {}) if embeddings is not None else _embed(products, train, config, settings, stages)
    )
    fit_started = time.time()
    parts = _Clock()  # the fit stage's parts, for the manifest (stages_s.fit_parts)
    # the raw vectors of embeddings the encoders made here are let go once reduced
    tables, rows, val_rows, last, fit_tables = _tables_and_rows(
        r, emb, train, config, drop_raw=embeddings is None
    )
    parts.lap("rows")
    report({"stage": "fit", "epoch": 0, "epochs": config.epochs})
    model, spec, hist = fit_model(tables, rows, config, report)
    parts.lap("network")
    report({"stage": "finish"})  # validation metrics, rating weight, retriever, writing
    metrics = _validation_metrics(model, rows, len(hist.get("loss", [])))
    # fit_model's batch and rate: step_plan is a function of the config and the training rows alone
    steps = step_plan(config, rows.split()[0].n_rows)
    metrics.update(batch_size=steps[0], learning_rate=steps[1])
    parts.lap("validation")
    del rows  # the largest arrays of training (10k-product world: ~290 MB), not needed from here
    manifest = _manifest(out_dir.name, dataset, train, r, emb, image_report, config, split, spec, metrics)
    if feedback is not None:
        manifest["feedback"] = feedback
    artifact = Artifact(manifest, model, tables, r.u, r.i, product_records(products), hist)
    # The ranking weights and the retriever are chosen on the model in memory (the serving object
    # over it, exact path); the artifact is written once, complete.
    rec = Recommender(artifact)
    fit = ~last
    fit_rec = Recommender(replace(artifact, tables=fit_tables, seen_u=r.u[fit], seen_i=r.i[fit]))
    manifest["ranking"] = choose_ranking(
        fit_rec,
        r.u[fit],
        r.i[fit],
        r.u[last],
        r.i[last],
        unseen=val_rows[last],
        seed=config.seed,
        full=tables,
    )
    del fit_rec, fit_tables
    parts.lap("ranking")
    if wants_retriever(config, len(products), settings):
        cfg = retrieval or RetrievalConfig(seed=config.seed)
        artifact.retriever = build_retriever(model, tables, teacher_from_recommender(rec), cfg)
        manifest["retrieval"] = artifact.retriever.meta
        parts.lap("retriever")
    manifest["training_seconds"] = round(time.time() - started, 1)
    # "fit": everything after embedding except the artifact's write below
    manifest["stages_s"] = {**stages, "fit": round(time.time() - fit_started, 1), "fit_parts": parts.laps}
    artifact.write(out_dir)
    log.info("model written to %s (%.1fs)", out_dir, manifest["training_seconds"])
    return manifest


class _Clock:
    """Seconds between successive `lap`s, by name."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.time()

    def lap(self, name: str) -> None:
        now = time.time()
        self.laps[name] = round(now - self._t, 1)
        self._t = now


def wants_retriever(config: TrainConfig, n_products: int, settings: Settings) -> bool:
    """Whether training builds the retriever (see TrainConfig.retriever)."""
    if config.retriever not in ("auto", "always", "never"):
        raise ValueError(f"retriever must be auto, always or never, got {config.retriever!r}")
    return config.retriever == "always" or (
        config.retriever == "auto" and n_products > settings.exact_max_products
    )


def train_model(
    data,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    split: str = "none",
    settings: Settings | None = None,
    report: Report | None = None,
    feedback_file: str | Path | None = None,
) -> dict:
    """Load `data` (a path, or a loaded Dataset), split it, train and write the artifact; returns the
    manifest.
    `feedback_file`: live feedback (ml.feedback.FeedbackFile) to train on with the data: its ratings
    of the catalog's products join the reviews (a customer's latest rating of a product wins)."""
    from ml.data import load_dataset

    t0 = time.time()
    dataset = load_dataset(data) if isinstance(data, (str, Path)) else data
    held = None
    if feedback_file is not None:
        from ml.feedback import FeedbackFile, merge_into

        products = pd.Index(dataset.products["product_id"].astype(str))
        dataset.reviews, held = merge_into(dataset.reviews, products, FeedbackFile(feedback_file).read())
        log.info("live feedback: %s", held)
    train, _ = split_reviews(dataset.reviews, split)
    return fit_artifact(
        dataset,
        train,
        Path(out_dir),
        config or TrainConfig(),
        split,
        settings,
        timings={"load": round(time.time() - t0, 2)},
        report=report,
        feedback=held,
    )
