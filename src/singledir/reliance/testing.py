"""Helpers for testing code that uses the reliance engine: toy models, small data, "model unchanged" checks.

Offers:

- :func:`snapshot` / :func:`assert_unchanged` -- record a model's training flags, weights and hooks, and
  assert later that all three are exactly as before.
- :class:`UserNet` -- a user-style model: non-Sequential forward with two branches from a hidden layer,
  functional ops (``torch.relu``, ``+``, ``torch.cat``) and a skip connection.
- :class:`ControlFlowNet` -- a model whose forward has data-dependent Python control flow (torch.fx cannot
  trace it: the engine's fallback path handles it).
- :func:`digits` -- sklearn's 8x8 digits as ``(N, 1, 8, 8)`` float tensors and int64 labels.
- :func:`train_quick` -- a few epochs of Adam, seeded.
- :func:`randomize_batchnorm` -- give every batch norm layer non-trivial running statistics and affine
  parameters (so eval-mode batch norm is not the identity in tests).
- :func:`compare_curves`, :func:`compare_noise`, :func:`compare_importance` / :class:`CurveComparison` --
  what "the fast path equals the reference" means for ablation curves, noise curves and importance (used by the tests and
  ``benchmarks/bench_ablation.py``), with :func:`near_tie_bound` and :data:`NEAR_TIE_ULPS`.

Equality of two paths, honestly. Both paths compute every logit in float32, but with different summation
orders (BLAS blocking, the fast path's incremental accumulators: up to ``ANCHOR_EVERY - 1`` = 15 float32
rank-1 updates since the last re-anchoring, each rounding twice). So a logit may differ between the paths
by a few ulps of the logits' magnitude, and an example whose two largest logits are that close (a
*near-tie*) may be predicted differently. :func:`compare_curves` therefore says the paths agree when

- losses agree within ``loss_atol`` (1e-5 mean cross-entropy) at every level, and
- every example predicted differently by the two paths is a near-tie: its top-2 margin in the
  reference's float32 logits is at most :func:`near_tie_bound` = ``NEAR_TIE_ULPS * eps32 * max(1,
  max_c |logit_c|)`` with ``NEAR_TIE_ULPS`` = 64 (2 logits x 2 roundings x 16 updates of one ulp each:
  a practical bound for these networks, not a worst-case proof), and
- a float64 recomputation of that level (the same model and edits in float64) predicts what the
  reference predicts.

It counts the disagreeing examples, the near-ties among them, and how many float64 resolves to the
reference. Per-example predictions of the fast path come from re-running its walk with ``watch`` on the
differing levels only (same process and threads: the same numbers), so identical curves cost nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = [
    "NEAR_TIE_ULPS",
    "ControlFlowNet",
    "CurveComparison",
    "compare_curves",
    "compare_importance",
    "compare_noise",
    "UserNet",
    "assert_unchanged",
    "digits",
    "hook_count",
    "near_tie_bound",
    "PlainLevel",
    "assert_matches_plain",
    "plain_hook_curve",
    "zero_last_axis",
    "randomize_batchnorm",
    "snapshot",
    "train_quick",
]


def hook_count(model: nn.Module) -> int:
    """Total forward and pre-forward hooks on all submodules."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def snapshot(model: nn.Module) -> dict:
    """Training flag of every submodule, a copy of the state dict, and the hook count."""
    return {
        "modes": {name: m.training for name, m in model.named_modules()},
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "hooks": hook_count(model),
    }


def assert_unchanged(model: nn.Module, snap: dict) -> None:
    """Assert the model has the same modes, exactly the same weights/buffers and no extra hooks."""
    modes = {name: m.training for name, m in model.named_modules()}
    assert modes == snap["modes"], "training flags changed"
    state = model.state_dict()
    assert state.keys() == snap["state"].keys()
    for k, v in snap["state"].items():
        assert torch.equal(state[k], v), f"{k} changed"
    assert hook_count(model) == snap["hooks"], "hooks left behind"
    if snap["hooks"] == 0:
        for m in model.modules():
            assert not m._forward_hooks and not m._forward_pre_hooks, "hooks left behind"


