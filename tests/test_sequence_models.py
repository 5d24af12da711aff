"""Sequence models without Hugging Face: the unit axis (``unit_dim``), token-id inputs, direction tensors,
``torch.nn.TransformerEncoder`` and the project's own :class:`SeqTransformer`, against plain hook loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import singledir as sd
from singledir.errors import SingledirError
from singledir.models.transformer import SeqTransformer
from singledir.reliance.fast.layout import nbytes
from singledir.reliance.selectivity import selectivity_from_activations
from singledir.reliance.testing import (
    assert_matches_plain,
    assert_unchanged,
    plain_hook_curve,
    snapshot,
    zero_last_axis,
)


class TokenMLP(nn.Module):
    """Token ids -> embedding -> Linear(16, 128) -> GELU per token -> mean over tokens -> head."""

    def __init__(self, vocab=20, hidden=128, classes=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, 16)
        self.fc = nn.Linear(16, hidden)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, ids):
        return self.head(self.act(self.fc(self.emb(ids))).mean(1))


def _own(model, x, flip=4):
    with torch.no_grad():
        y = model(x).argmax(-1)
    y[::flip] = (y[::flip] + 1) % 4
    return y


@pytest.fixture(scope="module")
def token_mlp():
    torch.manual_seed(0)
    model = TokenMLP().eval()
    ids = torch.randint(0, 20, (60, 40))  # 40 positions, 128 neurons: the silent-mistake shape
    return model, ids, _own(model, ids)


def test_linear_on_3d_measures_neurons_not_positions(token_mlp):
    model, ids, y = token_mlp
    snap = snapshot(model)
    res = sd.ablation_curves(model, (ids, y), ["act"], repeats=1, levels=[0, 16, 64, 128])
    assert res.meta["units"] == {"act": 128} and res.meta["unit_dims"] == {"act": 2}
    sel = sd.class_selectivity(model, (ids, y), ["act"])
    assert len(sel) == 128
    seq = [u for _, u in res.sequences[("random", 0)]]
    plain = plain_hook_curve(model, lambda m: m(ids), y, "act", [0, 16, 64, 128], zero_last_axis(seq))
    assert_matches_plain(res.curves.accuracy.to_numpy(), res.curves.loss.to_numpy(), plain)
    assert_unchanged(model, snap)
    assert ids.dtype == torch.int64  # token ids were fed as they are


@pytest.mark.parametrize("bad", [5, 0, {"nope": -1}])
def test_unit_dim_errors_are_one_line(token_mlp, bad):
    model, ids, y = token_mlp
    with pytest.raises(SingledirError) as err:
        sd.unit_importance(model, (ids, y), ["act"], unit_dim=bad)
    assert "\n" not in str(err.value)


class Ambiguous(nn.Module):
    """A (N, S, H) activation produced by a custom op: no module tells where the units are."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.mix = nn.Identity()
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.mix(torch.tanh(self.emb(ids))).mean(1))


def test_ambiguous_layout_refused_by_every_measurement():
    model = Ambiguous().eval()
    ids = torch.randint(0, 20, (12, 5))
    y = torch.arange(12) % 3
    calls = [
        lambda **k: sd.ablation_curves(model, (ids, y), ["mix"], repeats=1, levels=[0, 1], **k),
        lambda **k: sd.noise_curves(model, (ids, y), ["mix"], scales=[1.0], repeats=1, **k),
        lambda **k: sd.unit_importance(model, (ids, y), ["mix"], **k),
        lambda **k: sd.class_selectivity(model, (ids, y), ["mix"], **k),
    ]
    for call in calls:
        with pytest.raises(SingledirError, match="unit_dim"):
            call()
        call(unit_dim=-1)  # measured once the axis is named


