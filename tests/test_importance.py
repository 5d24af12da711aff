"""Single-unit importance: table contents, agreement with hand ablation, clamps, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import singledir as sd
from singledir.errors import SingledirError
from singledir.models import build_model
from singledir.reliance.edits import ClampSpec
from singledir.reliance.hooks import ablate, model_guard
from singledir.reliance.units import unit_stats
from singledir.reliance.testing import assert_unchanged, digits, snapshot, train_quick

LAYERS = ["hidden.0", "hidden.1"]


@pytest.fixture(scope="module")
def trained():
    x, y = digits()
    model = build_model("mlp", (1, 8, 8), 10, width=16, seed=2)
    torch.manual_seed(2)
    train_quick(model, x[:1200], y[:1200], epochs=15)
    return model, (x[1200:1500], y[1200:1500])


def _manual(model, x, y, layer, spec):
    with model_guard(model), torch.no_grad(), ablate(model, {layer: spec}):
        logits = model(x)
    acc = int((logits.argmax(1) == y).sum()) / len(y)
    return acc, float(torch.nn.functional.cross_entropy(logits.double(), y))


def _by_weights(model, x, y, layer, unit):
    """Ablate a unit without the package: zero the weights that read it (its column in the next Linear).

    For a post-ReLU unit of an MLP without batch norm this is the same network as clamping it to 0; the
    accuracy and loss are computed here with plain torch, so the test does not reuse the code's formula."""
    import copy

    m = copy.deepcopy(model).eval()
    nxt = m.hidden[1][0] if layer == "hidden.0" else m.out
    with torch.no_grad():
        nxt.weight[:, unit] = 0.0
        logits = m(x)
    return (logits.argmax(1) == y).double().mean().item(), torch.nn.functional.cross_entropy(logits.double(), y).item()


def test_accuracy_drop_matches_an_independent_weight_edit(trained):
    model, (x, y) = trained
    imp = sd.unit_importance(model, (x, y), LAYERS, progress=False)
    with torch.no_grad():
        logits = model.eval()(x)
    base_acc = (logits.argmax(1) == y).double().mean().item()
    base_loss = torch.nn.functional.cross_entropy(logits.double(), y).item()
    for layer, unit in [("hidden.0", 3), ("hidden.0", 11), ("hidden.1", 7), ("hidden.1", 15)]:
        row = imp[(imp.layer == layer) & (imp.unit == unit)].iloc[0]
        acc, loss = _by_weights(model, x, y, layer, unit)
        assert row.accuracy_drop == pytest.approx(base_acc - acc, abs=1e-12)
        assert row.loss_increase == pytest.approx(loss - base_loss, abs=1e-5)


def test_table_matches_hand_ablation(trained):
    model, (x, y) = trained
    snap = snapshot(model)
    imp = sd.unit_importance(model, (x, y), LAYERS, progress=False)
    assert_unchanged(model, snap)
    assert list(imp.columns) == [
        "layer", "unit", "accuracy_drop", "loss_increase", "accuracy", "loss", "base_accuracy", "base_loss"
    ]
    assert len(imp) == 32 and list(imp.layer[:16]) == ["hidden.0"] * 16 and list(imp.unit[:16]) == list(range(16))
    with model_guard(model), torch.no_grad():
        base = int((model(x).argmax(1) == y).sum()) / len(y)
    assert (imp.base_accuracy == base).all()
    np.testing.assert_allclose(imp.accuracy_drop, imp.base_accuracy - imp.accuracy)
    np.testing.assert_allclose(imp.loss_increase, imp.loss - imp.base_loss)
    for layer, unit in [("hidden.0", 3), ("hidden.1", 7), ("hidden.1", 15)]:
        row = imp[(imp.layer == layer) & (imp.unit == unit)].iloc[0]
        acc, loss = _manual(model, x, y, layer, [unit])
        assert row.accuracy == acc
        assert abs(row.loss - loss) < 1e-5
    assert imp.accuracy_drop.max() > 0  # some unit matters on a trained net


def test_mean_clamp(trained):
    model, (x, y) = trained
    imp = sd.unit_importance(model, (x, y), ["hidden.1"], clamp="mean", progress=False)
    zero = sd.unit_importance(model, (x, y), ["hidden.1"], progress=False)
    assert not np.array_equal(imp.loss, zero.loss)
    means = unit_stats(model, (x, y), ["hidden.1"])["hidden.1"].mean.float()
    mask = torch.zeros(16, dtype=torch.bool)
    mask[4] = True
    acc, loss = _manual(model, x, y, "hidden.1", ClampSpec(mask, means))
    row = imp[imp.unit == 4].iloc[0]
    assert row.accuracy == acc and abs(row.loss - loss) < 1e-5


def test_stats_data_for_mean_clamp(trained):
    model, (x, y) = trained
    a = sd.unit_importance(model, (x, y), ["hidden.0"], clamp="mean", stats_data=(x[:50], y[:50]), progress=False)
    b = sd.unit_importance(model, (x, y), ["hidden.0"], clamp="mean", progress=False)
    assert not np.array_equal(a.loss, b.loss)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(clamp="max"), "unknown clamp"),
        (dict(layers=["nope"]), "unknown layer"),
        (dict(method="slow"), "unknown method"),
    ],
)
def test_bad_arguments(kwargs, msg, trained):
    model, data = trained
    snap = snapshot(model)
    kw = dict(layers=LAYERS, progress=False)
    kw.update(kwargs)
    with pytest.raises(SingledirError, match=msg):
        sd.unit_importance(model, data, **kw)
    assert_unchanged(model, snap)


def test_labels_out_of_range(trained):
    model, (x, y) = trained
    with pytest.raises(SingledirError, match="outside the model's 10 classes"):
        sd.unit_importance(model, (x, y * 2), LAYERS, progress=False)
