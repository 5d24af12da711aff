"""Generalization measures on models whose values are known in closed form or by a slow direct computation."""

from __future__ import annotations

import copy
import itertools
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import singledir as sd
from singledir.errors import SingledirError
from singledir.measures import (
    MEASURES,
    MeasureSettings,
    davies_bouldin_mixup,
    distance_from_init,
    fold_batchnorm,
    initial_model,
    jacobian_norm,
    log_prod_frobenius,
    log_prod_spectral,
    log_sum_frobenius,
    margin_percentile,
    measure_all,
    measure_run,
    output_margins,
    pacbayes_sigma,
    path_norm,
    reliance_ablation,
    sharpness_magnitude,
    weightwatcher_summary,
)
from singledir.models import build_model


def _mlp(width=4, depth=1, inp=3, classes=3, seed=0, batchnorm=False):
    return build_model("mlp", (1, 1, inp), classes, width=width, depth=depth, seed=seed, batchnorm=batchnorm).eval()


def _data(n=200, inp=3, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 1, inp, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def test_registry_has_at_least_12_documented_measures():
    assert len(MEASURES) >= 12
    for m in MEASURES.values():
        assert m.source and m.normalization


def test_fold_batchnorm_keeps_outputs_and_leaves_the_model_alone():
    m = _mlp(width=6, depth=2, batchnorm=True)
    with torch.no_grad():
        for bn in (mod for mod in m.modules() if isinstance(mod, nn.BatchNorm1d)):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    before = copy.deepcopy(m.state_dict())
    f = fold_batchnorm(m)
    x, _ = _data(50)
    torch.testing.assert_close(f(x), m(x), rtol=1e-5, atol=1e-5)
    assert not any(isinstance(mod, nn.BatchNorm1d) for mod in f.modules())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_fold_batchnorm_resnet_blocks():
    m = build_model("resnet", (3, 8, 8), 4, width_mult=0.125, seed=0).eval()
    with torch.no_grad():
        for bn in (mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)):
            bn.running_var.uniform_(0.5, 2)
            bn.running_mean.uniform_(-1, 1)
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(fold_batchnorm(m)(x), m(x), rtol=1e-4, atol=1e-4)


def test_unfoldable_batchnorm_is_an_error_naming_it():
    m = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2)).eval()
    with pytest.raises(SingledirError, match="cannot fold BatchNorm layer '0'"):
        fold_batchnorm(m)


def _set_constant(model, value):
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Linear):
                mod.weight.fill_(value)
                mod.bias.zero_()


def test_distance_and_frobenius_closed_form():
    m = _mlp(width=4, depth=1, inp=3, classes=2)  # weights (4, 3) and (2, 4)
    m0 = copy.deepcopy(m)
    with torch.no_grad():
        m.hidden[0][0].weight.add_(0.5)
    assert distance_from_init(m, m0) == pytest.approx(0.25 * 12)
    _set_constant(m, 2.0)
    fro = [4 * 12, 4 * 8]  # ||W||_F^2 = c^2 * entries
    assert log_prod_frobenius(m) == pytest.approx(sum(math.log(v) for v in fro))
    assert log_sum_frobenius(m) == pytest.approx(math.log(2) + sum(math.log(v) for v in fro) / 2)


def test_spectral_norm_against_a_diagonal_and_numpy_svd():
    m = _mlp(width=3, depth=1, inp=3, classes=3)
    with torch.no_grad():
        m.hidden[0][0].weight.copy_(torch.diag(torch.tensor([1.0, -5.0, 2.0])))
        m.out.weight.copy_(torch.randn(3, 3))
    s2 = np.linalg.svd(m.out.weight.detach().double().numpy(), compute_uv=False)[0]
    assert log_prod_spectral(m) == pytest.approx(2 * math.log(5.0) + 2 * math.log(s2))


def test_path_norm_matches_explicit_path_sum():
    m = _mlp(width=3, depth=1, inp=2, classes=2, seed=1)
    w1, b1 = m.hidden[0][0].weight.detach().double(), m.hidden[0][0].bias.detach().double()
    w2, b2 = m.out.weight.detach().double(), m.out.bias.detach().double()
    total = 0.0
    for k in range(2):  # output k: sum over paths input i -> hidden j -> k, plus bias paths
        total += b2[k] ** 2
        for j in range(3):
            total += w2[k, j] ** 2 * b1[j] ** 2
            for i in range(2):
                total += w2[k, j] ** 2 * w1[j, i] ** 2
    assert path_norm(m) == pytest.approx(float(total))


