"""Cumulative ablation API: result shapes, AUC, orders, sequences, levels, determinism, sanity, bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import singledir as sd
from singledir.errors import SingledirError
from singledir.models import build_model
from singledir.reliance.ablation import AblationResult, resolve_levels
from singledir.reliance.hooks import ablate, model_guard
from singledir.reliance.testing import assert_unchanged, digits, snapshot, train_quick

LAYERS = ["hidden.0", "hidden.1"]


@pytest.fixture(scope="module")
def trained():
    """A 2x32 MLP trained for a few epochs on 1200 digits; (model, test data)."""
    x, y = digits()
    model = build_model("mlp", (1, 8, 8), 10, width=32, seed=0)
    torch.manual_seed(0)
    train_quick(model, x[:1200], y[:1200], epochs=15)
    return model, (x[1200:1600], y[1200:1600])


def test_result_shapes_and_metadata(trained):
    model, data = trained
    res = sd.ablation_curves(model, data, LAYERS, repeats=3, progress=False)
    df = res.curves
    assert list(df.columns) == ["order", "repeat", "k", "fraction", "accuracy", "loss"]
    assert len(df) == 3 * 65 and set(df.repeat) == {0, 1, 2} and set(df.order) == {"random"}
    assert df.k.min() == 0 and df.k.max() == 64 and df.fraction.max() == 1.0
    for (order, rep), seq in res.sequences.items():
        assert order == "random" and len(seq) == 64 and len(set(seq)) == 64
        assert {layer for layer, _ in seq} == set(LAYERS)
    assert res.meta["units"] == {"hidden.0": 32, "hidden.1": 32}
    assert res.meta["n_examples"] == 400 and res.meta["clamp"] == "zero" and res.meta["basis"] == "units"
    base = float(df[df.k == 0].accuracy.iloc[0])
    assert base > 0.8 and res.meta["base_accuracy"] == base
    auc = res.auc()
    assert list(auc.order) == ["random"] and auc.n_curves.iloc[0] == 3
    per = res.auc_per_curve()
    assert len(per) == 3
    assert math.isclose(auc.auc_mean.iloc[0], per.auc.mean())
    assert auc.auc_ci_low.iloc[0] <= auc.auc_mean.iloc[0] <= auc.auc_ci_high.iloc[0]
    frame = res.to_frame()
    assert {"clamp", "basis", "seed", "n_examples", "layers"} <= set(frame.columns)
    assert len(res.sequences_frame()) == 3 * 64


def test_auc_matches_hand_computation():
    curves = pd.DataFrame(
        {
            "order": ["random"] * 6,
            "repeat": [0, 0, 0, 1, 1, 1],
            "k": [0, 1, 2] * 2,
            "fraction": [0.0, 0.5, 1.0] * 2,
            "accuracy": [0.8, 0.6, 0.1, 0.8, 0.2, 0.1],
            "loss": [0.0] * 6,
        }
    )
    res = AblationResult(curves, {}, {"base_accuracy": 0.8, "seed": 0})
    per = res.auc_per_curve()
    # trapezoid: 0.5 * (0.8 + 0.6) / 2 + 0.5 * (0.6 + 0.1) / 2 = 0.525 ; second: 0.325
    np.testing.assert_allclose(per.auc, [0.525, 0.325])
    np.testing.assert_allclose(per.normalized_auc, [0.525 / 0.8, 0.325 / 0.8])
    row = res.auc().iloc[0]
    assert math.isclose(row.auc_mean, 0.425) and math.isclose(row.auc_std, np.std([0.525, 0.325], ddof=1))
    assert math.isclose(row.normalized_auc_mean, 0.425 / 0.8)
    assert 0.325 <= row.auc_ci_low <= row.auc_ci_high <= 0.525


def test_determinism_and_seed(trained):
    model, data = trained
    a = sd.ablation_curves(model, data, LAYERS, repeats=2, levels=[0, 10, 40], seed=5, progress=False)
    b = sd.ablation_curves(model, data, LAYERS, repeats=2, levels=[0, 10, 40], seed=5, progress=False)
    c = sd.ablation_curves(model, data, LAYERS, repeats=2, levels=[0, 10, 40], seed=6, progress=False)
    pd.testing.assert_frame_equal(a.curves, b.curves)
    assert a.sequences == b.sequences and a.sequences != c.sequences
    assert a.sequences[("random", 0)] != a.sequences[("random", 1)]
    ra = sd.ablation_curves(model, data, LAYERS, repeats=1, basis="random", levels=[0, 9], seed=5, progress=False)
    rb = sd.ablation_curves(model, data, LAYERS, repeats=1, basis="random", levels=[0, 9], seed=5, progress=False)
    pd.testing.assert_frame_equal(ra.curves, rb.curves)
    assert torch.equal(ra.directions[("random", 0)]["hidden.0"], rb.directions[("random", 0)]["hidden.0"])


def test_all_units_of_last_layer_give_bias_logits(trained):
    model, data = trained
    x, y = data
    res = sd.ablation_curves(model, data, ["hidden.1"], order=[("hidden.1", u) for u in range(32)], progress=False)
    expected_pred = int(model.out.bias.argmax())
    full = res.curves[res.curves.k == 32].iloc[0]
    assert full.accuracy == int((y == expected_pred).sum()) / len(y)
    expected_loss = float(torch.nn.functional.cross_entropy(model.out.bias.detach().expand(len(y), -1), y))
    assert math.isclose(full.loss, expected_loss, rel_tol=1e-6)


def test_more_ablation_lowers_accuracy_on_trained_model(trained):
    model, data = trained
    res = sd.ablation_curves(model, data, LAYERS, repeats=4, progress=False)
    mean = res.curves.groupby("k").accuracy.mean()
    assert mean[0] > mean[16] > mean[48] > mean[64] - 1e-9
    assert mean[64] < 0.3
    auc = res.auc().iloc[0]
    assert 0.1 < auc.normalized_auc_mean < 1.0


def test_random_basis_all_directions_equals_all_units(trained):
    model, data = trained
    units = sd.ablation_curves(model, data, ["hidden.1"], repeats=1, levels=[32], progress=False)
    dirs = sd.ablation_curves(model, data, ["hidden.1"], repeats=1, levels=[32], basis="random", progress=False)
    assert dirs.curves.accuracy.iloc[0] == units.curves.accuracy.iloc[0]
    assert math.isclose(dirs.curves.loss.iloc[0], units.curves.loss.iloc[0], rel_tol=1e-5)
    q = dirs.directions[("random", 0)]["hidden.1"]
    torch.testing.assert_close(q.T @ q, torch.eye(32, dtype=torch.float64))


def test_random_basis_mean_clamp_all_directions_equals_mean_clamp_all_units(trained):
    model, data = trained
    kw = dict(repeats=1, levels=[32], clamp="mean", progress=False)
    units = sd.ablation_curves(model, data, ["hidden.1"], **kw)
    dirs = sd.ablation_curves(model, data, ["hidden.1"], basis="random", **kw)
    assert dirs.curves.accuracy.iloc[0] == units.curves.accuracy.iloc[0]
    assert math.isclose(dirs.curves.loss.iloc[0], units.curves.loss.iloc[0], rel_tol=1e-5)


def test_explicit_sequence_curve(trained):
    model, data = trained
    seq = [("hidden.1", 3), ("hidden.0", 5), ("hidden.1", 0)]
    res = sd.ablation_curves(model, data, LAYERS, order=seq, progress=False)
    assert list(res.curves.k) == [0, 1, 2, 3] and set(res.curves.order) == {"custom"}
    assert res.sequences[("custom", 0)] == seq
    np.testing.assert_allclose(res.curves.fraction, np.arange(4) / 64)
    x, y = data
    with model_guard(model), torch.no_grad(), ablate(model, {"hidden.1": [3, 0], "hidden.0": [5]}):
        acc = int((model(x).argmax(1) == y).sum()) / len(y)
    assert res.curves.accuracy.iloc[3] == acc
    ref = sd.ablation_curves(model, data, LAYERS, order=seq, progress=False, method="reference")
    pd.testing.assert_frame_equal(res.curves[["k", "accuracy"]], ref.curves[["k", "accuracy"]])


def test_sorted_orders(trained):
    model, data = trained
    orders = ["selectivity-high", "selectivity-low", "importance-high", "importance-low"]
    res = sd.ablation_curves(model, data, LAYERS, order=orders, levels=[0, 8, 32, 64], progress=False)
    assert list(res.auc().order) == orders
    imp = sd.unit_importance(model, data, LAYERS, progress=False)
    drops = {(r.layer, r.unit): r.accuracy_drop for r in imp.itertuples()}
    hi = [drops[u] for u in res.sequences[("importance-high", 0)]]
    assert hi == sorted(hi, reverse=True)
    assert res.sequences[("importance-low", 0)][0] != res.sequences[("importance-high", 0)][0]
    sel = sd.class_selectivity(model, data, LAYERS)
    s = {(r.layer, r.unit): r.selectivity for r in sel.itertuples()}
    high = [s[u] for u in res.sequences[("selectivity-high", 0)]]
    assert high == sorted(high, reverse=True)
    acc = res.curves.set_index(["order", "k"]).accuracy
    assert acc[("importance-high", 8)] <= acc[("importance-low", 8)]


def test_levels_resolution_and_validation(trained):
    assert resolve_levels(None, 10) == list(range(11))
    grid = resolve_levels(None, 5000)
    assert grid[0] == 0 and grid[-1] == 5000 and len(grid) >= 33
    assert resolve_levels([5, 0, 5], 10) == [0, 5]
    model, data = trained
    snap = snapshot(model)
    with pytest.raises(SingledirError, match="level 65 is larger than the 64 units"):
        sd.ablation_curves(model, data, LAYERS, levels=[0, 65], progress=False)
    with pytest.raises(SingledirError, match="negative"):
        sd.ablation_curves(model, data, LAYERS, levels=[-1], progress=False)
    with pytest.raises(SingledirError, match="larger than the 2 units the sequence has"):
        sd.ablation_curves(model, data, LAYERS, order=[("hidden.0", 1), ("hidden.0", 2)], levels=[3], progress=False)
    assert_unchanged(model, snap)


BAD = [
    (dict(layers=["nope"]), "unknown layer 'nope'; valid layers: hidden.0, hidden.1"),
    (dict(order="best-first"), "unknown order"),
    (dict(clamp="median"), "unknown clamp"),
    (dict(basis="pca"), "unknown basis"),
    (dict(method="turbo"), "unknown method"),
    (dict(repeats=0), "repeats must be an int >= 1"),
    (dict(order=[("hidden.0", 1), ("hidden.0", 1)]), "appears twice"),
    (dict(order=[("hidden.0", 99)]), "outside"),
    (dict(order=[("out", 1)]), "not among layers"),
    (dict(basis="random", order="importance-high"), "basis='random' supports only"),
    (dict(memory_budget=-5), "memory_budget"),
]


@pytest.mark.parametrize("kwargs,msg", BAD)
def test_bad_arguments(kwargs, msg, trained):
    model, data = trained
    snap = snapshot(model)
    kw = dict(layers=LAYERS, progress=False, levels=[0, 1])
    kw.update(kwargs)
    with pytest.raises(SingledirError, match=msg) as err:
        sd.ablation_curves(model, data, **kw)
    assert "\n" not in str(err.value)
    assert_unchanged(model, snap)


class _TupleOut(torch.nn.Module):
    def forward(self, x):
        return x, x


class _Odd(torch.nn.Module):
    """Layers with no unit dimension: a tuple output and a 1-D output."""

    def __init__(self):
        super().__init__()
        self.pair = _TupleOut()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        a, _ = self.pair(x.flatten(1))
        return self.fc(a)


def test_bad_data_and_layers(trained):
    model, (x, y) = trained
    snap = snapshot(model)
    cases = [
        ((x, y + 10), "outside the model's 10 classes"),
        ((x, y - 1), "outside the model's 10 classes"),
        ((x[:0], y[:0]), "empty"),
        ([], "empty"),
        ((x.clone().fill_(float("nan")), y), "NaN"),
    ]
    for data, msg in cases:
        with pytest.raises(SingledirError, match=msg):
            sd.ablation_curves(model, data, LAYERS, levels=[0, 1], progress=False)
        assert_unchanged(model, snap)
    odd = _Odd()
    with pytest.raises(SingledirError, match="outputs a tuple"):
        sd.ablation_curves(odd, (x, y), ["pair"], progress=False)
    with pytest.raises(SingledirError, match="no unit dimension"):
        sd.ablation_curves(_OneD(), (x, y), ["squash"], progress=False)


class _OneD(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.squash = _Sum()
        self.fc = torch.nn.Linear(1, 10)

    def forward(self, x):
        return self.fc(self.squash(x.flatten(1))[:, None])


class _Sum(torch.nn.Module):
    def forward(self, x):
        return x.sum(1)
