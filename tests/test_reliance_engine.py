"""Reliance engine: fast paths equal the reference, the model is handed back unchanged, hooks and inputs.

Equality, for the MLP, the ConvNet with batch norm, the ResNet and a user-style model with branches and
a skip connection: ablation curves agree by :func:`~singledir.reliance.testing.compare_curves` (equal
accuracies except at near-ties that float64 resolves to the reference, losses within 1e-5), noise
curves by ``compare_noise`` and single-unit importance by ``compare_importance`` (the same rule); the
batched hooks: accuracies exactly equal, losses within 1e-5.
Also the batched-hook fallback (untraceable model, with its warning and recorded path), example chunking
under a small memory budget, data read once (shuffled DataLoaders), inputs moved to the model's device /
dtype on every path, and the building blocks in hooks.py / edits.py / units.py / inputs.py / fast/graph.py.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import singledir as sd
from singledir.errors import SingledirError
from singledir.models import build_model
from singledir.reliance import common, edits, evaluators, hooks, inputs, units
from singledir.reliance.evaluators import FastPathFallback
from singledir.reliance.fast import FastEvaluator
from singledir.reliance.fast.graph import Split, find_linear_chain, trace_with_markers
from singledir.reliance.testing import (
    ControlFlowNet,
    UserNet,
    assert_unchanged,
    compare_curves,
    compare_importance,
    compare_noise,
    digits,
    near_tie_bound,
    randomize_batchnorm,
    snapshot,
)

KINDS = ["mlp", "convnet", "resnet", "user"]
N = 240


def make(kind: str):
    """(model in a mixed train/eval state, layers)."""
    if kind == "mlp":
        m, layers = build_model("mlp", (1, 8, 8), 10, width=24, seed=0), ["hidden.0", "hidden.1"]
    elif kind == "convnet":
        m = randomize_batchnorm(build_model("convnet", (1, 8, 8), 10, width_mult=0.0625, seed=0))
        layers = ["features.20", "features.29", "features.32"]
    elif kind == "resnet":
        m = randomize_batchnorm(build_model("resnet", (1, 8, 8), 10, width_mult=0.0625, seed=0))
        layers = ["layer3.1", "layer4.0", "layer4.1"]
    else:
        torch.manual_seed(0)
        m, layers = UserNet(), ["hid", "br1", "br2", "mix"]
    m.train()
    list(m.children())[0].eval()  # a mixed state that must come back as it was
    return m, layers


@pytest.fixture(scope="module")
def data():
    return digits(N)


def some_levels(total: int) -> list[int]:
    return sorted({0, 1, 2, 5, total // 3, total // 2, total - 1, total})


def assert_same(a, b):
    """Exactly equal accuracies, losses within 1e-5 (the hook paths, importance and noise)."""
    np.testing.assert_array_equal(a["accuracy"].to_numpy(), b["accuracy"].to_numpy())
    np.testing.assert_allclose(a["loss"].to_numpy(), b["loss"].to_numpy(), atol=1e-5, rtol=0)


def assert_agree(model, data, fast, ref, **kw):
    """Fast curves equal the reference's except at near-ties that float64 resolves to the reference."""
    cmp = compare_curves(model, data, fast, ref, **kw)
    assert cmp.ok, cmp.summary()
    return cmp


# --------------------------------------------------------------------------------------------------
# fast == reference
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("clamp,basis", [("zero", "units"), ("mean", "units"), ("zero", "random")])
def test_ablation_fast_equals_reference(kind, clamp, basis, data):
    model, layers = make(kind)
    snap = snapshot(model)
    total = sum(units.layer_units(model, data, layers).values())
    kw = dict(repeats=2, clamp=clamp, basis=basis, levels=some_levels(total), progress=False, seed=3)
    fast = sd.ablation_curves(model, data, layers, **kw)
    assert_unchanged(model, snap)
    ref = sd.ablation_curves(model, data, layers, method="reference", **kw)
    assert_unchanged(model, snap)
    assert fast.meta["method"] == "fast" and ref.meta["method"] == "reference"
    assert fast.sequences == ref.sequences
    assert_agree(model, data, fast, ref)