class _Identity3(nn.Module):
    """Logits = the input (3 classes), with one ReLU unit layer."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(3))
            self.lin.bias.zero_()
        self.act = nn.Identity()
        self.config = {"input_shape": [3]}

    def forward(self, x):
        return self.act(self.lin(x))


def test_margin_percentile_by_hand():
    x = torch.tensor([[3.0, 1.0, 0.0]] * 18 + [[0.0, 0.5, 0.2], [1.0, 0.9, 0.0]])
    y = torch.zeros(20, dtype=torch.long)
    mg = output_margins(_Identity3(), x, y)
    assert mg[-2].item() == pytest.approx(-0.5) and mg[-1].item() == pytest.approx(0.1)
    # m // 10 = 2: the 2nd smallest margin
    assert margin_percentile(_Identity3(), x, y) == pytest.approx(0.1)


def test_jacobian_norm_of_a_linear_map_is_its_frobenius_norm():
    lin = nn.Linear(5, 3)
    x = torch.randn(7, 5)
    assert jacobian_norm(lin, x) == pytest.approx(float((lin.weight.detach().double() ** 2).sum()), rel=1e-5)


def _slow_davies_bouldin(f, labels):
    cls = sorted(set(labels.tolist()))
    cents = {c: f[labels == c].mean(0) for c in cls}
    s = {c: np.linalg.norm(f[labels == c] - cents[c], axis=1).mean() for c in cls}
    return np.mean([max((s[a] + s[b]) / np.linalg.norm(cents[a] - cents[b]) for b in cls if b != a) for a in cls])


def test_davies_bouldin_mixup_against_direct_formula():
    model = _Identity3()
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(20)
    x = torch.nn.functional.one_hot(y, 3).float() * 2 + 0.8 * torch.randn(60, 3, generator=g)
    out = davies_bouldin_mixup(model, x, y, "act", seed=0)
    assert out["db"] == pytest.approx(_slow_davies_bouldin(x.double().numpy(), y.numpy()), rel=1e-9)
    assert 0 <= out["mixup_acc"] <= 1
    assert out["value"] == pytest.approx(out["db"] * (1 - out["mixup_acc"]))


def test_pacbayes_sigma_hits_the_target_drop_and_is_seeded():
    torch.manual_seed(0)
    x, _ = _data(400, inp=3)
    teacher = _mlp(width=8, inp=3, seed=5)
    with torch.no_grad():
        y = teacher(x).argmax(1)
    sigma = pacbayes_sigma(teacher, x, y, mc_samples=10, search_depth=15, seed=1)
    assert sigma == pacbayes_sigma(teacher, x, y, mc_samples=10, search_depth=15, seed=1)
    assert 0 < sigma < 2
    # an independent check with many fresh draws: the accuracy drop at sigma is about 0.1
    gen = torch.Generator().manual_seed(99)
    accs = []
    for _ in range(60):
        m = copy.deepcopy(teacher)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(sigma * torch.randn(p.shape, generator=gen))
            accs.append(float((m(x).argmax(1) == y).double().mean()))
    assert abs((1.0 - np.mean(accs)) - 0.1) < 0.04
    mag = pacbayes_sigma(teacher, x, y, magnitude_aware=True, seed=1)
    assert 0 < mag < 2


def test_sharpness_is_seeded_bounded_and_leaves_the_model_alone():
    x, _ = _data(300)
    m = _mlp(width=8, seed=2)
    with torch.no_grad():
        y = m(x).argmax(1)
    before = copy.deepcopy(m.state_dict())
    a = sharpness_magnitude(m, x, y, seed=0)
    assert a == sharpness_magnitude(m, x, y, seed=0)
    assert 0 < a < 2
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not any(p.grad is not None for p in m.parameters())


def test_weightwatcher_alpha_and_too_small_model():
    m = build_model("mlp", (1, 1, 100), 10, width=80, depth=2, seed=0).eval()
    s = weightwatcher_summary(m)
    assert np.isfinite(s["alpha"]) and np.isfinite(s["alpha_weighted"])
    with pytest.raises(SingledirError, match="WeightWatcher found no layer"):
        weightwatcher_summary(_mlp(width=4))


def test_reliance_measure_equals_the_public_api():
    m = _mlp(width=6, depth=2, seed=3)
    x, y = _data(120)
    got = reliance_ablation(m, x, y, m.unit_layers, repeats=2, seed=4)
    row = sd.ablation_curves(m, (x, y), m.unit_layers, repeats=2, seed=4, progress=False).auc().iloc[0]
    assert got == {"auc": pytest.approx(row["auc_mean"]), "nauc": pytest.approx(row["normalized_auc_mean"])}


SMALL = MeasureSettings(n_reliance=60, reliance_repeats=1, n_flatness=60, mc_samples=2, search_depth=4,
                        sharpness_depth=3, sharpness_steps=1, n_jacobian=16, n_db=60)


def test_measure_all_records_failures_with_reasons():
    m = _mlp(width=6, depth=2, seed=3)
    x, y = _data(120)
    df = measure_all(m, (x, y), settings=SMALL).set_index("name")
    assert list(df.index) == list(MEASURES)
    assert "initial weights" in df.loc["distance_from_init", "error"]
    assert "WeightWatcher" in df.loc["ww_alpha", "error"]  # width 6 is below its minimum size
    assert pd.isna(df.loc["log_prod_frobenius", "error"])
    ok = df[df.error.isna()]
    assert np.isfinite(ok.complexity).all() and len(ok) >= 12
    # orientation: reliance enters as 1 - nAUC, the margin as minus the margin
    assert df.loc["reliance_ablation_nauc", "complexity"] == pytest.approx(1 - df.loc["reliance_ablation_nauc", "raw"])
    assert df.loc["margin_p10", "complexity"] == pytest.approx(-df.loc["margin_p10", "raw"])


def test_measure_all_on_a_diverged_model_is_not_fatal():
    m = _mlp(width=6, depth=2, seed=3)
    with torch.no_grad():
        m.out.weight.fill_(float("nan"))
    x, y = _data(80)
    df = measure_all(m, (x, y), init_model=_mlp(width=6, depth=2, seed=3), settings=SMALL,
                     names=["log_prod_frobenius", "distance_from_init", "margin_p10"])
    assert df.error.notna().all()
    assert df.error.str.contains("contain NaN or inf").all()


def test_measure_all_bad_input():
    m = _mlp()
    with pytest.raises(SingledirError, match="unknown measure 'nope'"):
        measure_all(m, _data(20), names=["nope"])
    with pytest.raises(SingledirError, match="pair"):
        measure_all(m, torch.zeros(3))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from singledir.training import train

    out = tmp_path_factory.mktemp("runs") / "run"
    train({"dataset": "digits", "width": 16, "depth": 1, "epochs": 2, "checkpoints": [1], "seed": 7,
           "train_subset": 300}, out, progress=False)
    return out


def test_initial_model_rebuilt_from_the_seed_equals_the_epoch0_checkpoint(tiny_run, tmp_path):
    from singledir.training import rundir as rd

    saved = initial_model(tiny_run)  # from checkpoints/epoch_0000.safetensors
    copy_dir = tmp_path / "run"
    shutil.copytree(tiny_run, copy_dir)
    rd.checkpoint_path(copy_dir, 0).unlink()
    rebuilt = initial_model(copy_dir)
    sa, sb = saved.state_dict(), rebuilt.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    final = sd.load_run(tiny_run).model
    assert not torch.equal(final.out.weight, rebuilt.out.weight)


def test_measure_run_on_a_run_directory(tiny_run):
    df = measure_run(tiny_run, settings=SMALL, names=["distance_from_init", "margin_p10", "reliance_noise_nauc"])
    assert df.error.isna().all(), df.error.tolist()
    assert (df.set_index("name").loc["distance_from_init", "raw"]) > 0


def test_measure_all_on_a_batchnorm_convnet():
    m = build_model("convnet", (1, 8, 8), 4, width_mult=0.125, seed=0).eval()
    m0 = build_model("convnet", (1, 8, 8), 4, width_mult=0.125, seed=1).eval()
    x, y = torch.randn(48, 1, 8, 8), torch.randint(0, 4, (48,))
    df = measure_all(m, (x, y), init_model=m0, settings=SMALL).set_index("name")
    margin = df.loc["margin_p10", "raw"]
    over = ["inverse_margin", "log_spectral_over_margin", "log_frobenius_over_margin", "path_norm_over_margin"]
    if margin <= 0:  # an untrained net: the margin-normalized measures are undefined, and say why
        assert df.loc[over, "error"].str.contains("margin").all()
    others = df.drop(index=over)
    assert others.error.isna().all(), others.error.dropna().to_dict()
    assert np.isfinite(others.complexity).all()


def test_measure_all_lets_a_bug_propagate_instead_of_a_missing_cell(monkeypatch):
    from singledir.measures import compute

    def typo(ctx):
        raise NameError("name 'fold_batchnrom' is not defined")

    monkeypatch.setitem(compute._GROUPS, "norms", typo)
    with pytest.raises(NameError, match="fold_batchnrom"):
        measure_all(_mlp(width=6), _data(40), settings=SMALL, names=["log_prod_frobenius"])


def test_measure_all_restores_every_submodule_training_flag():
    m = build_model("mlp", (1, 1, 3), 3, width=6, depth=2, dropout=0.5, seed=0)
    m.train()
    frozen = next(mod for mod in m.modules() if isinstance(mod, nn.Dropout))
    frozen.eval()  # mixed modes: the top module trains, one submodule does not
    before = [(name, mod.training) for name, mod in m.named_modules()]
    measure_all(m, _data(40), settings=SMALL, names=["margin_p10", "reliance_ablation_auc"])
    assert [(name, mod.training) for name, mod in m.named_modules()] == before


def test_measure_all_device_argument_keeps_the_model_where_it_is():
    m = _mlp(width=6)
    x, y = _data(60)
    on_cpu = measure_all(m, (x, y), settings=SMALL, names=["margin_p10", "log_prod_frobenius"], device="cpu")
    default = measure_all(m, (x, y), settings=SMALL, names=["margin_p10", "log_prod_frobenius"])
    pd.testing.assert_frame_equal(on_cpu.drop(columns="seconds"), default.drop(columns="seconds"))
    assert next(m.parameters()).device.type == "cpu"
    with pytest.raises(SingledirError):
        measure_all(m, (x, y), settings=SMALL, names=["margin_p10"], device="no-such-device")
