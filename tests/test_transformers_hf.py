"""Every measurement on Hugging Face transformers (GPT-2, BERT, LLaMA) built from small configs, against a
plain per-level hook loop.

No download: random weights (a large ``initializer_range`` so that ablating neurons changes predictions).
These tests skip only where ``transformers`` is absent outside CI; in CI (``CI=true``) it is installed
by the ``dev`` extra and a missing package fails them.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

import singledir as sd
from singledir.errors import SingledirError
from singledir.reliance.inputs import shift_labels
from singledir.reliance.selectivity import selectivity_from_activations
from singledir.reliance.testing import (
    assert_matches_plain,
    assert_unchanged,
    plain_hook_curve,
    snapshot,
    zero_last_axis,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
if importlib.util.find_spec("transformers") is None and not IN_CI:
    pytest.skip("transformers is not installed (pip install -e '.[dev]'); CI installs it", allow_module_level=True)

import transformers  # noqa: E402

transformers.logging.set_verbosity_error()

GPT2_ACT = "transformer.h.1.mlp.act"
BERT_ACT = "bert.encoder.layer.1.intermediate.intermediate_act_fn"
LLAMA_ACT = "model.layers.0.mlp.act_fn"


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_inner=64, vocab_size=23, n_positions=16,
                                  initializer_range=0.3, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 23, (40, 8))
    return model, ids, _own_labels(model(ids).logits)


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(1)
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=48,
                                  vocab_size=30, max_position_embeddings=16, num_labels=3, initializer_range=0.3)
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(1, 30, (48, 9))
    mask = torch.ones_like(ids)
    mask[::3, 6:] = 0  # padded sequences
    ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        y = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
    y[::4] = (y[::4] + 1) % 3  # base accuracy 75%
    return model, {"input_ids": ids, "attention_mask": mask}, y


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(2)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                                   intermediate_size=48, vocab_size=23, max_position_embeddings=16,
                                   initializer_range=0.3)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 23, (32, 8))
    return model, ids, _own_labels(model(ids).logits)


@torch.no_grad()
def _own_labels(logits):
    """Labels = the untouched model's predictions, last position unscored: base accuracy 100%, so that
    ablation visibly changes it (random labels on a random model stay at chance)."""
    y = logits.argmax(-1)
    y[:, -1] = -100
    return y


def test_shift_labels():
    ids = torch.tensor([[5, 6, 7]])
    assert shift_labels(ids).tolist() == [[6, 7, -100]]


@pytest.mark.parametrize("method", ["hooks", "reference"])
def test_gpt2_token_level_ablation_equals_plain_hooks(gpt2, method):
    model, ids, labels = gpt2
    snap = snapshot(model)
    res = sd.ablation_curves(model, {"input_ids": ids, "labels": labels}, [GPT2_ACT], repeats=2, seed=3,
                             levels=[0, 8, 24, 48, 64], method=method, batch_size=16)
    assert res.meta["units"] == {GPT2_ACT: 64}  # neurons on the last axis, inferred (Conv1D -> act)
    assert res.meta["token_level"] and res.meta["n_examples"] == int((labels != -100).sum())
    for r in range(2):
        seq = [u for _, u in res.sequences[("random", r)]]
        curve = res.curves[res.curves.repeat == r]
        plain = plain_hook_curve(model, lambda m: m(input_ids=ids), labels, GPT2_ACT, curve.k.tolist(), zero_last_axis(seq))
        assert_matches_plain(curve.accuracy.to_numpy(), curve.loss.to_numpy(), plain)
    accs = res.curves.groupby("k").accuracy.mean()
    assert accs.loc[0] == 1.0 and accs.loc[64] < 0.9  # the neurons matter: the test can fail
    assert_unchanged(model, snap)


def test_bert_sequence_level_dict_inputs_mean_clamp_equals_plain(bert):
    model, inputs, y = bert
    snap = snapshot(model)
    data = {**inputs, "labels": y}
    res = sd.ablation_curves(model, data, [BERT_ACT], repeats=1, clamp="mean", levels=[0, 6, 20, 48], batch_size=20)
    # the mean clamp pools the non-padding tokens only
    rec = {}
    h = model.get_submodule(BERT_ACT).register_forward_hook(lambda _m, _i, o: rec.setdefault("h", o))
    with torch.no_grad():
        model(**inputs)
    h.remove()
    means = rec["h"][inputs["attention_mask"].bool()].double().mean(0).float()
    seq = [u for _, u in res.sequences[("random", 0)]]

    def edit(o, k):
        o = o.clone()
        o[..., seq[:k]] = means[seq[:k]]
        return o

    plain = plain_hook_curve(model, lambda m: m(**inputs), y, BERT_ACT, res.curves.k.tolist(), edit)
    assert_matches_plain(res.curves.accuracy.to_numpy(), res.curves.loss.to_numpy(), plain)
    assert res.meta["method"] == "hooks" and not res.meta["token_level"]
    assert_unchanged(model, snap)


def test_llama_gated_mlp_ablation_equals_plain(llama):
    model, ids, labels = llama
    res = sd.ablation_curves(model, (ids, labels), [LLAMA_ACT], repeats=1, levels=[0, 12, 48])
    seq = [u for _, u in res.sequences[("random", 0)]]
    plain = plain_hook_curve(model, lambda m: m(ids), labels, LLAMA_ACT, [0, 12, 48], zero_last_axis(seq))
    assert_matches_plain(res.curves.accuracy.to_numpy(), res.curves.loss.to_numpy(), plain)
    assert res.meta["units"] == {LLAMA_ACT: 48}


def test_block_output_is_ambiguous_and_refused(gpt2):
    model, ids, labels = gpt2
    with pytest.raises(SingledirError, match="unit_dim"):
        sd.ablation_curves(model, (ids, labels), ["transformer.h.1.mlp"], repeats=1, levels=[0, 1])
    res = sd.ablation_curves(model, (ids, labels), ["transformer.h.1.mlp"], unit_dim=-1, repeats=1, levels=[0, 1])
    assert res.meta["units"] == {"transformer.h.1.mlp": 32}


def test_importance_equals_plain_single_ablations(gpt2):
    model, ids, labels = gpt2
    imp = sd.unit_importance(model, (ids, labels), [GPT2_ACT], batch_size=20)
    assert list(imp.unit) == list(range(64)) and imp.meta["method"] == "hooks"
    for u in (0, 17, 63):
        plain = plain_hook_curve(model, lambda m: m(ids), labels, GPT2_ACT, [1], zero_last_axis([u]))
        row = imp[imp.unit == u].iloc[0]
        assert_matches_plain([row.accuracy], [row.loss], plain)


def test_noise_paths_agree_and_sigma_pools_nonpadding_tokens(bert):
    model, inputs, y = bert
    data = ({**inputs}, y)
    a = sd.noise_curves(model, data, [BERT_ACT], scales=[0.3, 3.0], repeats=2, method="hooks", batch_size=16)
    b = sd.noise_curves(model, data, [BERT_ACT], scales=[0.3, 3.0], repeats=2, method="reference", batch_size=24)
    assert np.allclose(a.curves.loss, b.curves.loss, atol=1e-5)
    assert np.abs(a.curves.accuracy.to_numpy() - b.curves.accuracy.to_numpy()).max() <= 1 / 48 + 1e-12
    rec = {}
    h = model.get_submodule(BERT_ACT).register_forward_hook(lambda _m, _i, o: rec.setdefault("h", o))
    with torch.no_grad():
        model(**inputs)
    h.remove()
    sigma = rec["h"][inputs["attention_mask"].bool()].double().std(0, unbiased=False)
    assert torch.allclose(a.meta["sigma"][BERT_ACT], sigma, rtol=1e-5)
    assert a.curves[a.curves.scale == 3.0].loss.mean() > a.meta["base_loss"]  # noise hurts


def test_selectivity_sequence_level_respects_padding(bert):
    model, inputs, y = bert
    df = sd.class_selectivity(model, {**inputs, "labels": y}, [BERT_ACT])
    rec = {}
    h = model.get_submodule(BERT_ACT).register_forward_hook(lambda _m, _i, o: rec.setdefault("h", o))
    with torch.no_grad():
        model(**inputs)
    h.remove()
    m = inputs["attention_mask"].float()[:, :, None]
    act = (rec["h"] * m).sum(1) / m.sum(1)
    ref = selectivity_from_activations(act, y)
    assert np.allclose(df.selectivity, ref.selectivity, atol=1e-5)
    assert np.allclose(df.mutual_info, ref.mutual_info, atol=1e-9)
    assert df.meta["unit_dims"] == {BERT_ACT: 2}


def test_selectivity_token_level_each_scored_token_is_an_example(gpt2):
    model, ids, labels = gpt2
    df = sd.class_selectivity(model, (ids, labels), [GPT2_ACT], num_classes=23)
    rec = {}
    h = model.get_submodule(GPT2_ACT).register_forward_hook(lambda _m, _i, o: rec.setdefault("h", o))
    with torch.no_grad():
        model(ids)
    h.remove()
    keep = labels != -100
    ref = selectivity_from_activations(rec["h"][keep], labels[keep], 23)
    assert np.allclose(df.selectivity, ref.selectivity, atol=1e-5)
    assert np.allclose(df.mutual_info, ref.mutual_info, atol=1e-9)
    assert df.meta["n_examples"] == int(keep.sum())


def test_selectivity_vs_importance_runs_on_gpt2(gpt2):
    model, ids, labels = gpt2
    corr = sd.selectivity_vs_importance(model, (ids, labels), [GPT2_ACT], n_boot=50)
    assert set(corr.layer) == {GPT2_ACT, "all"} and corr.meta["n_boot"] == 50


def test_output_fn_and_tuple_outputs(gpt2):
    model, ids, labels = gpt2
    a = sd.ablation_curves(model, (ids, labels), [GPT2_ACT], repeats=1, levels=[0, 30])
    b = sd.ablation_curves(model, (ids, labels), [GPT2_ACT], repeats=1, levels=[0, 30],
                           output_fn=lambda out: out.logits * 1.0)
    assert np.array_equal(a.curves.accuracy, b.curves.accuracy)
    with pytest.raises(SingledirError, match="output_fn"):
        sd.ablation_curves(model, (ids, labels), [GPT2_ACT], repeats=1, levels=[0, 1], output_fn=lambda out: out.loss)


def test_direction_tensor_on_gpt2_equals_plain_projection(gpt2):
    model, ids, labels = gpt2
    g = torch.Generator().manual_seed(5)
    d = torch.randn(6, 64, generator=g)  # not orthogonal
    res = sd.ablation_curves(model, (ids, labels), [GPT2_ACT], basis=d, levels=[0, 2, 6])
    assert res.meta["orders"] == ["rows"] and not res.meta["orthonormal"] and res.meta["rank"] == {GPT2_ACT: 6}
    q, _ = torch.linalg.qr(d.double().T)

    def edit(o, k):
        p = (q[:, :k] @ q[:, :k].T).float()
        return o - o @ p

    plain = plain_hook_curve(model, lambda m: m(ids), labels, GPT2_ACT, [0, 2, 6], edit)
    assert_matches_plain(res.curves.accuracy.to_numpy(), res.curves.loss.to_numpy(), plain)


def test_dataloader_of_dicts_equals_one_dict(bert):
    model, inputs, y = bert
    rows = [{"input_ids": inputs["input_ids"][i], "attention_mask": inputs["attention_mask"][i], "labels": y[i]}
            for i in range(len(y))]
    loader = torch.utils.data.DataLoader(rows, batch_size=10)
    a = sd.unit_importance(model, loader, [BERT_ACT], method="reference")
    b = sd.unit_importance(model, {**inputs, "labels": y}, [BERT_ACT], method="hooks", batch_size=48)
    assert np.allclose(a.loss, b.loss, atol=1e-5)
    assert np.abs(a.accuracy.to_numpy() - b.accuracy.to_numpy()).max() <= 1 / 48 + 1e-12
    with pytest.raises(SingledirError, match="method='fast'"):
        sd.unit_importance(model, loader, [BERT_ACT], method="fast")


def test_llama_gated_neurons_are_the_input_of_down_proj(llama):
    model, ids, labels = llama
    layer = "model.layers.0.mlp.down_proj:input"  # act(gate(x)) * up(x): exists only as this input
    snap = snapshot(model)
    res = sd.ablation_curves(model, (ids, labels), [layer], repeats=1, levels=[0, 12, 48], clamp="mean")
    assert res.meta["units"] == {layer: 48} and res.meta["unit_dims"] == {layer: 2}
    rec = {}
    h = model.get_submodule("model.layers.0.mlp.down_proj").register_forward_pre_hook(
        lambda _m, a: rec.setdefault("h", a[0]))
    with torch.no_grad():
        model(ids)
    h.remove()
    means = rec["h"].reshape(-1, 48).double().mean(0).float()
    seq = [u for _, u in res.sequences[("random", 0)]]

    def edit(o, k):
        o = o.clone()
        o[..., seq[:k]] = means[seq[:k]]
        return o

    plain = plain_hook_curve(model, lambda m: m(ids), labels, layer, [0, 12, 48], edit)
    assert_matches_plain(res.curves.accuracy.to_numpy(), res.curves.loss.to_numpy(), plain)
    sel = sd.class_selectivity(model, (ids, labels), [layer], num_classes=23)
    assert len(sel) == 48
    imp = sd.unit_importance(model, (ids, labels), [layer])
    assert len(imp) == 48 and imp.meta["method"] == "hooks"
    assert_unchanged(model, snap)
