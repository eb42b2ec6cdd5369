"""The Keras hybrid model's training helpers."""

from __future__ import annotations

import numpy as np

from ml.model import HEADS, BestPerHead


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
