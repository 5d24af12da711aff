"""The dense-chain paths of the fast evaluator (:mod:`singledir.reliance.fast.chainwalk`, ``.singles`` and the
noise readout term): which rests they take, and agreement with the reference on the cases they handle --
zero and mean clamps, level jumps across layers, layers fully ablated, an unanalysed layer in the chain,
every layer's single ablations, a 3-layer MLP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import singledir as sd
from singledir.models import build_model
from singledir.reliance.common import layer_plans, prepare
from singledir.reliance.fast import FastEvaluator
from singledir.reliance.testing import compare_curves, compare_importance, compare_noise, digits


@pytest.fixture(scope="module")
def data():
    return digits(600)


def mlp(depth=2, width=24, seed=0):
    return build_model("mlp", (1, 8, 8), 10, width=width, depth=depth, seed=seed).eval()


def chain_of(model, data, layers):
    with torch.no_grad():
        prepared = prepare(model, data, layers, None)
        plans = layer_plans(model, prepared, "zero", None, None)
        return FastEvaluator(model, prepared.batches, plans).dense_chain


def test_dense_chain_found_for_mlps_only(data):
    m3 = mlp(depth=3)
    ch = chain_of(m3, data, ["hidden.0", "hidden.2"])  # hidden.1 not analysed: a stage without a marker
    assert ch is not None and [s.li for s in ch.stages] == [0, None, 1]
    assert chain_of(mlp(), data, ["hidden.1"]) is not None
    conv = build_model("convnet", (1, 8, 8), 10, width_mult=0.0625, seed=0).eval()
    assert chain_of(conv, data, [conv.unit_layers[-1]]) is None


@pytest.mark.parametrize("clamp", ["zero", "mean"])
def test_curves_agree_with_the_reference(data, clamp):
    m3 = mlp(depth=3)
    layers = ["hidden.0", "hidden.1", "hidden.2"]
    kw = dict(repeats=2, clamp=clamp, progress=False, seed=3)
    for levels in (None, [0, 5, 17, 40, 71, 72]):  # every level; jumps across layers up to all units
        fast = sd.ablation_curves(m3, data, layers, levels=levels, method="fast", **kw)
        ref = sd.ablation_curves(m3, data, layers, levels=levels, method="reference", **kw)
        cmp = compare_curves(m3, data, fast, ref)
        assert cmp.ok, cmp.summary()
    # one layer up to all units (its consumer is then recomputed: the bias), a later layer not analysed
    fast = sd.ablation_curves(m3, data, layers[:1], method="fast", **kw)
    ref = sd.ablation_curves(m3, data, layers[:1], method="reference", **kw)
    assert compare_curves(m3, data, fast, ref).ok


def test_importance_agrees_with_the_reference(data):
    m3 = mlp(depth=3)
    for layers in (["hidden.0", "hidden.1", "hidden.2"], ["hidden.1"]):
        for clamp in ("zero", "mean"):
            fast = sd.unit_importance(m3, data, layers, clamp=clamp, progress=False, method="fast")
            ref = sd.unit_importance(m3, data, layers, clamp=clamp, progress=False, method="reference")
            cmp = compare_importance(m3, data, fast, ref)
            assert cmp.ok, cmp.summary()
            np.testing.assert_allclose(fast.loss_increase, ref.loss_increase, atol=1e-5)


def test_noise_agrees_with_the_reference(data):
    m = mlp()
    kw = dict(scales=[0.5, 1.0, 4.0], repeats=2, progress=False, seed=1)
    for layers in (["hidden.0", "hidden.1"], ["hidden.1"]):
        fast = sd.noise_curves(m, data, layers, method="fast", **kw)
        ref = sd.noise_curves(m, data, layers, method="reference", **kw)
        cmp = compare_noise(m, data, fast, ref)
        assert cmp.ok, cmp.summary()


@pytest.mark.parametrize("clamp", ["zero", "mean"])
def test_curves_with_an_unanalysed_layer_between_agree_with_the_reference(data, clamp):
    # hidden.1 not analysed: the live rows of hidden.2 reorder the outputs of a stage without a marker
    m3 = mlp(depth=3)
    layers = ["hidden.0", "hidden.2"]
    kw = dict(repeats=2, clamp=clamp, progress=False, seed=5)
    for levels in (None, [0, 3, 20, 47, 48]):
        fast = sd.ablation_curves(m3, data, layers, levels=levels, method="fast", **kw)
        ref = sd.ablation_curves(m3, data, layers, levels=levels, method="reference", **kw)
        cmp = compare_curves(m3, data, fast, ref)
        assert cmp.ok, cmp.summary()


def test_levels_compute_only_the_live_rows(data, monkeypatch):
    # the readout's inner dimension is the hidden.1 units not yet ablated, at every level it is recomputed
    from singledir.reliance.fast import chainwalk

    model = mlp(width=24)
    seen = []
    real = chainwalk._ChainWalk._linear

    def spy(self, i):
        if i == len(self.dc.stages) - 1:
            seen.append((self.counts[1], tuple(self.fwA[i].shape), tuple(self.hA[i].shape)))
        return real(self, i)

    monkeypatch.setattr(chainwalk._ChainWalk, "_linear", spy)
    res = sd.ablation_curves(model, data, ["hidden.0", "hidden.1"], repeats=1, progress=False, seed=2,
                             method="fast")
    assert seen and any(c > 0 for c, _w, _h in seen)
    for ablated, (out, k), (rows, _n) in seen:
        assert out == 10 and k == rows == 24 - ablated
    assert len(res.curves) == 49
