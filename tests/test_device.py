"""Device placement without a GPU: every path and measurement under :class:`DeviceCheck` (host tensors vs
device tensors played out on the CPU), the GPU code branches run on the CPU, host reads that do not grow
with the levels, and noise defined independently of the device.

The GPU path is tested only by these CPU-side checks where no GPU is at hand (``benchmarks/gpu_check.py``
runs the paths on a real one).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

import singledir as sd
from singledir.models import build_model
from singledir.reliance import edits
from singledir.reliance.devicecheck import DeviceCheck, DeviceMismatch
from singledir.reliance.edits import ClampSpec, example_noise
from singledir.reliance.hooks import ablate
from singledir.reliance.testing import compare_curves, digits
from singledir.reliance.units import unit_stats

MLP_LAYERS = ["hidden.0", "hidden.1"]


@pytest.fixture(scope="module")
def data():
    return digits(240)


@pytest.fixture(scope="module")
def models():
    mlp = build_model("mlp", (1, 8, 8), 10, width=16, seed=0).eval()
    conv = build_model("convnet", (1, 8, 8), 10, width_mult=0.0625, seed=0).eval()
    return mlp, conv


class Untraceable(nn.Module):
    """An MLP whose forward branches on a value: torch.fx cannot trace it (the hook path runs)."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(64, 16), nn.ReLU())
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        h = self.hidden(x.flatten(1))
        if h.shape[0] > 0 and bool(h.sum() > -1e9):  # data-dependent control flow
            h = h * 1.0
        return self.out(h)


def host_data(dc, data):
    x, y = data
    return dc.host(x.clone()), dc.host(y.clone())


def run_all(model, data, layers, method, budget=None):
    """Every measurement of the reliance engine once, with the data handed over on the host."""
    with DeviceCheck() as dc:
        d = host_data(dc, data)
        kw = dict(progress=False, method=method, memory_budget=budget)
        sd.ablation_curves(model, d, layers, repeats=1, levels=[0, 2, 5], **kw)
        sd.ablation_curves(model, d, layers, repeats=1, levels=[0, 2, 5], clamp="mean", **kw)
        sd.ablation_curves(model, d, layers[:1], repeats=1, levels=[0, 3], basis="random", **kw)
        sd.unit_importance(model, d, layers[:1], **kw)
        sd.noise_curves(model, d, layers, scales=[0.5, 2.0], repeats=1, **kw)
    return dc


def test_the_check_catches_a_host_tensor_meeting_a_device_tensor():
    lin = nn.Linear(4, 3)
    with DeviceCheck() as dc:
        mask = torch.zeros(3, dtype=torch.bool).to(lin.weight.device)  # sent to the device
        values = torch.full((3,), 2.0)  # made on the host
        with pytest.raises(DeviceMismatch, match="where"):
            torch.where(mask, values, torch.zeros(()))
        assert torch.where(mask, values.to(mask.device), 0.0).shape == (3,)  # sent first: fine
        torch.where(mask, lin.weight[:, 0], torch.zeros(()))  # a 0-dim host tensor is a scalar: fine
        x = dc.host(torch.ones(2, 4))
        with pytest.raises(DeviceMismatch):
            lin(x)  # data never sent to the model's device
        lin(x.to(lin.weight.device))
        float(lin.weight.sum())
        assert dc.syncs["__float__"] == 1


@pytest.mark.parametrize("method", ["fast", "hooks", "reference"])
def test_every_path_keeps_its_tensors_on_the_models_device(method, data, models):
    mlp, conv = models
    run_all(mlp, data, MLP_LAYERS, method)
    run_all(conv, data, [conv.unit_layers[-2], conv.unit_layers[-1]], method)


def test_fast_path_with_parallel_chunks_and_an_untraceable_model(data, models, monkeypatch):
    mlp, _conv = models
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_all(mlp, data, MLP_LAYERS, "fast", budget=60_000)  # several chunks, walked by two workers
    finally:
        torch.set_num_threads(before)
    run_all(Untraceable().eval(), data, ["hidden.1"], "auto")  # "auto" falls back to the batched hooks


