"""Noise curves: shapes, AUC over log10(scale), determinism, batching independence, sanity, bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import singledir as sd
from singledir.errors import SingledirError
from singledir.models import build_model
from singledir.reliance.units import unit_stats
from singledir.reliance.noise import DEFAULT_SCALES, NoiseResult
from singledir.reliance.testing import assert_unchanged, compare_noise, digits, snapshot, train_quick

LAYERS = ["hidden.0", "hidden.1"]


@pytest.fixture(scope="module")
def trained():
    x, y = digits()
    model = build_model("mlp", (1, 8, 8), 10, width=32, seed=1)
    torch.manual_seed(1)
    train_quick(model, x[:1200], y[:1200], epochs=15)
    return model, (x[1200:1500], y[1200:1500]), (x[:1200], y[:1200])


def test_shapes_defaults_and_sanity(trained):
    model, data, _ = trained
    snap = snapshot(model)
    res = sd.noise_curves(model, data, LAYERS, repeats=2, progress=False)
    assert_unchanged(model, snap)
    df = res.curves
    assert list(df.columns) == ["scale", "repeat", "accuracy", "loss"]
    assert len(df) == 2 * len(DEFAULT_SCALES) and math.isclose(df.scale.min(), 10**-1.5)
    mean = df.groupby("scale").accuracy.mean()
    assert abs(mean.iloc[0] - res.meta["base_accuracy"]) < 0.02  # tiny noise: about the noise-free accuracy
    assert mean.iloc[-1] < res.meta["base_accuracy"] - 0.3  # huge noise destroys it
    auc = res.auc()
    assert len(auc) == 1 and auc.n_curves.iloc[0] == 2
    assert 0 < auc.normalized_auc_mean.iloc[0] < 1
    assert len(res.auc_per_curve()) == 2


def test_auc_hand_computation():
    curves = pd.DataFrame(
        {"scale": [0.1, 1.0, 10.0], "repeat": [0, 0, 0], "accuracy": [0.9, 0.5, 0.1], "loss": [0.0] * 3}
    )
    res = NoiseResult(curves, {"base_accuracy": 1.0, "seed": 0})
    per = res.auc_per_curve().iloc[0]
    assert math.isclose(per.auc, (0.9 + 0.5) / 2 + (0.5 + 0.1) / 2)  # log10 steps of 1
    assert math.isclose(per.normalized_auc, 1.0 / 2.0)  # / (base accuracy x log10 range 2)


def test_determinism_and_batching_independence(trained):
    model, data, _ = trained
    kw = dict(scales=[0.3, 1.0, 3.0], repeats=2, seed=4, progress=False)
    a = sd.noise_curves(model, data, LAYERS, **kw)
    b = sd.noise_curves(model, data, LAYERS, **kw)
    pd.testing.assert_frame_equal(a.curves, b.curves)
    c = sd.noise_curves(model, data, LAYERS, **{**kw, "seed": 5})
    assert not np.array_equal(a.curves.loss, c.curves.loss)
    r = a.curves.set_index(["repeat", "scale"]).loss
    assert r[(0, 1.0)] != r[(1, 1.0)]  # repeats draw new noise
    # the noise of an example does not depend on how the data is batched, nor on the path
    ref7 = sd.noise_curves(model, data, LAYERS, method="reference", batch_size=7, **kw)
    ref50 = sd.noise_curves(model, data, LAYERS, method="reference", batch_size=50, **kw)
    np.testing.assert_array_equal(ref7.curves.accuracy, ref50.curves.accuracy)
    np.testing.assert_allclose(ref7.curves.loss, ref50.curves.loss, atol=1e-9)
    # the fast path (small chunks) against the reference: equal up to float rounding inside the network,
    # i.e. by the near-tie rule (compare_noise), not necessarily bit for bit
    small = sd.noise_curves(model, data, LAYERS, memory_budget=100_000, **kw)
    assert small.meta["method"] == "fast"
    cmp = compare_noise(model, data, small, ref7, memory_budget=100_000)
    assert cmp.ok, cmp.summary()


def test_stats_data_sets_sigma(trained):
    model, data, train = trained
    res = sd.noise_curves(model, data, LAYERS, scales=[1.0], repeats=1, stats_data=train, progress=False)
    expected = unit_stats(model, train, LAYERS)
    for layer in LAYERS:
        torch.testing.assert_close(res.meta["sigma"][layer], expected[layer].std)
    own = sd.noise_curves(model, data, LAYERS, scales=[1.0], repeats=1, progress=False)
    assert not torch.equal(own.meta["sigma"]["hidden.0"], res.meta["sigma"]["hidden.0"])


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(scales=[0.1, -1.0]), "negative"),
        (dict(scales=[0.0, 1.0]), "scale 0"),
        (dict(scales=[1.0, 1.0]), "duplicates"),
        (dict(scales=[]), "non-empty"),
        (dict(repeats=0), "repeats"),
        (dict(method="magic"), "unknown method"),
        (dict(layers=["hidden.9"]), "unknown layer"),
    ],
)
def test_bad_arguments(kwargs, msg, trained):
    model, data, _ = trained
    snap = snapshot(model)
    kw = dict(layers=LAYERS, progress=False)
    kw.update(kwargs)
    with pytest.raises(SingledirError, match=msg):
        sd.noise_curves(model, data, **kw)
    assert_unchanged(model, snap)


def test_nan_midway_leaves_model_unchanged(trained):
    model, (x, y), _ = trained
    model.train()
    snap = snapshot(model)
    x = x.clone()
    x[-1, 0, 0, 0] = float("nan")
    for method in ("auto", "reference"):
        with pytest.raises(SingledirError, match="NaN"):
            sd.noise_curves(model, (x, y), LAYERS, scales=[1.0], repeats=1, progress=False, method=method, batch_size=64)
        assert_unchanged(model, snap)
    model.eval()