@pytest.mark.parametrize("kind", KINDS)
def test_importance_fast_equals_reference(kind, data):
    model, layers = make(kind)
    snap = snapshot(model)
    fast = sd.unit_importance(model, data, layers, progress=False)
    ref = sd.unit_importance(model, data, layers, progress=False, method="reference")
    assert_unchanged(model, snap)
    cmp = compare_importance(model, data, fast, ref)
    assert cmp.ok, cmp.summary()
    np.testing.assert_allclose(fast["loss_increase"].to_numpy(), ref["loss_increase"].to_numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_noise_fast_equals_reference(kind, data):
    model, layers = make(kind)
    snap = snapshot(model)
    kw = dict(scales=[0.1, 0.5, 2.0], repeats=2, seed=1, progress=False)
    fast = sd.noise_curves(model, data, layers, **kw)
    ref = sd.noise_curves(model, data, layers, method="reference", **kw)
    assert_unchanged(model, snap)
    assert fast.meta["method"] == "fast"
    cmp = compare_noise(model, data, fast, ref)
    assert cmp.ok, cmp.summary()


def test_importance_mean_clamp_fast_equals_reference(data):
    model, layers = make("convnet")
    fast = sd.unit_importance(model, data, layers, clamp="mean", progress=False)
    ref = sd.unit_importance(model, data, layers, clamp="mean", progress=False, method="reference")
    assert_same(fast, ref)


@pytest.mark.parametrize("kind", ["mlp", "user"])
def test_batched_hooks_equal_reference(kind, data):
    model, layers = make(kind)
    snap = snapshot(model)
    kw = dict(repeats=2, levels=[0, 3, 10, 20], progress=False)
    assert_same(
        sd.ablation_curves(model, data, layers, method="hooks", **kw).curves,
        sd.ablation_curves(model, data, layers, method="reference", **kw).curves,
    )
    assert_same(
        sd.ablation_curves(model, data, layers, method="hooks", basis="random", **kw).curves,
        sd.ablation_curves(model, data, layers, method="reference", basis="random", **kw).curves,
    )
    nkw = dict(scales=[0.3, 3.0], repeats=1, progress=False)
    assert_same(
        sd.noise_curves(model, data, layers, method="hooks", **nkw).curves,
        sd.noise_curves(model, data, layers, method="reference", **nkw).curves,
    )
    assert_same(
        sd.unit_importance(model, data, layers, method="hooks", progress=False),
        sd.unit_importance(model, data, layers, method="reference", progress=False),
    )
    assert_unchanged(model, snap)


def test_untraceable_model_falls_back_to_hooks(data):
    torch.manual_seed(0)
    model = ControlFlowNet()
    snap = snapshot(model)
    kw = dict(repeats=1, levels=[0, 4, 16, 32], progress=False)
    with pytest.warns(FastPathFallback) as caught:
        auto = sd.ablation_curves(model, data, ["l1", "l2"], **kw)
    assert len(caught) == 1 and "fx fast path cannot run this model" in str(caught[0].message)
    assert auto.meta["method"] == "hooks" and auto.meta["method_requested"] == "auto"
    assert auto.meta["fallback_reason"] and auto.meta["fallback_reason"] in str(caught[0].message)
    assert_same(auto.curves, sd.ablation_curves(model, data, ["l1", "l2"], method="reference", **kw).curves)
    with pytest.raises(SingledirError, match="method='fast' needs a model torch.fx can trace"):
        sd.ablation_curves(model, data, ["l1", "l2"], method="fast", **kw)
    assert_unchanged(model, snap)


def test_small_memory_budget_chunks_examples_and_stays_exact(data):
    model, layers = make("resnet")
    with hooks.model_guard(model), torch.no_grad():
        prep = common.prepare(model, data, layers)
        ev = evaluators.make_evaluator("auto", model, prep.batches, common.layer_plans(model, prep, "zero"), 300_000)
    assert isinstance(ev, FastEvaluator) and ev.chunk < N
    kw = dict(repeats=1, levels=[0, 7, 40, 80], progress=False)
    small = sd.ablation_curves(model, data, layers, memory_budget=300_000, **kw)
    ref = sd.ablation_curves(model, data, layers, method="reference", **kw)
    assert_agree(model, data, small, ref, memory_budget=300_000)


def test_data_as_dataloader_equals_tensors(data):
    model, layers = make("mlp")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=37)
    kw = dict(repeats=1, levels=[0, 10, 48], progress=False)
    assert_same(
        sd.ablation_curves(model, loader, layers, **kw).curves, sd.ablation_curves(model, data, layers, **kw).curves
    )