def test_measurements_besides_ablation(data, models):
    _mlp, conv = models
    layers = [conv.unit_layers[-1]]
    with DeviceCheck():
        d = (data[0].clone(), data[1].clone())
        sd.class_selectivity(conv, d, layers)
        unit_stats(conv, d, layers)


def test_a_users_clamp_spec_with_host_values(data, models):
    mlp, _conv = models
    with DeviceCheck() as dc:
        x = dc.host(data[0].clone()).to(next(mlp.parameters()).device)
        spec = ClampSpec.from_units([1, 3], 16, values=torch.full((16,), 0.5))  # mask and values on the host
        with torch.no_grad(), ablate(mlp, {"hidden.0": spec}):
            mlp(x)


def gpu_branches(monkeypatch):
    """Run the fast path's GPU branches on the CPU: no free host reads, one worker."""
    for mod in ("singledir.reliance.fast.evaluator", "singledir.reliance.fast.scoring", "singledir.reliance.fast.pool"):
        monkeypatch.setattr(importlib.import_module(mod), "host_reads_free", lambda device: False)
    monkeypatch.setattr(importlib.import_module("singledir.reliance.fast.evaluator"), "chunk_workers", lambda device: 1)


@pytest.mark.parametrize("case", ["mlp", "conv-last", "conv-middle"])
def test_gpu_branches_read_nothing_per_level_and_agree_with_the_reference(case, data, models, monkeypatch):
    mlp, conv = models
    model, layers = {"mlp": (mlp, MLP_LAYERS), "conv-last": (conv, [conv.unit_layers[-1]]),
                     "conv-middle": (conv, [conv.unit_layers[5]])}[case]
    gpu_branches(monkeypatch)
    syncs, results = {}, {}
    for levels in ([0, 1, 2, 3], list(range(16))):
        with DeviceCheck() as dc:
            d = host_data(dc, data)
            results[len(levels)] = sd.ablation_curves(model, d, layers, repeats=1, levels=levels, progress=False,
                                                      method="fast", memory_budget=150_000)
        syncs[len(levels)] = sum(dc.syncs.values())
    assert syncs[16] == syncs[4], (syncs, dc.sync_sites)  # host reads per chunk and call, none per level
    rnd = {}
    for levels in ([0, 1, 2, 3], list(range(12))):  # random directions: the basis is sent once, not per unit
        with DeviceCheck() as dc:
            sd.ablation_curves(model, host_data(dc, data), layers[:1], repeats=1, levels=levels, basis="random",
                               progress=False, method="fast")
        rnd[len(levels)] = sum(dc.syncs.values())
    assert rnd[12] == rnd[4], dc.sync_sites
    ref = sd.ablation_curves(model, data, layers, repeats=1, levels=list(range(16)), progress=False,
                             method="reference")
    assert compare_curves(model, data, results[16], ref).ok
    noise = {}
    for scales in ([1.0, 2.0], [0.5, 1.0, 2.0, 4.0, 8.0]):
        with DeviceCheck() as dc:
            d = host_data(dc, data)
            sd.noise_curves(model, d, layers, scales=scales, repeats=1, progress=False, method="fast")
        noise[len(scales)] = sum(dc.syncs.values())
    assert noise[5] == noise[2], dc.sync_sites
    with DeviceCheck() as dc:  # importance: one read per chunk, not per unit
        imp = sd.unit_importance(model, host_data(dc, data), layers[:1], progress=False, method="fast")
    assert sum(dc.syncs.values()) < 20, dc.sync_sites
    ref_imp = sd.unit_importance(model, data, layers[:1], progress=False, method="reference")
    np.testing.assert_allclose(imp.loss_increase, ref_imp.loss_increase, atol=1e-4)


