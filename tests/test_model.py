"""The Keras hybrid model's training helpers."""

from __future__ import annotations

import numpy as np
import pytest

from ml.model import HEADS, RATED_PAD, BestPerHead, RowBatches, TrainingRows


class _Net:
    def __init__(self):
        self.w = [np.zeros(1)]

    def get_weights(self):
        return [w.copy() for w in self.w]

    def set_weights(self, weights):
        self.w = weights


class _Model:
    def __init__(self):
        self.nets = {h: _Net() for h in HEADS}
        self.stop_training = False


def _run(callback, losses):
    model = _Model()
    callback.set_model(model)
    for epoch, (rating, pick) in enumerate(losses):
        model.nets["rating"].w = [np.array([float(epoch)])]  # weights remember their epoch
        model.nets["pick"].w = [np.array([float(epoch)])]
        callback.on_epoch_end(epoch, {"val_rating_loss": rating, "val_pick_loss": pick})
        if model.stop_training:
            break
    callback.on_train_end()
    return model, epoch


def test_creeping_improvements_do_not_keep_training_alive():
    creep = [(1.0 - 2e-5 * k, 0.5 + 0.01 * k) for k in range(40)]  # rating creeps, pick worsens
    model, last = _run(BestPerHead(patience=4, min_delta=1e-4), creep)
    assert last == 4  # stopped after `patience` epochs without a real improvement
    assert model.nets["rating"].w[0][0] == 4  # yet keeps the strictly best weights seen
    assert model.nets["pick"].w[0][0] == 0
    _, last = _run(BestPerHead(patience=4), creep)
    assert last == 39  # without min_delta it never stops


def test_each_head_keeps_its_own_best_epoch():
    losses = [
        (1.0, 1.0),
        (0.8, 0.9),
        (0.9, 0.7),
        (0.95, 0.6),
        (1.0, 0.65),
        (1.1, 0.7),
        (1.2, 0.8),
        (1.3, 0.9),
        (1.4, 1.0),
    ]
    model, last = _run(BestPerHead(patience=3, min_delta=1e-4), losses)
    assert model.nets["rating"].w[0][0] == 1 and model.nets["pick"].w[0][0] == 3
    assert last == 6


def _epoch(batches: RowBatches) -> list:
    out = [batches[b] for b in range(len(batches))]
    batches.on_epoch_end()
    return out


def _groups(sizes: list[int], val: int = 0) -> TrainingRows:
    """Group g: customer value g, rows g * 100 + k (k = 0 the rated row), rating g + 0.5; the last
    `val` groups validate."""
    start = np.concatenate([[0], np.cumsum(sizes)])
    rows = np.concatenate([g * 100 + np.arange(s) for g, s in enumerate(sizes)])
    n = len(sizes)
    return TrainingRows(
        customer={"c": np.arange(n), "h": np.stack([np.arange(n), -np.arange(n)], 1)},
        pairs={"p": rows},
        start=start,
        rating=np.arange(n) + 0.5,
        is_val=np.arange(n) >= n - val,
    )


