"""Tests for singledir.models: shapes, unit layers, seeding, config round-trip, input validation."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from singledir.errors import SingledirError
from singledir.models import MODELS, build_model, count_parameters, unit_counts, unit_layers

IMAGE_SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]
WM = 0.125  # keep conv models tiny so the file stays fast


def _build(name, shape, **kw):
    if name != "mlp":
        kw.setdefault("width_mult", WM)
    else:
        kw.setdefault("width", 16)
    return build_model(name, shape, 10, **kw)


def _capture(model, x):
    """Run ``x`` through ``model`` (eval mode) and return {unit layer: output} via forward hooks."""
    acts = {}
    handles = [
        model.get_submodule(n).register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out))
        for n in model.unit_layers
    ]
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return logits, acts


CASES = [(name, shape) for name in MODELS for shape in IMAGE_SHAPES] + [("mlp", (1, 40))]


@pytest.mark.parametrize("name,shape", CASES)
def test_output_shape_and_unit_layers(name, shape):
    torch.manual_seed(0)
    model = _build(name, shape, seed=0)
    x = torch.randn(2, *shape)
    logits, acts = _capture(model, x)
    assert logits.shape == (2, 10)
    assert list(acts) == model.unit_layers == unit_layers(model)
    counts = unit_counts(model)
    assert list(counts) == model.unit_layers
    for n, a in acts.items():
        assert a.shape[0] == 2 and a.shape[1] == counts[n]
        assert (a >= 0).all(), f"{n} output is not post-ReLU"


def test_unit_layer_names():
    mlp = build_model("mlp", (1, 28, 28), 10)
    assert mlp.unit_layers == ["hidden.0", "hidden.1"]
    assert [m.out_features for m in mlp.hidden.modules() if isinstance(m, nn.Linear)] == [128, 128]
    assert isinstance(mlp.out, nn.Linear) and mlp.out.out_features == 10
    assert build_model("mlp", (1, 40), 10, depth=3).unit_layers == ["hidden.0", "hidden.1", "hidden.2"]

    conv = build_model("convnet", (3, 32, 32), 10, width_mult=WM)
    assert conv.unit_layers == [f"features.{3 * i + 2}" for i in range(11)]
    conv_nobn = build_model("convnet", (3, 32, 32), 10, width_mult=WM, batchnorm=False)
    assert conv_nobn.unit_layers == [f"features.{2 * i + 1}" for i in range(11)]
    for m in (conv, conv_nobn):
        assert all(isinstance(m.get_submodule(n), nn.ReLU) for n in m.unit_layers)
        assert isinstance(m.head[0], nn.AdaptiveAvgPool2d) and isinstance(m.head[-1], nn.Linear)

    res = build_model("resnet", (3, 32, 32), 10, width_mult=WM)
    assert res.unit_layers == ["stem"] + [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    assert isinstance(res.stem[-1], nn.ReLU)
    assert isinstance(res.layer1[0].relu, nn.ReLU)


def test_convnet_width_mult_and_strides():
    m = build_model("convnet", (3, 32, 32), 10, width_mult=0.125)
    convs = [c for c in m.features if isinstance(c, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64]
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 1, 2, 1, 1, 2, 1, 1]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)
    big = build_model("convnet", (3, 32, 32), 10)
    full = [c.out_channels for c in big.features if isinstance(c, nn.Conv2d)]
    assert full == [64, 64, 128, 128, 128, 256, 256, 256, 512, 512, 512]
    tiny = build_model("convnet", (1, 8, 8), 10, width_mult=0.001)  # rounds to 0 -> at least 1 channel
    assert all(c.out_channels >= 1 for c in tiny.features if isinstance(c, nn.Conv2d))
    res = build_model("resnet", (3, 32, 32), 10, width_mult=0.25)
    assert list(unit_counts(res).values()) == [16, 16, 16, 32, 32, 64, 64, 128, 128]
    assert count_parameters(build_model("convnet", (3, 32, 32), 10, width_mult=0.25)) < count_parameters(
        build_model("convnet", (3, 32, 32), 10, width_mult=0.5)
    )


@pytest.mark.parametrize("name", MODELS)
def test_no_batchnorm_variant(name):
    m = _build(name, (3, 32, 32), batchnorm=False)
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())
    assert m.config["batchnorm"] is False
    convs = [x for x in m.modules() if isinstance(x, (nn.Conv2d, nn.Linear))]
    assert all(x.bias is not None for x in convs)
    with_bn = _build(name, (3, 32, 32), batchnorm=True)
    assert any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in with_bn.modules())
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_batchnorm_defaults():
    assert build_model("mlp", (1, 40), 10).config["batchnorm"] is False
    assert build_model("convnet", (1, 8, 8), 10, width_mult=WM).config["batchnorm"] is True
    assert build_model("resnet", (1, 8, 8), 10, width_mult=WM).config["batchnorm"] is True
    mlp_bn = build_model("mlp", (1, 40), 10, batchnorm=True, dropout=0.2)
    assert [type(x) for x in mlp_bn.hidden[0]] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
    assert mlp_bn.hidden[0][-1].p == 0.2


@pytest.mark.parametrize("name", MODELS)
def test_seed_reproducible_and_global_rng_untouched(name):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = _build(name, (1, 8, 8), seed=7)
    b = _build(name, (1, 8, 8), seed=7)
    c = _build(name, (1, 8, 8), seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    # seed=None draws from the global RNG, like any nn.Module
    _build(name, (1, 8, 8))
    assert not torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", MODELS)
def test_config_round_trip(name):
    kw = {"width": 24, "depth": 3, "dropout": 0.1} if name == "mlp" else {"width_mult": 0.25}
    m = build_model(name, (1, 28, 28), 7, batchnorm=False, **kw)
    cfg = json.loads(json.dumps(m.config))  # survives config.json
    assert cfg == m.config and cfg["name"] == name and cfg["input_shape"] == [1, 28, 28]
    m2 = build_model(**cfg)
    assert m2.config == m.config
    s1, s2 = m.state_dict(), m2.state_dict()
    assert list(s1) == list(s2)
    assert all(s1[k].shape == s2[k].shape for k in s1)
    m2.load_state_dict(s1)
    assert m2.unit_layers == m.unit_layers


def test_relus_not_inplace_and_not_shared():
    for name in MODELS:
        m = _build(name, (3, 32, 32))
        relus = [x for x in m.modules() if isinstance(x, nn.ReLU)]
        assert relus and not any(r.inplace for r in relus)
        # named_modules() dedups shared modules; remove_duplicate=False shows every position
        all_positions = [x for _, x in m.named_modules(remove_duplicate=False) if isinstance(x, nn.ReLU)]
        assert len(all_positions) == len(relus) == len({id(r) for r in relus})


def test_mlp_paper_shape_and_parameters():
    m = build_model("mlp", (1, 28, 28), 10, width=512)
    assert count_parameters(m) == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    for p in m.out.parameters():
        p.requires_grad_(False)
    assert count_parameters(m, trainable_only=True) == count_parameters(m) - 512 * 10 - 10


def test_unit_layers_fallback_for_plain_modules():
    seq = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    assert unit_layers(seq) == ["1", "3"]
    assert unit_counts(seq, input_shape=(4,)) == {"1": 5, "3": 3}
    with pytest.raises(SingledirError, match="unit_layers"):
        unit_layers(nn.Linear(3, 2))


def test_model_name_case_insensitive():
    assert build_model("MLP", (1, 40), 10).config["name"] == "mlp"


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (("vgg", (1, 28, 28), 10), {}, r"unknown model 'vgg'; choose one of: mlp, convnet, resnet"),
        (("convnet", (1, 40), 10), {}, r"image input \(C, H, W\).*--model mlp"),
        (("resnet", (40,), 10), {}, r"image input \(C, H, W\).*--model mlp"),
        (("mlp", (1, 28, 28), 1), {}, r"num_classes must be an int >= 2"),
        (("mlp", (1, 28, 28), 10.0), {}, r"num_classes"),
        (("mlp", (1, 28, 28), 10), {"width": 0}, r"width .* >= 1"),
        (("mlp", (1, 28, 28), 10), {"depth": 0}, r"depth .* >= 1"),
        (("mlp", (1, 28, 28), 10), {"dropout": 1.0}, r"dropout must be a probability in \[0, 1\)"),
        (("mlp", (1, 28, 28), 10), {"dropout": -0.1}, r"dropout"),
        (("convnet", (1, 28, 28), 10), {"width_mult": 0}, r"width_mult must be a number > 0"),
        (("convnet", (1, 28, 28), 10), {"width_mult": float("nan")}, r"width_mult"),
        (("convnet", (1, 28, 28), 10), {"dropout": 0.2}, r"does not support dropout.*only --model mlp"),
        (("resnet", (1, 28, 28), 10), {"dropout": 0.2}, r"does not support dropout.*only --model mlp"),
        (("convnet", (1, 28, 28), 10), {"depth": 3}, r"depth applies only to --model mlp"),
        (("mlp", (1, 0, 28), 10), {}, r"input_shape must be"),
        (("mlp", "1x28x28", 10), {}, r"input_shape must be"),
        (("mlp", (1, 28, 28), 10), {"batchnorm": "yes"}, r"batchnorm must be"),
        (("mlp", (1, 28, 28), 10), {"seed": -1}, r"seed must be a non-negative int or None, got -1"),
    ],
)
def test_bad_inputs_raise_one_line_errors(args, kwargs, match):
    with pytest.raises(SingledirError, match=match) as info:
        build_model(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_module_docstrings():
    import singledir.models as pkg
    from singledir.models import _common, convnet, mlp, resnet

    for mod in (pkg, _common, mlp, convnet, resnet):
        assert mod.__doc__ and mod.__doc__.strip().splitlines()[0].strip()


def test_unit_counts_restores_every_submodule_training_flag():
    from torch import nn as _nn

    from singledir.models import build_model, unit_counts

    m = build_model("mlp", (1, 1, 3), 3, width=6, depth=2, dropout=0.5, seed=0)
    m.train()
    next(mod for mod in m.modules() if isinstance(mod, _nn.Dropout)).eval()
    before = [(name, mod.training) for name, mod in m.named_modules()]
    counts = unit_counts(m)
    assert len(counts) == 2 and set(counts.values()) == {6}
    assert [(name, mod.training) for name, mod in m.named_modules()] == before