def test_gpu_branches_still_report_non_finite_losses(data, models, monkeypatch):
    mlp, _conv = models
    gpu_branches(monkeypatch)
    x = data[0].clone()
    x[-1, 0, 0, 0] = float("nan")
    for run in (lambda: sd.ablation_curves(mlp, (x, data[1]), MLP_LAYERS, repeats=1, levels=[0, 4], progress=False),
                lambda: sd.noise_curves(mlp, (x, data[1]), MLP_LAYERS, scales=[1.0], repeats=1, progress=False),
                lambda: sd.unit_importance(mlp, (x, data[1]), ["hidden.0"], progress=False)):
        with pytest.raises(sd.SingledirError if hasattr(sd, "SingledirError") else Exception, match="NaN"):
            run()


def _noise_python(key, i, j, d):
    """Value j of example i of :func:`example_noise`, in plain Python floats (the definition)."""
    import math

    k0, k1, k2, k3 = edits.noise_keys(key)
    mix = edits._mix32_int
    pairs = (d + 1) // 2
    p = j if j < pairs else j - pairs
    x = mix(mix(mix(i ^ k0) ^ k1) ^ mix(p ^ k2))
    x2 = mix(x ^ k3)
    u, v = ((x >> 8) + 0.5) / 2**24, ((x2 >> 8) + 0.5) / 2**24
    r = math.sqrt(-2 * math.log(u))
    return r * math.cos(2 * math.pi * v) if j < pairs else r * math.sin(2 * math.pi * v)


def test_noise_is_defined_independently_of_device_and_batching():
    key = (3, 1, 0)
    z = example_noise((3, 5), 0, 40, key)
    want = torch.tensor([[_noise_python(key, i, j, 15) for j in range(15)] for i in range(40)])
    torch.testing.assert_close(z.reshape(40, 15), want, rtol=2e-6, atol=2e-6)  # float32 rounding only
    parts = torch.cat([example_noise((3, 5), a, b, key) for a, b in [(0, 1), (1, 33), (33, 40)]])
    assert torch.equal(z, parts)
    col = example_noise((15,), 0, 40, key, colmajor=True)
    assert col.stride() == (1, 40) and torch.equal(col, z.reshape(40, 15))
    assert example_noise((15,), 0, 40, key, dtype=torch.float64).dtype == torch.float64
    meta = example_noise((15,), 0, 40, key, device="meta")  # drawn where it is asked for
    assert meta.device.type == "meta" and meta.shape == (40, 15)
    big = example_noise((257,), 0, 2000, (0, 0, 0))
    assert abs(float(big.mean())) < 0.01 and abs(float(big.std()) - 1) < 0.01
    other = example_noise((257,), 0, 2000, (0, 1, 0))
    assert abs(float(torch.corrcoef(torch.stack([big.flatten(), other.flatten()]))[0, 1])) < 0.01


def test_flatness_measures_draw_their_noise_on_the_parameters_device(data, models):
    """PAC-Bayes sigma and sharpness perturb the weights with noise made where the weights are (on main it
    was drawn on the host and copied per Monte-Carlo sample); the same seed gives the same sigma."""
    from singledir.measures.library import pacbayes_sigma, sharpness_magnitude

    mlp, _conv = models
    x, y = data[0][:64], data[1][:64]
    kw = dict(search_depth=3, seed=1)
    with DeviceCheck() as dc:
        dev = next(mlp.parameters()).device
        xd, yd = dc.host(x.clone()).to(dev), dc.host(y.clone()).to(dev)
        created = []
        real = torch.randn

        def spy(*a, **k):
            created.append(k.get("device"))
            return real(*a, **k)

        torch.randn = spy
        try:
            s1 = pacbayes_sigma(mlp, xd, yd, mc_samples=2, magnitude_aware=True, **kw)
            sharpness_magnitude(mlp, xd, yd, ascent_steps=1, **kw)
        finally:
            torch.randn = real
    assert not created  # no host-side generator draws
    assert s1 == pacbayes_sigma(mlp, x, y, mc_samples=2, magnitude_aware=True, **kw)