class UserNet(nn.Module):
    """hidden -> two branches (ReLU, Tanh) added, concatenated with the hidden layer (skip), linear head.

    Unit layers: ``hid`` (64 -> ``width``), ``br1``, ``br2`` (``width`` -> ``width // 2``), ``mix``
    (a ReLU on the concatenation, called as a module).
    """

    def __init__(self, in_features: int = 64, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.hid = nn.Sequential(nn.Linear(in_features, width), nn.ReLU())
        self.br1 = nn.Sequential(nn.Linear(width, width // 2), nn.ReLU())
        self.br2 = nn.Sequential(nn.Linear(width, width // 2), nn.Tanh())
        self.mix = nn.ReLU()
        self.head = nn.Linear(width + width // 2, num_classes)
        self.unit_layers = ["hid", "br1", "br2", "mix"]

    def forward(self, x):
        h = self.hid(x.flatten(1))
        s = self.br1(h) + 0.5 * self.br2(h)
        c = torch.cat([s, torch.relu(h) * 0.9], dim=1)
        return self.head(self.mix(c))


class ControlFlowNet(nn.Module):
    """An MLP whose forward branches on the data (``if x.mean() > 0``): not traceable by torch.fx."""

    def __init__(self, in_features: int = 64, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.l1 = nn.Sequential(nn.Linear(in_features, width), nn.ReLU())
        self.l2 = nn.Sequential(nn.Linear(width, width), nn.ReLU())
        self.out = nn.Linear(width, num_classes)

    def forward(self, x):
        h = self.l1(x.flatten(1))
        if h.mean() > 0:  # data-dependent Python control flow
            h = self.l2(h)
        return self.out(h)


def digits(n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's digits (1797 8x8 images), standardized, shuffled with ``seed``, first ``n``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = (x - 0.3) / 0.4
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return (x, y) if n is None else (x[:n], y[:n])


def train_quick(model: nn.Module, x, y, epochs: int = 20, lr: float = 3e-3, batch: int = 64, seed: int = 0):
    """Train ``model`` with Adam on (x, y) for a few epochs (seeded); returns it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running means/vars and affine parameters for every batch norm layer."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            if m.affine:
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
    return model


# --------------------------------------------------------------------------------------------------
# fast == reference, honestly
# --------------------------------------------------------------------------------------------------
#: Near-tie bound in float32 ulps of the logits' magnitude (module docstring).
NEAR_TIE_ULPS = 64


def near_tie_bound(logits: torch.Tensor) -> torch.Tensor:
    """Per example: ``NEAR_TIE_ULPS * eps32 * max(1, max_c |logit_c|)`` (module docstring)."""
    eps = torch.finfo(torch.float32).eps
    return NEAR_TIE_ULPS * eps * logits.abs().amax(1).clamp_min(1.0).double()


def _margin(logits: torch.Tensor) -> torch.Tensor:
    top = logits.double().topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def _differing(result, reference, keys, loss_atol):
    """A new :class:`CurveComparison` of two results (rows aligned on ``keys``) and the rows whose
    accuracies differ; checks that both come from the same call and ``result`` from the fast path."""
    a, b = result.curves, reference.curves
    if list(a[keys].itertuples(index=False)) != list(b[keys].itertuples(index=False)):
        raise ValueError(f"the two results differ in {', '.join(keys)}; compare results of the same call")
    out = CurveComparison(levels=len(a), loss_atol=loss_atol)
    out.max_loss_diff = float(np.abs(a["loss"].to_numpy() - b["loss"].to_numpy()).max())
    differ = np.flatnonzero(a["accuracy"].to_numpy() != b["accuracy"].to_numpy())
    out.levels_differing = len(differ)
    if len(differ) and result.meta["method"] != "fast":
        raise ValueError(f"per-example comparison needs a method='fast' result, got {result.meta['method']!r}")
    return out, differ


def _judge(out, where, fast_pred, ref32, ref64, ys, fast_c: int, ref_c: int) -> None:
    """Add one differing level's examples to ``out`` (see the module docstring for the rule)."""
    ref_pred, f64_pred = ref32.argmax(1), ref64.argmax(1)
    margin, bound = _margin(ref32), near_tie_bound(ref32)
    if int((fast_pred == ys).sum()) != fast_c or int((ref_pred == ys).sum()) != ref_c:
        out.inconsistent += 1
    for e in torch.nonzero(fast_pred != ref_pred).flatten().tolist():
        out.examples_differing += 1
        out.near_ties += int(margin[e] <= bound[e])
        out.float64_agrees_with_reference += int(f64_pred[e] == ref_pred[e])
        out.details.append((*where, e, float(margin[e]), float(bound[e]), int(fast_pred[e]), int(ref_pred[e]),
                            int(f64_pred[e]), int(ys[e])))


@dataclass
class CurveComparison:
    """The outcome of :func:`compare_curves` (see the module docstring for the rule)."""

    levels: int = 0
    levels_differing: int = 0
    examples_differing: int = 0
    near_ties: int = 0
    float64_agrees_with_reference: int = 0
    max_loss_diff: float = 0.0
    loss_atol: float = 1e-5
    #: differing levels whose recomputed predictions do not reproduce both results' accuracies
    inconsistent: int = 0
    #: (where..., example, margin, bound, fast prediction, reference prediction, float64 prediction, label);
    #: where = (order, repeat, k) for curves, (repeat, scale) for noise
    details: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.max_loss_diff <= self.loss_atol
            and self.inconsistent == 0
            and self.near_ties == self.examples_differing
            and self.float64_agrees_with_reference == self.examples_differing
        )

    def summary(self) -> str:
        return (
            f"{self.levels_differing} of {self.levels} levels differ; {self.examples_differing} examples "
            f"predicted differently, {self.near_ties} of them near-ties, float64 agrees with the reference "
            f"on {self.float64_agrees_with_reference}; max loss difference {self.max_loss_diff:.2g} "
            f"(<= {self.loss_atol:g}); {self.inconsistent} levels not reproduced: {'agree' if self.ok else 'DIFFER'}"
        )


def compare_curves(model, data, result, reference, *, stats_data=None, batch_size=None, memory_budget=None,
                   loss_atol: float = 1e-5) -> CurveComparison:
    """Compare two :class:`~.ablation.AblationResult` of the same call (``result`` from ``method="fast"``,
    ``reference`` from ``method="reference"``) on ``data``; see the module docstring for the rule.

    ``stats_data`` / ``batch_size`` / ``memory_budget``: as given to both calls.
    """
    from singledir.reliance.common import layer_plans, prepare, unit_means
    from singledir.reliance.evaluators import make_evaluator
    from singledir.reliance.hooks import edit_outputs, model_guard
    from singledir.reliance.inputs import ModelInput, as_batches
    from singledir.reliance.plan import Curve, LayerPlan

    a, b = result.curves, reference.curves
    out, differ = _differing(result, reference, ["order", "repeat", "k"], loss_atol)
    if not len(differ):
        return out
    meta = result.meta
    n = meta["n_examples"]
    by_curve: dict = {}
    for i in differ:
        row = a.iloc[i]
        counts = (int(round(row["accuracy"] * n)), int(round(b.iloc[i]["accuracy"] * n)))
        by_curve.setdefault((row["order"], int(row["repeat"])), []).append((int(row["k"]), counts))
    with model_guard(model), torch.no_grad():
        prepared = prepare(model, data, meta["layers"], batch_size)
        stats = None if stats_data is None else as_batches(stats_data, batch_size)
        index = {n: i for i, n in enumerate(prepared.layers)}
        clamp = meta["clamp"]
        base_plans = layer_plans(model, prepared, clamp if meta["basis"] == "units" else "zero", stats)
        centers = unit_means(model, prepared, stats) if meta["basis"] == "random" and clamp == "mean" else None
        model64 = copy.deepcopy(model).double()
        feed32, feed64 = ModelInput(model), ModelInput(model64)
        ys = torch.cat([y for _x, y in prepared.batches])
        for (order, rep), ks in by_curve.items():
            plans = base_plans
            if meta["basis"] == "random":
                dirs = result.directions[(order, rep)]
                plans = [LayerPlan(p.name, p.units, torch.zeros(p.units), dirs[p.name],
                                   None if centers is None else centers[p.name].float()) for p in base_plans]
            seq = [(index[layer], u) for layer, u in result.sequences[(order, rep)]]
            curve = Curve(seq, list(meta["levels"]), plans, order, rep)
            ev = make_evaluator(meta["method"], model, prepared.batches, plans, memory_budget)
            watch = {(0, curve.levels.index(k)) for k, _c in ks}
            ev.cumulative([curve], watch=watch)
            for k, (fast_c, ref_c) in ks:
                fast_pred = ev.watched[(0, curve.levels.index(k))].argmax(1).cpu()
                ablated = curve.units_between(0, k)
                logits = {}
                for name, m, feed in (("f32", model, feed32), ("f64", model64, feed64)):
                    edits = {plans[li].name: plans[li].edit(us) for li, us in ablated.items()}
                    with edit_outputs(m, edits):
                        logits[name] = torch.cat([m(feed(x)).cpu() for x, _y in prepared.batches])
                _judge(out, (order, rep, k), fast_pred, logits["f32"], logits["f64"], ys, fast_c, ref_c)
        del model64
    return out


def compare_noise(model, data, result, reference, *, batch_size=None, memory_budget=None,
                  loss_atol: float = 1e-5) -> CurveComparison:
    """:func:`compare_curves` for two :class:`~.noise.NoiseResult` of the same call (``result`` from
    ``method="fast"``, ``reference`` from ``method="reference"``); the noise stds are read from
    ``result.meta["sigma"]``. The float64 recomputation uses the same float32 noise draws, widened."""
    from singledir.reliance.common import layer_plans, prepare
    from singledir.reliance.edits import NoiseSpec, apply_noise, example_noise
    from singledir.reliance.evaluators import make_evaluator
    from singledir.reliance.hooks import edit_outputs, model_guard
    from singledir.reliance.inputs import ModelInput
    from singledir.reliance.plan import NoisePlan

    a, b = result.curves, reference.curves
    out, differ = _differing(result, reference, ["repeat", "scale"], loss_atol)
    if not len(differ):
        return out
    meta = result.meta
    n, scales = meta["n_examples"], list(meta["scales"])
    todo = []
    for i in differ:
        row = a.iloc[i]
        todo.append((int(row["repeat"]), scales.index(float(row["scale"])), int(round(row["accuracy"] * n)),
                     int(round(b.iloc[i]["accuracy"] * n))))
    with model_guard(model), torch.no_grad():
        prepared = prepare(model, data, meta["layers"], batch_size)
        plan = NoisePlan([meta["sigma"][name] for name in prepared.layers], scales, meta["repeats"], meta["seed"],
                         list(prepared.layers))
        ev = make_evaluator("fast", model, prepared.batches, layer_plans(model, prepared, "zero"), memory_budget)
        ev.noise(plan, watch={(r, s) for r, s, _f, _r in todo})
        model64 = copy.deepcopy(model).double()
        ys = torch.cat([y for _x, y in prepared.batches])
        for r, s, fast_c, ref_c in todo:
            logits = {}
            for name, m in (("f32", model), ("f64", model64)):
                feed, pos = ModelInput(m), {"start": 0}

                def make(li, std, pos=pos):
                    def edit(h):  # the float32 draw of every path, widened for the float64 model
                        z = example_noise(h.shape[1:], pos["start"], pos["start"] + h.shape[0], plan.key(r, li),
                                          device=h.device)
                        return apply_noise(h, z.to(h.dtype), std)

                    return edit

                edits = {layer: make(li, NoiseSpec(plan.sigmas[li], float(scales[s])).std)
                         for li, layer in enumerate(prepared.layers)}
                parts = []
                with edit_outputs(m, edits):
                    for x, _y in prepared.batches:
                        parts.append(m(feed(x)).cpu())
                        pos["start"] += x.shape[0]
                logits[name] = torch.cat(parts)
            fast_pred = ev.watched[(r, s)].argmax(1).cpu()
            _judge(out, (r, scales[s]), fast_pred, logits["f32"], logits["f64"], ys, fast_c, ref_c)
        del model64
    return out


def compare_importance(model, data, result, reference, *, stats_data=None, batch_size=None, memory_budget=None,
                       loss_atol: float = 1e-5) -> CurveComparison:
    """:func:`compare_curves` for two :func:`~.importance.unit_importance` tables of the same call
    (``result`` from ``method="fast"``, ``reference`` from ``method="reference"``); one "level" per unit."""
    from singledir.reliance.common import layer_plans, prepare
    from singledir.reliance.evaluators import make_evaluator
    from singledir.reliance.hooks import edit_outputs, model_guard
    from singledir.reliance.inputs import ModelInput, as_batches

    class _Table:  # the shape _differing expects
        def __init__(self, df):
            self.curves, self.meta = df, dict(df.attrs)

    a, b = result, reference
    out, differ = _differing(_Table(a), _Table(b), ["layer", "unit"], loss_atol)
    if not len(differ):
        return out
    n = a.attrs["n_examples"]
    with model_guard(model), torch.no_grad():
        prepared = prepare(model, data, sorted(set(a["layer"]), key=list(a["layer"]).index), batch_size)
        stats = None if stats_data is None else as_batches(stats_data, batch_size)
        plans = layer_plans(model, prepared, a.attrs["clamp"], stats)
        units = [(li, u) for li, p in enumerate(plans) for u in range(p.units)]
        ev = make_evaluator("fast", model, prepared.batches, plans, memory_budget)
        ev.singles(plans, units, watch=set(int(i) for i in differ))
        model64 = copy.deepcopy(model).double()
        ys = torch.cat([y for _x, y in prepared.batches])
        for i in differ:
            li, u = units[i]
            logits = {}
            for name, m in (("f32", model), ("f64", model64)):
                feed = ModelInput(m)
                with edit_outputs(m, {plans[li].name: plans[li].edit([u])}):
                    logits[name] = torch.cat([m(feed(x)).cpu() for x, _y in prepared.batches])
            counts = int(round(a.iloc[i]["accuracy"] * n)), int(round(b.iloc[i]["accuracy"] * n))
            _judge(out, (plans[li].name, u), ev.watched[int(i)].argmax(1).cpu(), logits["f32"], logits["f64"], ys,
                   *counts)
        del model64
    return out


# --------------------------------------------------------------------------------------------------
# A plain per-level hook loop (TransformerLens-style): the reference for sequence models
# --------------------------------------------------------------------------------------------------
@dataclass
class PlainLevel:
    """One level of :func:`plain_hook_curve`: token (or example) accuracy, mean cross-entropy over the
    scored labels, their count, and the near-ties among them (top-2 margin <= :func:`near_tie_bound`)."""

    accuracy: float
    loss: float
    n: int
    near_ties: int


@torch.no_grad()
def plain_hook_curve(model, call, labels, layer: str, levels, edit_fn) -> list[PlainLevel]:
    """For each level k: one forward hook on ``layer`` replacing its output by ``edit_fn(out, k)``, one
    plain call ``call(model)`` returning the logits (or an output with ``.logits``), scored against
    ``labels`` (-100 not scored) with ``torch.nn.functional.cross_entropy`` -- no engine code involved.

    A ``layer`` ending in ``":input"`` edits the module's first positional input instead.
    ``edit_fn(out, k)`` sees the layer's raw output (e.g. zero ``out[..., seq[:k]]``); ``k=None`` is not
    used. The model should be in eval mode; hooks are removed after every level.
    """
    import torch.nn.functional as F

    is_input = layer.endswith(":input")  # the module's first positional input, by a plain pre-hook
    module = model.get_submodule(layer[: -len(":input")] if is_input else layer)
    out = []
    for k in levels:
        if is_input:
            handle = module.register_forward_pre_hook(lambda _m, a, k=k: (edit_fn(a[0], k), *a[1:]))
        else:
            handle = module.register_forward_hook(lambda _m, _i, o, k=k: edit_fn(o, k))
        try:
            res = call(model)
        finally:
            handle.remove()
        logits = res if isinstance(res, torch.Tensor) else (res.logits if hasattr(res, "logits") else res[0])
        lg = logits.reshape(-1, logits.shape[-1])
        y = labels.reshape(-1)
        keep = y != -100
        lg, y = lg[keep], y[keep]
        acc = float((lg.argmax(1) == y).double().mean())
        loss = float(F.cross_entropy(lg.double(), y))
        ties = int((_margin(lg) <= near_tie_bound(lg)).sum())
        out.append(PlainLevel(acc, loss, int(y.numel()), ties))
    return out


def assert_matches_plain(accuracy, loss, plain: list[PlainLevel], loss_atol: float = 1e-5) -> None:
    """Assert the engine's per-level ``accuracy`` and ``loss`` equal :func:`plain_hook_curve`'s under the
    near-tie rule: losses within ``loss_atol``; predictions that differ at most the near-ties."""
    assert len(accuracy) == len(plain)
    for i, p in enumerate(plain):
        assert abs(float(loss[i]) - p.loss) <= loss_atol, f"level {i}: loss {loss[i]} vs plain {p.loss}"
        differ = round(abs(float(accuracy[i]) - p.accuracy) * p.n)
        assert differ <= p.near_ties, f"level {i}: {differ} predictions differ, {p.near_ties} near-ties"


def zero_last_axis(seq):
    """An ``edit_fn`` for :func:`plain_hook_curve`: level k zeroes units ``seq[:k]`` of the last axis."""

    def edit(o, k):
        o = o.clone()
        o[..., list(seq[:k])] = 0
        return o

    return edit
