"""Training writes a complete, versioned artifact; a held-out review (its text, its rating) is never
an input."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ml.train
from ml.data import load_dataset
from ml.ranking import choose_ranking
from ml.recommender import Recommender
from ml.split import split_reviews
from ml.train import BASE_BATCH, MAX_BATCH, MAX_STEPS, TrainConfig, step_plan, train_model
from tests.test_heap import is_own_mapping, needs_glibc

pytestmark = pytest.mark.slow
FAST = TrainConfig(epochs=3, verbose=0, progress=False)


CHOICE: dict = {}  # what training handed ml.ranking.choose_ranking (the artifact fixture's run)


@pytest.fixture(scope="module")
def artifact(world_dir, tmp_path_factory, base_settings):
    """The session world trained on its 'last' split: the reference the leakage tests retrain against."""
    out = tmp_path_factory.mktemp("train") / "v1"

    def spy(rec, fit_u, fit_i, val_u, val_i, unseen, **kwargs):
        CHOICE.update(rec=rec, fit=(fit_u, fit_i), val=(val_u, val_i), unseen=unseen, full=kwargs.get("full"))
        return choose_ranking(rec, fit_u, fit_i, val_u, val_i, unseen, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ml.train, "choose_ranking", spy)
        manifest = train_model(world_dir, out, FAST, split="last", settings=base_settings)
    return out, manifest


def test_artifact_has_manifest_and_files(artifact, world_dir):
    out, manifest = artifact
    for name in (
        "manifest.json",
        "model.weights.h5",
        "tables.npz",
        "interactions.npz",
        "products.json",
        "history.json",
    ):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest, default=str))
    assert manifest["version"] == "v1"
    assert manifest["data"]["fingerprint"] == load_dataset(world_dir).fingerprint()
    assert manifest["data"]["synthetic"] is True
    assert set(manifest["encoders"]) == {"image", "text", "review_text"}
    assert manifest["encoders"]["text"].startswith("all-MiniLM-L6-v2")
    assert manifest["encoders"]["review_text"].startswith("all-MiniLM-L6-v2")
    assert manifest["encoders"]["image"].startswith("efficientnet-lite0")
    assert manifest["split"] == "last"
    assert 1 <= manifest["metrics"]["epochs_run"] <= 3
    # a few thousand rows: the base batch and the configured learning rate, recorded
    assert manifest["metrics"]["batch_size"] == BASE_BATCH
    assert manifest["metrics"]["learning_rate"] == FAST.learning_rate
    # validation error: below the spread of the ratings (what predicting their mean would score)
    # and consistent with the MAE (MAE <= RMSE <= sqrt(4 * MAE) for errors of at most 4 stars)
    ratings = load_dataset(world_dir).reviews["rating"].to_numpy(np.float64)
    val_rmse, val_mae = manifest["metrics"]["val_rmse"], manifest["metrics"]["val_mae"]
    assert val_rmse < float(ratings.std())
    assert 0 < val_mae <= val_rmse <= np.sqrt(4 * val_mae)
    ranking = manifest["ranking"]
    assert ranking["rating_weight"] in (0.0, 0.25, 0.5, 1.0, 2.0)
    # a weight other than 0 only when it beat weight 0 on validation beyond noise
    assert set(ranking["val_ndcg@10"]) == {"0.0", "0.25", "0.5", "1.0", "2.0"}
    assert ranking["rating_weight"] == 0.0 or ranking["best_minus_weight_0"]["ci95"][0] > 0
    assert ranking["knn_weight"] == 0.0 or ranking["knn_best_minus_none"]["ci95"][0] > 0
    assert manifest["created"].endswith("+00:00")
    assert not list(out.parent.glob(".v1.*")), "temporary directory left behind"


def test_the_ranking_is_chosen_on_tables_without_the_validation_ratings(artifact):
    """Scores that read a validation rating (in the customer's history, content sums or co-ratings)
    would reward whatever leaks it: the ranking choice scores from tables built without them, while
    the artifact's own tables (what serving reads) hold every training rating."""
    out, manifest = artifact
    fit_rec, (fit_u, fit_i), (val_u, val_i) = CHOICE["rec"], CHOICE["fit"], CHOICE["val"]
    served, unseen, ranking = Recommender.load(out), CHOICE["unseen"], manifest["ranking"]
    # one rating per customer (their latest); the rating weight only on those the network never fit
    assert len(val_u) == len(np.unique(val_u)) == ranking["knn_customers"]
    assert 0 < unseen.sum() == ranking["rating_customers"] < len(val_u)
    n = fit_rec.n_products

    def rated(t) -> set[int]:
        rows = np.repeat(np.arange(t.n_customers), np.diff(t.rated_indptr))
        return set((rows * n + t.rated_indices).tolist())

    val, fit = set((val_u * n + val_i).tolist()), set((fit_u * n + fit_i).tolist())
    assert not val & rated(fit_rec.tables) and rated(fit_rec.tables) == fit
    assert val <= rated(served.tables) and rated(served.tables) == fit | val
    assert not any(int(i) in set(fit_rec.seen(int(u)).tolist()) for u, i in zip(val_u, val_i))
    # co-ratings and counts follow: the validation ratings are in the served tables' sums only
    assert fit_rec.tables.prod_count.sum() == len(fit_u) < served.tables.prod_count.sum()
    assert fit_rec.tables.cooc_data.sum() < served.tables.cooc_data.sum()
    # the kNN term's co-ratings are every rating's (each customer's own held-out one left out by
    # ml.features.held_out_knn_grid, tested in test_features.py)
    full = CHOICE["full"]
    assert rated(full) == fit | val
    np.testing.assert_array_equal(full.cooc_data, served.tables.cooc_data)


def test_the_ranking_choice_scores_the_knn_term_from_every_co_rating(artifact):
    """choose_ranking's kNN scores are `held_out_knn_grid`'s, each customer with its own validation
    product, also for a subset of the customers in another order."""
    from ml.features import held_out_knn_grid, knn_grid
    from ml.metrics import csr_from_pairs
    from ml.ranking import _Validation

    fit_rec, (fit_u, fit_i), (val_u, val_i), full = (
        CHOICE["rec"],
        CHOICE["fit"],
        CHOICE["val"],
        CHOICE["full"],
    )
    n_c = fit_rec.tables.n_customers
    exclude, relevant = csr_from_pairs(fit_u, fit_i, n_c), csr_from_pairs(val_u, val_i, n_c)
    held = dict(zip(val_u.tolist(), val_i.tolist()))
    users = np.unique(val_u)[:40]
    v = _Validation.of(fit_rec, users, exclude, relevant, 10, full)
    want = held_out_knn_grid(full, fit_rec.tables, users, [held[x] for x in users.tolist()], 10.0)
    np.testing.assert_array_equal(v.with_knn(10.0).knn, want)
    some = users[::-3]
    sub = v.subset(some)
    sub.knn_shrink = None  # recomputed from the subset's own held products
    want = held_out_knn_grid(full, fit_rec.tables, some, [held[x] for x in some.tolist()], 10.0)
    np.testing.assert_array_equal(sub.with_knn(10.0).knn, want)
    # without `full` the scores would be the fit tables' own, which differ here
    assert not np.allclose(v.with_knn(10.0).knn, knn_grid(fit_rec.tables, users, 10.0))
    # one held-out product per customer, or no telling whose co-ratings to leave out
    two = csr_from_pairs(
        np.r_[val_u, users[:1]], np.r_[val_i, (val_i[val_u == users[0]] + 1) % fit_rec.n_products], n_c
    )
    with pytest.raises(ValueError, match="one validation rating per customer"):
        _Validation.of(fit_rec, users, exclude, two, 10, full)


def test_products_json_carries_what_serving_filters_on(artifact, world_dir):
    """Category path and price per product, as the training data's meta has them (an unknown price is
    null), so a worker filters without the data folder."""
    out, _ = artifact
    records = {r["product_id"]: r for r in json.loads((out / "products.json").read_text())}
    products = load_dataset(world_dir).products.set_index("product_id")
    assert set(records) == set(products.index.astype(str))
    for pid, row in products.iterrows():
        record = records[str(pid)]
        assert record["categories"] == (row["categories"] or "")
        if np.isfinite(row["price"]):
            assert record["price"] == pytest.approx(float(row["price"]))
        else:
            assert record["price"] is None
    assert any(r["categories"] for r in records.values()) and any(r["price"] for r in records.values())


def test_no_training_data_is_a_clear_error(world_dir, tmp_path):
    ds = load_dataset(world_dir)
    ds.reviews = ds.reviews.iloc[0:0]
    with pytest.raises(ValueError, match="no training ratings"):
        train_model(ds, tmp_path / "empty", FAST)


def _positions(index_values, ids) -> np.ndarray:
    import pandas as pd

    return pd.Index(index_values).get_indexer(ids.astype(str))


def _assert_same_scores_on_held_out(a_dir, b_dir, test) -> None:
    """Bit-identical predicted ratings on the held-out pairs, and whole-catalog scores of their
    customers (training is deterministic for a seed: any input that differs shows)."""
    from ml.recommender import Recommender

    a, b = Recommender.load(a_dir), Recommender.load(b_dir)
    u = _positions(a.tables.customer_ids, test["customer_id"])
    i = _positions(a.tables.product_ids, test["product_id"])
    assert (u >= 0).all() and (i >= 0).all()
    np.testing.assert_array_equal(a.predict(u, i), b.predict(u, i))
    customers = np.unique(u)
    np.testing.assert_array_equal(a.score_customers(customers), b.score_customers(customers))


def test_held_out_review_text_is_never_an_input(artifact, world_dir, tmp_path, base_settings):
    """Replace the text of every held-out review: the model trained on the same split must not move
    at all (the reference is the module's artifact, trained on the unchanged world)."""
    _, test = split_reviews(load_dataset(world_dir).reviews, "last")
    swapped = load_dataset(world_dir)
    rows = swapped.reviews.index.isin(test.index)
    assert rows.sum() == len(test) > 0
    rng = np.random.default_rng(0)
    swapped.reviews.loc[rows, "text"] = [
        "Five stars, perfect, I love it!" if rng.random() < 0.5 else "Terrible, one star, returned it."
        for _ in range(int(rows.sum()))
    ]
    swapped.reviews.loc[rows, "title"] = "changed"
    train_model(swapped, tmp_path / "b", FAST, split="last", settings=base_settings)
    _assert_same_scores_on_held_out(artifact[0], tmp_path / "b", test)


def test_held_out_ratings_are_never_an_input(artifact, world_dir, tmp_path, base_settings):
    """Replace every held-out rating: the model's scores on the held-out pairs must not move."""
    ds = load_dataset(world_dir)
    _, test = split_reviews(ds.reviews, "last")
    changed = load_dataset(world_dir)
    rows = changed.reviews.index.isin(test.index)
    old = changed.reviews.loc[rows, "rating"].to_numpy()
    changed.reviews.loc[rows, "rating"] = np.where(old >= 3, 1.0, 5.0)  # every one differs
    assert (changed.reviews.loc[rows, "rating"].to_numpy() != old).all() and rows.sum() > 0
    assert changed.fingerprint() != ds.fingerprint()
    train_model(changed, tmp_path / "b", FAST, split="last", settings=base_settings)
    _assert_same_scores_on_held_out(artifact[0], tmp_path / "b", test)


def test_the_artifact_holds_the_network_without_optimizer_state(artifact):
    """Adam's two slots per weight are 2/3 of a large catalog's weights file; serving never reads them."""
    import h5py

    out, _ = artifact
    with h5py.File(out / "model.weights.h5", "r") as f:
        names: list[str] = []
        f.visit(names.append)
    assert any(n.startswith("layers/") for n in names)
    assert not [n for n in names if n.startswith("optimizer")]


def test_id_embeddings_have_a_row_per_rated_product_shared_with_the_choice_tables(artifact):
    from ml.artifact import Artifact

    out, manifest = artifact
    served = Artifact.read(out)
    rated = served.tables.prod_count > 0
    assert manifest["spec"]["n_ids"] == rated.sum() + 1 == served.tables.n_ids
    assert served.model.pick_net.prod_emb.embeddings.shape[0] == rated.sum() + 1
    # the ranking is chosen with the network's ids: same row for every product the choice tables rate
    choice = CHOICE["rec"].tables
    both = choice.prod_count > 0
    np.testing.assert_array_equal(choice.prod_id[both], served.tables.prod_id[both])
    assert (choice.prod_id[~both] == 0).all()


def test_serving_copy_computes_what_the_fitted_network_does(artifact):
    """The copy kept after fitting is the same function as the compiled, fitted model."""
    import keras

    from ml.model import ModelInputs, ModelSpec, build_model, masked_mse, pick_bce
    from ml.train import serving_copy

    spec = ModelSpec.from_dict(artifact[1]["spec"])
    model = build_model(spec, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss={"rating": masked_mse, "pick": pick_bce})
    rng = np.random.default_rng(0)
    x = {k: np.repeat(v, 64, axis=0) for k, v in ModelInputs.dummy(spec.layout)._asdict().items()}
    x["customer"] = rng.normal(size=x["customer"].shape).astype(np.float32)
    x["product"] = rng.normal(size=x["product"].shape).astype(np.float32)
    x["product_id"] = rng.integers(0, spec.id_rows, 64).astype(np.int32)
    y = {
        "rating": np.stack([rng.uniform(1, 5, 64), np.ones(64)], 1).astype(np.float32),
        "pick": rng.integers(0, 2, 64).astype(np.float32),
    }
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    copy = serving_copy(model, spec)
    assert getattr(copy, "optimizer", None) is None
    want, got = model.predict(x, verbose=0), copy.predict(x, verbose=0)
    for head in ("rating", "pick"):
        np.testing.assert_allclose(np.asarray(got[head]), np.asarray(want[head]), rtol=1e-6, atol=1e-6)


def test_fit_lets_go_of_the_training_rows():
    """Nothing fit leaves behind keeps the rows alive: on a 10k-product world they are ~290 MB that the
    ranking choice and the retriever run next to."""
    import gc
    import weakref

    from ml.train import build_training_rows, fit_model
    from tests.test_features import _tables, _world

    w = _world(seed=2)
    t = _tables(w)
    val = np.random.default_rng(0).random(len(w["u"])) < 0.3
    args = (w["u"], w["i"], w["rating"], w["review_vecs"], w["review_has_text"])
    rows = build_training_rows(t, *args, TrainConfig(negatives=2), val)
    alive = [weakref.ref(v) for d in (rows.customer, rows.pairs) for v in d.values()]
    model, _, _ = fit_model(t, rows, TrainConfig(epochs=1, batch_size=16, verbose=0, progress=False))
    del rows
    gc.collect()
    assert model is not None
    assert [r for r in alive if r() is not None] == []


def test_step_plan_grows_the_batch_with_the_rows_and_scales_the_rate():
    auto = TrainConfig(learning_rate=1e-3)
    assert step_plan(auto, BASE_BATCH * MAX_STEPS) == (BASE_BATCH, 1e-3)  # exactly MAX_STEPS steps
    batch, rate = step_plan(auto, BASE_BATCH * MAX_STEPS + 1)
    assert batch == 2 * BASE_BATCH and rate == pytest.approx(1e-3 * np.sqrt(2))
    batch, rate = step_plan(auto, 100_000)  # 391 steps of 256, 196 of 512
    assert batch == 512 and rate == pytest.approx(1e-3 * np.sqrt(2))
    batch, rate = step_plan(auto, 263_000)  # the 10k-product world's training rows: the cap
    assert batch == MAX_BATCH == 1024 and rate == pytest.approx(2e-3)
    assert step_plan(auto, 10**9)[0] == MAX_BATCH
    # a batch size that is set is used as it is, with the rate as given
    assert step_plan(TrainConfig(batch_size=64, learning_rate=5e-4), 10**9) == (64, 5e-4)
    with pytest.raises(ValueError, match="batch_size"):
        step_plan(TrainConfig(batch_size=-1), 100)


@pytest.mark.parametrize("text_dim", [0, 3])
def test_left_out_reviews_gathered_by_position_equal_whole_copies(text_dim):
    """`ml.train._LeftOut` gathers a chunk's left-out reviews from positions; what it gives equals
    the Exclusion built from whole per-row copies (how build_training_rows made it before): a
    positive leaves out its own review; a negative its source's on the customer side and `pick`'s on
    the product side, times 0 when the product has no review. Also with no review text (0 columns)."""
    from ml.features import Exclusion
    from ml.train import _LeftOut

    rng = np.random.default_rng(0)
    n, m = 6, 9  # positives, negatives
    r = rng.integers(1, 6, n).astype(np.float32)
    vecs = rng.normal(size=(n, text_dim)).astype(np.float32)
    ht = (rng.random(n) < 0.5).astype(np.float32)
    src, pick = rng.integers(0, n, m), rng.integers(0, n, m)
    active = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0], np.float32)  # 0: the product has no review
    whole_cust = Exclusion(
        np.ones(n + m, np.float32), np.concatenate([r, r[src]]), np.concatenate([vecs, vecs[src]]),
        np.concatenate([ht, ht[src]]),
    )  # fmt: skip
    whole_prod = Exclusion(
        np.concatenate([np.ones(n, np.float32), active]), np.concatenate([r, r[pick] * active]),
        np.concatenate([vecs, vecs[pick] * active[:, None]]), np.concatenate([ht, ht[pick] * active]),
    )  # fmt: skip
    cust = _LeftOut(np.concatenate([np.arange(n), src]), np.ones(n + m, np.float32))
    prod = _LeftOut(
        np.concatenate([np.arange(n), pick]), np.concatenate([np.ones(n), active]).astype(np.float32)
    )
    rows = rng.permutation(n + m)[:10]
    for lazy, whole in ((cust, whole_cust), (prod, whole_prod)):
        got, want = lazy.take(rows, r, vecs, ht), whole.take(rows)
        for field in ("active", "rating", "review_vec", "has_text"):
            a, b = getattr(got, field), getattr(want, field)
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), field


@needs_glibc
def test_after_a_fit_large_arrays_come_from_the_heap_again():
    """TensorFlow's generator dataset (what a PyDataset fit builds) pins malloc's mmap threshold at
    128 KiB: then every array above it is a mapping of its own, page-faulted in afresh each time
    (ml/heap.py; the ranking choice after a fit ran ~1.8x slower). After fit_model a 24 MiB array
    is served from the heap again, whose freed memory the next array reuses."""
    from ml.train import build_training_rows, fit_model
    from tests.test_features import _tables, _world

    w = _world(seed=3)
    t = _tables(w)
    val = np.random.default_rng(0).random(len(w["u"])) < 0.3
    args = (w["u"], w["i"], w["rating"], w["review_vecs"], w["review_has_text"])
    rows = build_training_rows(t, *args, TrainConfig(negatives=2), val)
    fit_model(t, rows, TrainConfig(epochs=1, batch_size=16, verbose=0, progress=False))
    assert not is_own_mapping()
