"""The Keras hybrid model's training helpers."""

from __future__ import annotations

import numpy as np

from ml.model import HEADS, BestPerHead, RowBatches


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


def _epoch(batches: RowBatches) -> list[np.ndarray]:
    out = [batches[b] for b in range(len(batches))]
    batches.on_epoch_end()
    return out


def test_row_batches_give_every_row_once_per_epoch_rows_aligned():
    n = 1000
    inputs = {"a": np.arange(n) * 10, "b": np.stack([np.arange(n), -np.arange(n)], 1)}
    targets = {"t": np.arange(n) + 0.5}
    batches = RowBatches(inputs, targets, 64, shuffle=True, seed=3)
    assert len(batches) == 16  # 15 full batches and one of 40
    seen = []
    for _ in range(2):
        rows = []
        for x, y in _epoch(batches):
            assert len(y["t"]) <= 64
            np.testing.assert_array_equal(x["a"], (y["t"] - 0.5) * 10)  # one row's parts stay together
            np.testing.assert_array_equal(x["b"][:, 0], y["t"] - 0.5)
            rows.append((y["t"] - 0.5).astype(int))
        assert sorted(np.concatenate(rows).tolist()) == list(range(n))
        seen.append([frozenset(r.tolist()) for r in rows])
    assert seen[0] != seen[1], "a new order each epoch"
    assert seen[0][0] != frozenset(range(64)), "shuffled"


def test_row_batches_in_order_when_not_shuffled():
    targets = {"t": np.arange(10)}
    batches = RowBatches({"x": np.arange(10)}, targets, 4, shuffle=False)
    assert [y["t"].tolist() for _, y in _epoch(batches)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