# --------------------------------------------------------------------------------------------------
# model handed back unchanged after errors
# --------------------------------------------------------------------------------------------------
class _Bomb(nn.Module):
    """MLP whose forward raises on its 4th call (a failure midway, with ablation hooks installed)."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.net = build_model("mlp", (1, 8, 8), 10, width=8, seed=0)

    def forward(self, x):
        self.calls += 1
        if self.calls == 4:
            raise RuntimeError("boom")
        return self.net(x)


@pytest.mark.parametrize("method", ["reference", "hooks"])
def test_model_unchanged_after_exception_midway(method, data):
    model = _Bomb()
    model.train()
    user_handle = model.net.hidden[0].register_forward_hook(lambda *a: None)  # a user's own hook stays
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        sd.ablation_curves(model, (data[0][:20], data[1][:20]), ["net.hidden.0"], repeats=1, levels=[0, 1, 2, 3, 4, 5],
                           progress=False, method=method, batch_size=10)
    assert_unchanged(model, snap)
    assert len(model.net.hidden[0]._forward_hooks) == 1
    user_handle.remove()


@pytest.mark.parametrize("method", ["auto", "reference", "hooks"])
def test_model_unchanged_after_nan_in_second_batch(method, data):
    model, layers = make("convnet")
    snap = snapshot(model)
    x, y = data[0].clone(), data[1]
    x[150] = float("nan")
    with pytest.raises(SingledirError, match="NaN"):
        sd.ablation_curves(model, (x, y), layers, repeats=1, levels=[0, 3], progress=False, method=method, batch_size=100)
    assert_unchanged(model, snap)


def test_model_unchanged_when_data_iterable_raises(data):
    model, layers = make("mlp")
    snap = snapshot(model)

    def batches():
        yield data[0][:50], data[1][:50]
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        sd.ablation_curves(model, batches(), layers, progress=False)
    assert_unchanged(model, snap)


# --------------------------------------------------------------------------------------------------
# hooks.py, edits.py, units.py, inputs.py, fast/graph.py
# --------------------------------------------------------------------------------------------------
def test_record_ablate_noise_contexts_remove_hooks(data):
    model, layers = make("mlp")
    x = data[0][:16]
    snap = snapshot(model)
    with hooks.model_guard(model), torch.no_grad():
        base = model(x)
        with hooks.record(model, layers) as rec:
            model(x)
        assert rec["hidden.0"].shape == (16, 24)
        with hooks.ablate(model, {"hidden.1": list(range(24))}):
            out = model(x)
        torch.testing.assert_close(out, model.out.bias.expand(16, -1))  # all units of the last layer off
        spec = edits.NoiseSpec(torch.ones(24, dtype=torch.float64), 0.0, key=(0, 0, 0))
        with hooks.noise(model, {"hidden.0": spec}):
            assert torch.equal(model(x), base)
    assert_unchanged(model, snap)


def test_model_guard_restores_on_exception():
    model, _ = make("resnet")
    snap = snapshot(model)
    with pytest.raises(ValueError), hooks.model_guard(model):
        assert not any(m.training for m in model.modules())
        model.stem.register_forward_hook(lambda *a: None)
        raise ValueError("x")
    assert_unchanged(model, snap)


def test_replica_clamp_and_projection_match_one_at_a_time():
    h = torch.randn(6, 5, 3, 3)
    masks = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 1, 0, 1]], dtype=torch.bool)
    vals = torch.arange(5.0)
    both = edits.apply_clamp(torch.cat([h, h]), masks, vals)
    assert torch.equal(both[:6], edits.apply_clamp(h, masks[0], vals))
    assert torch.equal(both[6:], edits.apply_clamp(h, masks[1], vals))
    assert torch.equal(both[6:, 1], torch.full((6, 3, 3), 1.0))
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    full = edits.apply_projection(h, (q @ q.T).float())
    assert full.abs().max() < 1e-5  # projecting out every direction removes everything
    center = torch.randn(5)
    clamped = edits.apply_projection(h, (q @ q.T).float(), center)
    torch.testing.assert_close(clamped, center.view(1, 5, 1, 1).expand_as(h), atol=1e-5, rtol=0)


def test_example_noise_independent_of_batching():
    whole = edits.example_noise((3, 2), 0, 100, key=(1, 2, 3))
    parts = torch.cat([edits.example_noise((3, 2), a, b, key=(1, 2, 3)) for a, b in [(0, 7), (7, 64), (64, 100)]])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, edits.example_noise((3, 2), 0, 100, key=(1, 2, 4)))


def test_unit_stats_and_layer_units(data):
    model, layers = make("convnet")
    counts = units.layer_units(model, data, layers)
    assert counts == {"features.20": 16, "features.29": 32, "features.32": 32}
    st = units.unit_stats(model, (data[0], data[1]), ["features.20"], progress=False)["features.20"]
    with hooks.model_guard(model), torch.no_grad(), hooks.record(model, ["features.20"]) as rec:
        model(data[0])
    h = rec["features.20"].double().transpose(0, 1).reshape(16, -1)
    torch.testing.assert_close(st.mean, h.mean(1))
    torch.testing.assert_close(st.std, h.std(1, unbiased=False))
    acts = units.unit_activations(model, data, ["features.20"])["features.20"]
    assert acts.shape == (N, 16)


def test_inputs_checks(data):
    model, _ = make("mlp")
    with pytest.raises(SingledirError, match="unknown layer 'nope'; valid layers: hidden.0, hidden.1"):
        inputs.validate_layers(model, ["nope"])
    with pytest.raises(SingledirError, match="listed twice"):
        inputs.validate_layers(model, ["hidden.0", "hidden.0"])
    assert inputs.validate_layers(model, "hidden.1") == ["hidden.1"]
    with pytest.raises(SingledirError, match="empty"):
        inputs.as_batches((data[0][:0], data[1][:0]))
    with pytest.raises(SingledirError, match="empty"):
        inputs.as_batches([])
    with pytest.raises(SingledirError, match="labels"):
        inputs.as_batches((data[0][:5], data[1][:4]))
    b = inputs.as_batches(data, batch_size=100)
    assert [len(y) for _, y in b] == [100, 100, 40]
    with pytest.raises(SingledirError, match="outside the model's 10 classes"):
        inputs.check_labels(torch.tensor([0, 10]), 10)
    with pytest.raises(SingledirError, match="NaN"):
        inputs.check_finite(torch.tensor([1.0, float("nan")]), "x")


def test_graph_split_and_linear_chains():
    model, layers = make("convnet")
    model.eval()
    traced = trace_with_markers(model, layers)
    split = Split.build(traced, layers)
    names = {str(n.target) for n in split.prefix if n.op == "call_module"}
    assert "features.0" in names and "features.21" not in names  # the prefix stops at the first marker
    chains = {split.marker_layer[m]: find_linear_chain(m, traced) for m in split.markers}
    assert chains["features.32"].kind == "linear" and chains["features.32"].flattened  # pool, flatten, linear
    assert chains["features.20"].kind == "conv"
    user = UserNet().eval()
    t = trace_with_markers(user, ["hid", "br1"])
    s = Split.build(t, ["hid", "br1"])
    assert all(find_linear_chain(m, t) is None for m in s.markers)  # several users / an add: no chain


# --------------------------------------------------------------------------------------------------
# unusual graphs
# --------------------------------------------------------------------------------------------------
class _Shared(nn.Module):
    """One ReLU module called twice (both calls are ablated, as with hooks)."""

    def __init__(self):
        super().__init__()
        self.l1, self.act, self.l2, self.out = nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 12), nn.Linear(12, 10)

    def forward(self, x):
        return self.out(self.act(self.l2(self.act(self.l1(x.flatten(1))))))


class _InplaceConv(nn.Module):
    """In-place ReLUs, a conv consumer and a flatten -> Linear consumer (R = 64 columns per unit)."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True)
        self.c2, self.r2 = nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=True)
        self.fc = nn.Linear(6 * 64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.r2(self.c2(self.r1(self.c1(x)))), 1))