def test_importance_and_noise_on_token_mlp_equal_plain(token_mlp):
    model, ids, y = token_mlp
    imp = sd.unit_importance(model, (ids, y), ["act"], method="hooks")
    for u in (3, 77):
        plain = plain_hook_curve(model, lambda m: m(ids), y, "act", [1], zero_last_axis([u]))
        row = imp[imp.unit == u].iloc[0]
        assert_matches_plain([row.accuracy], [row.loss], plain)
    a = sd.noise_curves(model, (ids, y), ["act"], scales=[0.5, 4.0], repeats=2, method="hooks", batch_size=7)
    b = sd.noise_curves(model, (ids, y), ["act"], scales=[0.5, 4.0], repeats=2, method="reference")
    assert np.allclose(a.curves.loss, b.curves.loss, atol=1e-5)
    assert np.abs(a.curves.accuracy.to_numpy() - b.curves.accuracy.to_numpy()).max() <= 1 / 60 + 1e-12
    with torch.no_grad():
        h = model.act(model.fc(model.emb(ids)))
    assert torch.allclose(a.meta["sigma"]["act"], h.reshape(-1, 128).double().std(0, unbiased=False), rtol=1e-5)


# ---------------------------------------------------------------------------------------------- directions
@pytest.fixture(scope="module")
def seq_transformer():
    torch.manual_seed(3)
    model = SeqTransformer(seq_len=40, num_classes=4, width=16, depth=2, heads=2).eval()
    x = torch.randn(50, 1, 40)
    return model, x, _own(model, x, flip=5)


@pytest.mark.parametrize("clamp", ["zero", "mean"])
def test_identity_rows_equal_unit_ablation_in_their_order(seq_transformer, clamp):
    model, x, y = seq_transformer
    layer = "blocks.1.mlp.act"
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))[:20]
    d = sd.ablation_curves(model, (x, y), [layer], basis=torch.eye(64)[perm], clamp=clamp, method="hooks")
    u = sd.ablation_curves(model, (x, y), [layer], order=[(layer, int(i)) for i in perm], clamp=clamp,
                           method="hooks")
    assert d.meta["orthonormal"] and d.meta["rank"] == {layer: 20}
    assert list(d.curves.k) == list(u.curves.k) == list(range(21))
    assert np.allclose(d.curves.loss, u.curves.loss, atol=1e-5)
    assert np.abs(d.curves.accuracy.to_numpy() - u.curves.accuracy.to_numpy()).max() <= 1 / 50 + 1e-12
    assert d.curves.loss.iloc[-1] != pytest.approx(d.curves.loss.iloc[0], abs=1e-3)  # the ablation matters


def test_dependent_directions_remove_their_span_only(seq_transformer):
    model, x, y = seq_transformer
    layer = "blocks.0.mlp.act"
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    res = sd.ablation_curves(model, (x, y), [layer], basis=torch.stack([a, b, 2 * a - b, a]), method="hooks")
    assert res.meta["rank"] == {layer: 2} and not res.meta["orthonormal"]
    loss = res.curves.loss.to_numpy()
    assert loss[2] == pytest.approx(loss[3], abs=1e-6) and loss[3] == pytest.approx(loss[4], abs=1e-6)
    assert "not orthonormal" in res.meta["removed"]


def test_direction_dict_random_order_and_errors(seq_transformer):
    model, x, y = seq_transformer
    layers = ["blocks.0.mlp.act", "blocks.1.mlp.act"]
    g = torch.Generator().manual_seed(4)
    basis = {layers[0]: torch.randn(3, 64, generator=g), layers[1]: torch.randn(5, 64, generator=g)}
    res = sd.ablation_curves(model, (x, y), layers, basis=basis, order="random", repeats=3, seed=1)
    assert sorted(res.curves.repeat.unique()) == [0, 1, 2] and res.meta["total_units"] == 8
    seqs = [tuple(res.sequences[("random", r)]) for r in range(3)]
    assert len(set(seqs)) == 3 and all(sorted(s) == sorted(seqs[0]) for s in seqs)
    with pytest.raises(SingledirError, match="dict"):
        sd.ablation_curves(model, (x, y), layers, basis=torch.randn(2, 64))
    with pytest.raises(SingledirError, match=r"\(k, 64\)"):
        sd.ablation_curves(model, (x, y), layers[:1], basis=torch.randn(2, 63))