def test_row_batches_give_every_row_once_per_epoch_with_its_customer_side():
    sizes = list(np.random.default_rng(0).integers(1, 10, 300))
    batches = RowBatches(_groups(sizes), 64, shuffle=True, seed=3)
    n = sum(sizes)
    assert len(batches) == -(-n // 64)
    seen = []
    for _ in range(2):
        rows = []
        for x, y in _epoch(batches):
            assert len(x["p"]) <= 64 and len(y["pick"]) == len(x["p"])
            np.testing.assert_array_equal(x["c"], x["p"] // 100)  # each row with its group's side
            np.testing.assert_array_equal(x["h"][:, 1], -(x["p"] // 100))
            np.testing.assert_array_equal(y["pick"], (x["p"] % 100 == 0).astype(np.float32))
            # the rated rows, in batch order, and their ratings; then padding (row 0, mask 0)
            rated = np.flatnonzero(x["p"] % 100 == 0)
            assert len(x["rated"]) % RATED_PAD == 0 and len(x["rated"]) - len(rated) < RATED_PAD
            np.testing.assert_array_equal(x["rated"][: len(rated)], rated)
            assert (x["rated"][len(rated) :] == 0).all() and (y["rating"][len(rated) :] == 0).all()
            np.testing.assert_array_equal(y["rating"][: len(rated), 0], x["p"][rated] // 100 + 0.5)
            assert (y["rating"][: len(rated), 1] == 1).all()
            rows.append(x["p"])
        assert sorted(np.concatenate(rows).tolist()) == sorted(_groups(sizes).pairs["p"].tolist())
        seen.append([frozenset(r.tolist()) for r in rows])
    assert seen[0] != seen[1], "a new order each epoch"
    assert seen[0][0] != frozenset(_groups(sizes).pairs["p"][:64].tolist()), "shuffled"


def test_endless_row_batches_repeat_the_epochs_of_per_epoch_ones():
    """`endless` (one Keras iterator for the whole fit): index e * len + b is epoch e's batch b, the
    same batch a new iterator per epoch gives (on_epoch_end between), whatever is read ahead; an
    earlier epoch asked again (Keras' shape probe on a one-batch set) gives its batches again."""
    sizes = list(np.random.default_rng(1).integers(1, 10, 100))
    per_epoch = RowBatches(_groups(sizes), 64, shuffle=True, seed=5)
    endless = RowBatches(_groups(sizes), 64, shuffle=True, seed=5, endless=True)
    n = len(per_epoch)
    assert endless.num_batches is None and per_epoch.num_batches == n == len(endless)
    expected = [_epoch(per_epoch) for _ in range(3)]
    got = []
    for e in range(3):
        got.append([endless[e * n + b] for b in range(n)])
        endless.on_epoch_end()  # Keras calls it (after tf.data read ahead): the index says the epoch
    for e in range(3):
        for (x, y), (gx, gy) in zip(expected[e], got[e]):
            np.testing.assert_array_equal(gx["p"], x["p"])
            np.testing.assert_array_equal(gy["rating"], y["rating"])
    # an earlier epoch again (Keras reads two batches for their shapes before the fit: with one
    # batch an epoch, epoch 1 comes before epoch 0)
    fresh = RowBatches(_groups(sizes), 64, shuffle=True, seed=5, endless=True)
    for idx, (e, b) in [(n + 1, (1, 1)), (0, (0, 0)), (2 * n, (2, 0)), (3, (0, 3))]:
        np.testing.assert_array_equal(fresh[idx][0]["p"], expected[e][b][0]["p"])
    endless.release()
    with pytest.raises(IndexError):
        endless[0]


def test_fit_reads_the_row_batches_in_their_order_through_tf_data_without_autotuning():
    """On TensorFlow `fit_data` feeds fit through tf.data with autotuning off (deleting an
    autotuned iterator waits out the autotuning thread's sleep, up to 60 s); every new iterator
    gives the batches from the first on, as Keras' own generator does: endless across epochs,
    the finite (validation) set once."""
    import keras

    from ml.model import fit_data

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the tf.data pipeline is the TensorFlow backend's")
    sizes = list(np.random.default_rng(2).integers(1, 10, 60))
    reference = RowBatches(_groups(sizes), 64, shuffle=True, seed=3, endless=True)
    n = len(reference)
    expected = [reference[i] for i in range(2 * n + 1)]
    ds = fit_data(RowBatches(_groups(sizes), 64, shuffle=True, seed=3, endless=True))
    assert ds.options().autotune.enabled is False
    for _ in range(2):  # a second iterator starts over
        got = list(ds.take(2 * n + 1).as_numpy_iterator())
        for (x, y), (gx, gy) in zip(expected, got, strict=True):
            np.testing.assert_array_equal(gx["p"], x["p"])
            np.testing.assert_array_equal(gx["rated"], x["rated"])
            np.testing.assert_array_equal(gy["rating"], y["rating"])
    val = RowBatches(_groups(sizes), 64, shuffle=False)
    got = list(fit_data(val).as_numpy_iterator())
    assert [g[0]["p"].tolist() for g in got] == [x["p"].tolist() for x, _ in _epoch(val)]
    with pytest.raises(ValueError, match="endless"):  # nothing would move its order on between epochs
        fit_data(RowBatches(_groups(sizes), 64, shuffle=True))


def test_row_batches_in_order_when_not_shuffled():
    batches = RowBatches(_groups([2, 1, 3, 1, 1]), 3, shuffle=False)
    got = _epoch(batches)
    assert [x["p"].tolist() for x, _ in got] == [[0, 1, 100], [200, 201, 202], [300, 400]]
    rated = [y["rating"][y["rating"][:, 1] > 0, 0].tolist() for _, y in got]
    assert rated == [[0.5, 1.5], [2.5], [3.5, 4.5]]


def test_split_gives_training_and_validation_groups_as_views():
    rows = _groups([2, 1, 3, 1, 1], val=2)
    train, val = rows.split()
    assert train.n_rows == 6 and val.n_rows == 2 and val.start.tolist() == [0, 1, 2]
    assert val.pairs["p"].tolist() == [300, 400] and val.customer["c"].tolist() == [3, 4]
    assert all(
        np.shares_memory(a, b)
        for a, b in ((train.pairs["p"], rows.pairs["p"]), (val.customer["h"], rows.customer["h"]))
    )
    with pytest.raises(ValueError, match="before validation"):
        TrainingRows(rows.customer, rows.pairs, rows.start, rows.rating, ~rows.is_val).split()


def _inputs(layout, n: int = 6, seed: int = 0) -> dict:
    from ml.features import PAIR_DIM

    rng = np.random.default_rng(seed)
    return {
        "customer": rng.normal(size=(n, layout.customer.width)).astype(np.float32),
        "product": rng.normal(size=(n, layout.product.width)).astype(np.float32),
        "product_id": rng.integers(1, 7, n).astype(np.int32),
        "customer_prior": rng.normal(size=n).astype(np.float32),
        "product_prior": rng.normal(size=n).astype(np.float32),
        "history": rng.integers(0, 7, (n, 3)).astype(np.int32),
        "pair": rng.normal(size=(n, PAIR_DIM)).astype(np.float32),
    }


@pytest.mark.parametrize(("cold_dropout", "content"), [(True, 4), (False, 4), (True, 0)])
def test_a_dropped_product_id_looks_never_rated_with_cold_dropout(cold_dropout, content):
    """With every id dropped (rate 1), the pick head in training scores a row as it scores, at
    serving time, a never-rated product: id 0, no rating statistics, no co-ratings. Without cold
    dropout, or without product content to score a new product by, only the id is gone."""
    from keras import ops

    from ml.features import FeatureLayout
    from ml.model import ModelSpec, build_model

    layout = FeatureLayout.of(content=content, customer_text=3, product_text=3)
    spec = ModelSpec(5, 6, layout, 3.5, 4, 4, (8,), 0.0, 1.0, 0.0, 7, True, cold_dropout)
    model = build_model(spec, seed=3)
    x = _inputs(layout)
    served = {**x, "product_id": np.zeros_like(x["product_id"])}
    if cold_dropout and content:
        served["product"] = x["product"].copy()
        for name in ("log_count", "has_text"):
            served["product"][:, layout.product.span(name)] = 0.0
        served["pair"] = np.zeros_like(x["pair"])
    got = ops.convert_to_numpy(model(x, training=True)["pick"])
    want = ops.convert_to_numpy(model(served, training=False)["pick"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    as_given = ops.convert_to_numpy(model(x, training=False)["pick"])
    assert np.abs(got - as_given).max() > 1e-3  # the dropout changed something


def test_the_rating_head_on_the_rated_rows_alone_computes_what_it_does_on_every_row():
    """With `rated` (training batches) the rating head runs on those rows only: the same function as
    the model on every row, taken at the rated rows; the pick head is untouched."""
    from keras import ops

    from ml.features import FeatureLayout
    from ml.model import ModelSpec, build_model

    layout = FeatureLayout.of(content=4, customer_text=3, product_text=3)
    model = build_model(ModelSpec(5, 6, layout, 3.5, 4, 4, (8,), 0.0, 0.0, 0.0, 7, True, False), seed=3)
    x = _inputs(layout, n=9, seed=1)
    rated = np.array([0, 4, 5], np.int32)
    got, want = model({**x, "rated": rated}, training=False), model(x, training=False)
    got, want = ({h: ops.convert_to_numpy(v[h]) for h in HEADS} for v in (got, want))
    np.testing.assert_allclose(got["pick"], want["pick"], rtol=1e-5, atol=1e-6)
    assert got["rating"].shape == (3,)
    np.testing.assert_allclose(got["rating"], want["rating"][rated], rtol=1e-5, atol=1e-6)