class _IaddResidual(nn.Module):
    """``o += h`` residual and a spatial mean before the head."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1, self.c2, self.r2 = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        h = self.r1(self.c1(x))
        o = self.c2(h)
        o += h
        return self.fc(self.r2(o).mean((2, 3)))


class _LateInplace(nn.Module):
    """The prefix modifies in place a value the ablated part read before: the fx split must not be used."""

    def __init__(self):
        super().__init__()
        self.l1, self.act, self.fc = nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 10)

    def forward(self, x):
        a = self.l1(x.flatten(1))
        out = self.fc(self.act(a)) + a
        a.mul_(2.0)
        return out + a


@pytest.mark.filterwarnings("ignore::singledir.reliance.evaluators.FastPathFallback")  # _LateInplace
@pytest.mark.parametrize(
    "factory,layers,method",
    [
        (_Shared, ["act"], "fast"),
        (_InplaceConv, ["r1", "r2"], "fast"),
        (_IaddResidual, ["r1", "r2"], "fast"),
        (lambda: build_model("mlp", (1, 8, 8), 10, width=12, seed=0), ["hidden.1", "out"], "fast"),  # logits too
        (lambda: build_model("mlp", (1, 8, 8), 10, width=12, seed=0).double(), ["hidden.0", "hidden.1"], "fast"),
        (_LateInplace, ["act"], "hooks"),
    ],
)
def test_unusual_graphs_equal_reference(factory, layers, method, data):
    torch.manual_seed(0)
    model = factory()
    dtype = next(model.parameters()).dtype
    d = (data[0][:120].to(dtype), data[1][:120])
    snap = snapshot(model)
    kw = dict(repeats=2, progress=False)
    fast = sd.ablation_curves(model, d, layers, **kw)
    assert fast.meta["method"] == method
    ref = sd.ablation_curves(model, d, layers, method="reference", **kw)
    if method == "fast":
        assert_agree(model, d, fast, ref)
    else:
        assert_same(fast.curves, ref.curves)
    assert_same(sd.unit_importance(model, d, layers, progress=False),
                sd.unit_importance(model, d, layers, progress=False, method="reference"))
    nkw = dict(scales=[0.5, 2.0], repeats=1, progress=False)
    nfast = sd.noise_curves(model, d, layers, **nkw)
    nref = sd.noise_curves(model, d, layers, method="reference", **nkw)
    if method == "fast":
        cmp = compare_noise(model, d, nfast, nref)
        assert cmp.ok, cmp.summary()
    else:
        assert_same(nfast.curves, nref.curves)
    assert_unchanged(model, snap)


# --------------------------------------------------------------------------------------------------
# the path taken is recorded; auto warns when it falls back
# --------------------------------------------------------------------------------------------------
def test_every_result_records_the_path(data):
    model, layers = make("mlp")
    kw = dict(progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a traceable model: no fallback warning
        abl = sd.ablation_curves(model, data, layers, repeats=1, levels=[0, 5], **kw)
        noi = sd.noise_curves(model, data, layers, scales=[1.0], repeats=1, **kw)
        imp = sd.unit_importance(model, data, layers, method="hooks", **kw)
    sel = sd.class_selectivity(model, data, layers)
    assert (abl.meta["method"], abl.meta["method_requested"], abl.meta["fallback_reason"]) == ("fast", "auto", None)
    assert noi.meta["method"] == "fast"
    assert (imp.attrs["method"], imp.attrs["method_requested"]) == ("hooks", "hooks")
    assert sel.attrs["method"] == "reference"
    torch.manual_seed(0)
    cf = ControlFlowNet()
    with pytest.warns(FastPathFallback) as caught:
        r = sd.noise_curves(cf, data, ["l1"], scales=[1.0], repeats=1, **kw)
    assert len(caught) == 1 and r.meta["method"] == "hooks"
    with pytest.warns(FastPathFallback) as caught:
        i = sd.unit_importance(cf, data, ["l1"], **kw)
    assert len(caught) == 1 and i.attrs["method"] == "hooks" and i.attrs["fallback_reason"]


# --------------------------------------------------------------------------------------------------
# data is read once: a shuffled DataLoader gives the numbers of the tensors in the order it yields
# --------------------------------------------------------------------------------------------------
class _Counting:
    """An iterable over a DataLoader that counts how often it is read."""

    def __init__(self, loader):
        self.loader, self.passes = loader, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.loader)


def _shuffled(data, seed=3, batch_size=37):
    ds = torch.utils.data.TensorDataset(*data)
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, generator=gen)


def _first_pass(data, seed=3, batch_size=37):
    """The tensors a fresh ``_shuffled(data, seed)`` yields on its first pass, in that order."""
    xs, ys = zip(*list(_shuffled(data, seed, batch_size)))
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("method", ["auto", "reference"])
def test_shuffled_dataloader_is_read_once(method, data):
    model, layers = make("mlp")
    d = (data[0][:150], data[1][:150])
    tensors = _first_pass(d)
    stats_tensors = _first_pass(d, seed=4)
    calls = {
        "class_selectivity": lambda src, st: sd.class_selectivity(model, src, layers, batch_size=37),
        "ablation_curves": lambda src, st: sd.ablation_curves(
            model, src, layers, order=["selectivity-high", "random"], repeats=1, clamp="mean", levels=[0, 3, 20],
            stats_data=st, batch_size=37, progress=False, method=method).curves,
        "noise_curves": lambda src, st: sd.noise_curves(
            model, src, layers, scales=[0.5, 2.0], repeats=1, stats_data=st, batch_size=37, progress=False,
            method=method).curves,
        "unit_importance": lambda src, st: sd.unit_importance(
            model, src, layers, clamp="mean", stats_data=st, batch_size=37, progress=False, method=method),
    }
    for name, fn in calls.items():
        src, st = _Counting(_shuffled(d)), _Counting(_shuffled(d, seed=4))
        got = fn(src, st)
        want = fn(tensors, stats_tensors)
        assert src.passes == 1, f"{name} read data {src.passes} times"
        assert st.passes <= 1, f"{name} read stats_data {st.passes} times"
        pd.testing.assert_frame_equal(got, want, obj=name)


# --------------------------------------------------------------------------------------------------
# every path feeds the model on its device, in its dtype
# --------------------------------------------------------------------------------------------------
class _StrictInput(nn.Module):
    """A float64 MLP whose first layer checks that its input has the parameters' device and dtype."""

    def __init__(self):
        super().__init__()
        self.net = build_model("mlp", (1, 8, 8), 10, width=12, seed=0).double()
        self.net.hidden[0][0].register_forward_pre_hook(self._check)

    @staticmethod
    def _check(module, args):
        w = module.weight
        if args[0].device != w.device or args[0].dtype != w.dtype:
            raise AssertionError(f"input on {args[0].device}/{args[0].dtype}, model on {w.device}/{w.dtype}")

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("method", ["fast", "hooks", "reference"])
def test_every_path_moves_inputs_to_the_model(method, data):
    model = _StrictInput()
    layers = ["net.hidden.0", "net.hidden.1"]
    d = (data[0][:100], data[1][:100])  # float32 data, float64 model
    kw = dict(progress=False, method=method, batch_size=40)
    sd.ablation_curves(model, d, layers, repeats=1, levels=[0, 4], clamp="mean", stats_data=d, **kw)
    sd.ablation_curves(model, d, layers, repeats=1, levels=[0, 4], basis="random", clamp="mean", **kw)
    sd.noise_curves(model, d, layers, scales=[1.0], repeats=1, stats_data=d, **kw)
    sd.unit_importance(model, d, layers, clamp="mean", **kw)
    sd.class_selectivity(model, d, layers)
    sd.selectivity_vs_importance(model, d, layers, n_boot=20)
    units.unit_stats(model, d, layers)
    units.layer_units(model, d, layers)