def test_seq_transformer_curves_equal_plain_and_all_units_on_last_axis(seq_transformer):
    model, x, y = seq_transformer
    res = sd.ablation_curves(model, (x, y), model.unit_layers, repeats=1, levels=[0, 32, 96, 128])
    assert res.meta["units"] == {"blocks.0.mlp.act": 64, "blocks.1.mlp.act": 64}
    # pooled sequence over two layers: a plain loop with two hooks
    seq = res.sequences[("random", 0)]
    mods = [model.get_submodule(n) for n in model.unit_layers]
    for i, k in enumerate([0, 32, 96, 128]):
        hooks = []
        for name, mod in zip(model.unit_layers, mods):
            units = [u for (n, u) in seq[:k] if n == name]
            hooks.append(mod.register_forward_hook(lambda _m, _i, o, u=units: zero_last_axis(u)(o, len(u))))
        with torch.no_grad():
            logits = model(x)
        for h in hooks:
            h.remove()
        loss = float(torch.nn.functional.cross_entropy(logits.double(), y))
        assert res.curves.loss.iloc[i] == pytest.approx(loss, abs=1e-5)


# ---------------------------------------------------------------------------------------------- TransformerEncoder
class Encoder(nn.Module):
    """Token ids -> embedding -> nn.TransformerEncoder (batch_first, SiLU module) -> mean -> head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=48, dropout=0.0, activation=nn.SiLU(),
                                           batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask):
        h = self.enc(self.emb(input_ids), src_key_padding_mask=attention_mask == 0)
        m = attention_mask[..., None].float()
        return self.head((h * m).sum(1) / m.sum(1))


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(5)
    model = Encoder().eval()
    ids = torch.randint(1, 20, (36, 7))
    mask = torch.ones_like(ids)
    mask[::2, 5:] = 0
    with torch.no_grad():
        y = model(ids, mask).argmax(-1)
    y[::4] = (y[::4] + 1) % 3
    return model, {"input_ids": ids, "attention_mask": mask}, y


ENC_ACT = "enc.layers.1.activation"


def test_transformer_encoder_every_measurement(encoder):
    model, inputs, y = encoder
    snap = snapshot(model)
    data = {**inputs, "labels": y}
    res = sd.ablation_curves(model, data, [ENC_ACT], repeats=1, levels=[0, 12, 30, 48], batch_size=10)
    assert res.meta["units"] == {ENC_ACT: 48}
    seq = [u for _, u in res.sequences[("random", 0)]]
    plain = plain_hook_curve(model, lambda m: m(**inputs), y, ENC_ACT, [0, 12, 30, 48], zero_last_axis(seq))
    assert_matches_plain(res.curves.accuracy.to_numpy(), res.curves.loss.to_numpy(), plain)
    assert plain[-1].loss != pytest.approx(plain[0].loss, abs=1e-3)  # the neurons matter

    imp = sd.unit_importance(model, data, [ENC_ACT])
    row = imp[imp.unit == 7].iloc[0]
    assert_matches_plain([row.accuracy], [row.loss],
                         plain_hook_curve(model, lambda m: m(**inputs), y, ENC_ACT, [1], zero_last_axis([7])))

    rec = {}
    h = model.get_submodule(ENC_ACT).register_forward_hook(lambda _m, _i, o: rec.setdefault("h", o))
    with torch.no_grad():
        model(**inputs)
    h.remove()
    m = inputs["attention_mask"].float()[:, :, None]
    sel = sd.class_selectivity(model, data, [ENC_ACT])
    ref = selectivity_from_activations((rec["h"] * m).sum(1) / m.sum(1), y)
    assert np.allclose(sel.selectivity, ref.selectivity, atol=1e-5)

    nz = sd.noise_curves(model, data, [ENC_ACT], scales=[1.0], repeats=1)
    sigma = rec["h"][inputs["attention_mask"].bool()].double().std(0, unbiased=False)
    assert torch.allclose(nz.meta["sigma"][ENC_ACT], sigma, rtol=1e-5)
    assert_unchanged(model, snap)


def test_batch_not_first_is_refused():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.0, activation=nn.SiLU())

    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer
            self.head = nn.Linear(8, 2)

        def forward(self, x):  # x: (N, S, 8) -> (S, N, 8) for the seq-first layer
            return self.head(self.layer(x.transpose(0, 1)).mean(0))

    x, y = torch.randn(6, 3, 8), torch.arange(6) % 2
    with pytest.raises(SingledirError, match="batch"):
        sd.ablation_curves(SeqFirst().eval(), (x, y), ["layer.activation"], unit_dim=-1, repeats=1, levels=[0])


def test_nbytes_counts_tuples_and_dicts():
    t = torch.zeros(4, 5)
    assert nbytes((t, {"a": t, "b": [t, None]})) == 3 * 80


@pytest.mark.parametrize("layer", ["blocks.0.mlp.act", "blocks.1.mlp.act"])
def test_fast_path_on_transformer_mlp_equals_plain(seq_transformer, layer):
    model, x, y = seq_transformer
    snap = snapshot(model)
    res = sd.ablation_curves(model, (x, y), [layer], repeats=2, levels=[0, 5, 20, 40, 64], method="fast")
    assert res.meta["method"] == "fast"
    for r in range(2):
        seq = [u for _, u in res.sequences[("random", r)]]
        curve = res.curves[res.curves.repeat == r]
        plain = plain_hook_curve(model, lambda m: m(x), y, layer, curve.k.tolist(), zero_last_axis(seq))
        assert_matches_plain(curve.accuracy.to_numpy(), curve.loss.to_numpy(), plain)
    # mean clamp and directions through the fast walk equal the batched hooks
    for kw in ({"clamp": "mean"}, {"basis": torch.randn(6, 64, generator=torch.Generator().manual_seed(0))}):
        a = sd.ablation_curves(model, (x, y), [layer], repeats=1, method="fast", **kw)
        b = sd.ablation_curves(model, (x, y), [layer], repeats=1, method="hooks", **kw)
        assert np.allclose(a.curves.loss, b.curves.loss, atol=1e-5)
        assert np.abs(a.curves.accuracy.to_numpy() - b.curves.accuracy.to_numpy()).max() <= 1 / 50 + 1e-12
    imp_fast = sd.unit_importance(model, (x, y), [layer], method="fast")
    imp_ref = sd.unit_importance(model, (x, y), [layer], method="reference")
    assert np.allclose(imp_fast.loss, imp_ref.loss, atol=1e-5)
    assert_unchanged(model, snap)


def test_transformer_claim_is_opt_in_and_runs_tiny(monkeypatch):
    from singledir.experiments.claims import transformer as claim
    from singledir.experiments.reproduce import check_claims

    def process_wide(n):  # the claim trains on one thread by thread-local settings, never process-wide ones
        raise AssertionError(f"torch.set_num_threads({n}) called")

    monkeypatch.setattr(torch, "set_num_threads", process_wide)

    assert "transformer" not in check_claims(None)
    assert check_claims(["transformer", "label-corruption"]) == ["label-corruption", "transformer"]
    s = dict(claim.PRESETS["smoke"], train_subset=40, corrupt=[0.0, 1.0], max_epochs=2, orders=2, levels=3,
             noise_scales=[1.0], width=16)
    runs, nets = claim._networks(s, progress=False)
    assert list(runs.corrupt) == [0.0, 1.0] and (runs.units == 128).all()
    assert runs.labels_changed.iloc[0] == 0 and runs.labels_changed.iloc[1] > 0.5
    assert set(nets[0][0].k) == {0, 64, 128}
    part = claim._part("transformer ablation", runs.assign(target_reached=True), "auc")
    assert part.verdict == "inconclusive"  # n = 2: undefined trend statistics, never a verdict


def test_one_call_shape_for_every_measurement():
    import inspect

    fns = [sd.ablation_curves, sd.noise_curves, sd.unit_importance, sd.class_selectivity,
           sd.selectivity_vs_importance]
    for fn in fns:
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[:3]] == ["model", "data", "layers"], fn.__name__
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[3:]), fn.__name__
        names = {p.name: p for p in params}
        assert names["progress"].default is False and "unit_dim" in names and "output_fn" in names, fn.__name__
        assert "batch_size" in names, fn.__name__