# --------------------------------------------------------------------------------------------------
# compare_curves: what equality of the paths means
# --------------------------------------------------------------------------------------------------
def test_compare_curves_accepts_equal_and_rejects_unexplained_differences(data):
    model, layers = make("mlp")
    kw = dict(repeats=1, levels=[0, 5, 20, 48], progress=False)
    fast = sd.ablation_curves(model, data, layers, **kw)
    ref = sd.ablation_curves(model, data, layers, method="reference", **kw)
    same = compare_curves(model, data, fast, ref)
    assert same.ok and same.levels == 4 and same.levels_differing == 0 and same.examples_differing == 0
    tampered = copy.deepcopy(ref)
    tampered.curves.loc[2, "accuracy"] += 1 / N  # one more "correct" example the reference never predicted
    bad = compare_curves(model, data, fast, tampered)
    assert bad.levels_differing == 1 and bad.inconsistent == 1 and not bad.ok
    lossy = copy.deepcopy(ref)
    lossy.curves.loc[1, "loss"] += 1e-3
    assert not compare_curves(model, data, fast, lossy).ok
    nkw = dict(scales=[0.3, 3.0], repeats=2, progress=False)
    nfast = sd.noise_curves(model, data, layers, **nkw)
    nref = sd.noise_curves(model, data, layers, method="reference", **nkw)
    assert compare_noise(model, data, nfast, nref).ok
    ntampered = copy.deepcopy(nref)
    ntampered.curves.loc[3, "accuracy"] -= 1 / N
    nbad = compare_noise(model, data, nfast, ntampered)
    assert nbad.levels_differing == 1 and nbad.inconsistent == 1 and not nbad.ok
    ifast = sd.unit_importance(model, data, layers, progress=False)
    iref = sd.unit_importance(model, data, layers, progress=False, method="reference")
    assert compare_importance(model, data, ifast, iref).ok
    itampered = iref.copy()
    itampered.loc[5, "accuracy"] += 1 / N
    ibad = compare_importance(model, data, ifast, itampered)
    assert ibad.levels_differing == 1 and ibad.inconsistent == 1 and not ibad.ok


def test_near_tie_bound_scales_with_the_logits():
    logits = torch.tensor([[1.0, 1.0 + 1e-6, -3.0], [200.0, 199.99, 0.0], [0.1, 0.3, 0.2]])
    bound = near_tie_bound(logits)
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(bound, torch.tensor([64 * eps * 3.0, 64 * eps * 200.0, 64 * eps], dtype=torch.float64))
    margin = logits.double().topk(2, 1).values
    margin = margin[:, 0] - margin[:, 1]
    assert (margin <= bound).tolist() == [True, False, False]
