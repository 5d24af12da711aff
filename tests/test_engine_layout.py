"""The fast path's column-major walks: layout choice, buffers, fusions, anchored accumulators, scoring.

Every-level walks (levels=None: hidden.0 and hidden.1 units alternate, so the ReLU fusion, the folded
clamps and the float32 accumulators with their float64 re-anchoring all run many times), several example
chunks (buffers reused, then re-allocated for a shorter last chunk) and two orders per call (the second
walk starts again from the cached base) must agree with the reference (``compare_curves``: equal
accuracies except at near-ties that float64 resolves to the reference, losses within 1e-5).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import singledir as sd
from singledir.errors import SingledirError
from singledir.models import build_model
from singledir.reliance.fast import FastEvaluator
from singledir.reliance.fast.chainwalk import _ChainWalk
from singledir.reliance.fast.walk import LevelWalk
from singledir.reliance.fast.layout import ANCHOR_EVERY, AnchoredSum
from singledir.reliance.fast.scoring import example_scores, score_logits
from singledir.reliance.common import layer_plans, prepare
from singledir.reliance.plan import score
from singledir.reliance.testing import assert_unchanged, compare_curves, digits, snapshot


@pytest.fixture(scope="module")
def data():
    return digits(700)


class FunctionalMLP(nn.Module):
    """The same MLP written with ``F.linear`` / ``torch.relu`` on parameters (call_function nodes)."""

    def __init__(self, width=20):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w1 = nn.Parameter(torch.randn(width, 64, generator=g) * 0.2)
        self.b1 = nn.Parameter(torch.randn(width, generator=g) * 0.1)
        self.w2 = nn.Parameter(torch.randn(width, width, generator=g) * 0.3)
        self.b2 = nn.Parameter(torch.zeros(width))
        self.w3 = nn.Parameter(torch.randn(10, width, generator=g) * 0.3)
        self.act1, self.act2 = nn.Identity(), nn.Identity()

    def forward(self, x):
        h = self.act1(torch.relu(F.linear(x.flatten(1), self.w1, self.b1)))
        h = self.act2(F.relu(F.linear(h, self.w2, self.b2)))
        return F.linear(h, self.w3)


class PairMax(nn.Module):
    """Max over pairs of units via ``.view(-1, 2)``: needs row-major 2-D input (the walk must keep it)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.act, self.fc = nn.Linear(64, 16), nn.ReLU(), nn.Linear(8, 10)

    def forward(self, x):
        h = self.act(self.l1(x.flatten(1)))
        return self.fc(h.view(-1, 2).amax(1).view(h.shape[0], -1))


def assert_agree(model, data, fast, ref, **kw):
    """Equal except at near-ties that float64 resolves to the reference (``compare_curves``)."""
    cmp = compare_curves(model, data, fast, ref, **kw)
    assert cmp.ok, cmp.summary()


def evaluator(model, data, layers, memory_budget=None):
    model.eval()
    with torch.no_grad():
        prepared = prepare(model, data, layers, None)
        plans = layer_plans(model, prepared, "zero", None, None)
        return FastEvaluator(model, prepared.batches, plans, memory_budget=memory_budget)


def mlp(width=40):
    return build_model("mlp", (1, 8, 8), 10, width=width, seed=0).eval()


def test_mlp_walk_takes_the_column_major_path(data):
    ev = evaluator(mlp(), data, ["hidden.0", "hidden.1"])
    assert ev.colmajor
    names = {n.name: n for n in ev.split.rest}
    # hidden.1's Linear is read only by its ReLU: the ReLU is computed from the accumulator
    assert {c.name: r.name for c, r in ev.relu_of_consumer.items()} == {"hidden_1_0": "hidden_1_1"}
    # both markers are read only by a Linear: their clamps fold into it
    assert sorted(lin.name for lin in ev.folded_markers.values()) == ["hidden_1_0", "out"]
    assert names["out"] in ev.linear_nodes


def test_view_model_keeps_row_major_and_stays_exact(data):
    model = PairMax()
    ev = evaluator(model, data, ["act"])
    assert not ev.colmajor
    kw = dict(repeats=2, progress=False)
    fast = sd.ablation_curves(model, data, ["act"], **kw)
    ref = sd.ablation_curves(model, data, ["act"], method="reference", **kw)
    assert_agree(model, data, fast, ref)


def test_last_chunk_of_one_example_equals_reference(data):
    """A 1-example chunk cannot be column-major (it stays row-major inside a column-major walk)."""
    model, layers = mlp(width=12), ["hidden.0", "hidden.1"]
    d = (data[0][:301], data[1][:301])
    budget = int(150 * evaluator(model, d, layers).bytes_per_example)
    assert evaluator(model, d, layers, memory_budget=budget).nchunks() == 3  # 150, 150, 1
    kw = dict(repeats=2, levels=None, progress=False, seed=2)
    fast = sd.ablation_curves(model, d, layers, memory_budget=budget, **kw)
    ref = sd.ablation_curves(model, d, layers, method="reference", **kw)
    assert_agree(model, d, fast, ref, memory_budget=budget)


@pytest.mark.parametrize("clamp,basis", [("zero", "units"), ("mean", "units"), ("zero", "random")])
@pytest.mark.parametrize("kind", ["mlp", "functional"])
def test_every_level_walk_over_chunks_equals_reference(kind, clamp, basis, data):
    if kind == "mlp":
        model, layers = mlp(), ["hidden.0", "hidden.1"]
    else:
        model, layers = FunctionalMLP().eval(), ["act1", "act2"]
    snap = snapshot(model)
    # ~300 examples per chunk: 700 examples -> chunks of 300, 300, 100 (the last re-allocates buffers)
    budget = int(300 * evaluator(model, data, layers).bytes_per_example)
    ev = evaluator(model, data, layers, memory_budget=budget)
    assert ev.colmajor and ev.nchunks() == 3
    kw = dict(repeats=2, clamp=clamp, basis=basis, levels=None, progress=False, seed=5)
    fast = sd.ablation_curves(model, data, layers, memory_budget=budget, **kw)
    ref = sd.ablation_curves(model, data, layers, method="reference", **kw)
    assert_unchanged(model, snap)
    assert len(fast.curves) == 2 * (1 + (80 if kind == "mlp" else 40))
    assert_agree(model, data, fast, ref, memory_budget=budget)


def test_anchored_sum_stays_within_a_few_roundings_of_the_exact_sum():
    g = torch.Generator().manual_seed(0)
    n, c, steps = 500, 64, 100
    start = torch.randn(c, n, generator=g).t()  # column-major, like the walk's tensors
    acc = AnchoredSum(start, {}, "key")
    exact = start.double()
    worst_between, max_abs = 0.0, 0.0
    for i in range(1, steps + 1):
        v = torch.randn(n, generator=g) * 3
        w = torch.randn(c, generator=g, dtype=torch.float64).float().double()
        acc.add(v, w, w.float())
        exact += torch.outer(v.double(), w)
        max_abs = max(max_abs, float(exact.abs().max()), float(torch.outer(v, w.float()).abs().max()))
        err = float((acc.work.double() - exact).abs().max())
        if i % ANCHOR_EVERY == 0:
            # right after an anchor: the exact sum rounded once
            assert torch.equal(acc.work, exact.float())
        else:
            worst_between = max(worst_between, err)
    eps = torch.finfo(torch.float32).eps
    # at most _ANCHOR_EVERY - 1 float32 updates since the last anchor, each rounding twice (<= eps/2 each)
    assert worst_between <= (ANCHOR_EVERY - 1) * eps * max_abs
    assert acc.work.stride() == start.stride()


def test_column_major_scores_equal_score_including_ties():
    g = torch.Generator().manual_seed(0)
    n, k = 400, 7
    logits = torch.randn(n, k, generator=g) * 2
    y = torch.randint(0, k, (n,), generator=g)
    # exact ties at the maximum, before and after the label (argmax takes the first)
    logits[:40, 0] = logits[:40].amax(1) + 1
    logits[:20, 3] = logits[:20, 0]
    logits[20:40, 5] = logits[20:40, 0]
    y[:10] = 0
    y[10:20] = 3
    y[20:30] = 5
    y[30:40] = 0
    colmajor = logits.t().contiguous().t()
    want_c, want_l = score(logits, y)
    got_c, got_l = score_logits(colmajor, y)
    assert got_c == want_c
    assert got_l == pytest.approx(want_l, rel=1e-6)
    c, lo = example_scores(colmajor, y)
    np.testing.assert_array_equal(c.numpy(), (logits.argmax(1) == y).numpy())
    np.testing.assert_allclose(lo.numpy(), F.cross_entropy(logits, y, reduction="none").double().numpy(), rtol=1e-6)
    # without ties too
    plain = torch.randn(n, k, generator=g)
    assert score_logits(plain.t().contiguous().t(), y)[0] == score(plain, y)[0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_column_major_scores_reject_non_finite_logits(bad):
    logits = torch.randn(50, 4)
    logits[7, 2] = bad
    with pytest.raises(SingledirError, match="non-finite|NaN"):
        score_logits(logits.t().contiguous().t(), torch.zeros(50, dtype=torch.long))


def test_prefix_runs_once_across_base_and_importance_and_equals_uncached(data, monkeypatch):
    model, layers = mlp(), ["hidden.0", "hidden.1"]
    calls = []
    from singledir.reliance.fast.graph import Split

    real = Split.run_prefix

    def counting(self, x):
        calls.append(x.shape[0])
        return real(self, x)

    monkeypatch.setattr(Split, "run_prefix", counting)
    cached = sd.unit_importance(model, data, layers, progress=False)
    # one probe (3 examples), then every example once: base() and the single-unit ablations share it
    assert sorted(calls) == [3, len(data[1])]
    tight = int(40 * evaluator(model, data, layers).bytes_per_example)  # chunks of ~40: few kept
    calls.clear()
    uncached = sd.unit_importance(model, data, layers, progress=False, memory_budget=tight)
    rerun = sum(c for c in calls if c > 3) - len(data[1])
    assert 0 < rerun < len(data[1])  # the chunks that did not fit a quarter of the budget ran twice
    np.testing.assert_array_equal(cached.accuracy_drop.to_numpy(), uncached.accuracy_drop.to_numpy())
    np.testing.assert_allclose(cached.loss_increase.to_numpy(), uncached.loss_increase.to_numpy(), atol=1e-6)


def test_chunks_run_on_the_callers_threads_without_changing_them(data, monkeypatch):
    """The walks use the caller's torch threads (chunks walked in parallel, :mod:`.fast.pool`); no code
    changes torch's process-wide thread count; any number of workers gives the same numbers; an error in a
    worker propagates."""
    import threading

    from singledir.reliance.fast import pool

    model, layers = mlp(), ["hidden.0", "hidden.1"]
    conv = build_model("convnet", (1, 8, 8), 10, width_mult=0.0625, seed=0).eval()

    def no_set(n):
        raise AssertionError(f"torch.set_num_threads({n}) called by the engine")

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ev = evaluator(model, data, layers, memory_budget=int(60 * evaluator(model, data, layers).bytes_per_example))
        assert ev.workers == 2 and ev.nchunks() % 2 == 0  # balanced: a multiple of the workers
        names = []
        real_advance = {cls: cls.advance for cls in (LevelWalk, _ChainWalk)}  # _ChainWalk: the MLP's walks

        def spy(self, new):
            names.append(threading.current_thread().name)
            return real_advance[type(self)](self, new)

        monkeypatch.setattr(torch, "set_num_threads", no_set)
        monkeypatch.setattr(LevelWalk, "advance", spy)
        monkeypatch.setattr(_ChainWalk, "advance", spy)
        kw = dict(repeats=2, levels=[0, 5, 10, 16], progress=False, memory_budget=ev.budget)
        two = {m: sd.ablation_curves(mm, data, ll, **kw) for m, mm, ll in
               (("mlp", model, layers), ("conv", conv, [conv.unit_layers[5]]))}
        assert any(n.startswith("singledir-chunk") for n in names)  # walked in worker threads
        imp2 = sd.unit_importance(model, data, ["hidden.0"], progress=False, memory_budget=ev.budget)
        noise2 = sd.noise_curves(model, data, layers, scales=[0.5, 2.0], repeats=2, progress=False,
                                 memory_budget=ev.budget)
        monkeypatch.setattr(pool, "chunk_workers", lambda device: 1)
        monkeypatch.setattr(sys.modules["singledir.reliance.fast.evaluator"], "chunk_workers", lambda device: 1)
        one = {m: sd.ablation_curves(mm, data, ll, **kw) for m, mm, ll in
               (("mlp", model, layers), ("conv", conv, [conv.unit_layers[5]]))}
        for m in one:
            np.testing.assert_array_equal(one[m].curves.accuracy, two[m].curves.accuracy)
            np.testing.assert_allclose(one[m].curves.loss, two[m].curves.loss, rtol=1e-6)  # chunk sizes differ
        imp1 = sd.unit_importance(model, data, ["hidden.0"], progress=False, memory_budget=ev.budget)
        np.testing.assert_array_equal(imp1.accuracy_drop, imp2.accuracy_drop)
        noise1 = sd.noise_curves(model, data, layers, scales=[0.5, 2.0], repeats=2, progress=False,
                                 memory_budget=ev.budget)
        np.testing.assert_array_equal(noise1.curves.accuracy, noise2.curves.accuracy)
        monkeypatch.undo()
        assert torch.get_num_threads() == 2

        def boom(self, new):
            raise RuntimeError("boom")

        monkeypatch.setattr(LevelWalk, "advance", boom)
        monkeypatch.setattr(_ChainWalk, "advance", boom)
        with pytest.raises(RuntimeError, match="boom"):
            sd.ablation_curves(model, data, layers, repeats=1, levels=[0, 5, 10], progress=False,
                               memory_budget=ev.budget)
        assert torch.get_num_threads() == 2
    finally:
        monkeypatch.undo()
        torch.set_num_threads(before)


@pytest.mark.parametrize("error,falls_back", [
    (RuntimeError("view size is not compatible with input tensor's size and stride"), True),
    (TypeError("linear(): argument 'input' must be Tensor, not tuple"), True),
    (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)("CUDA out of memory"), False),
    (MemoryError(), False),
    (KeyError("a node the engine forgot"), False),
    (AttributeError("'FastEvaluator' object has no attribute 'x'"), False),
])
def test_probe_falls_back_only_when_an_op_cannot_run(error, falls_back, data, monkeypatch):
    """``probe`` (:mod:`singledir.reliance.fast.probe`) turns "this op cannot run node by node" into the hook
    path (with the warning); an out-of-memory error or a bug of the engine propagates (issue 16, item 5)."""
    from singledir.reliance.fast.graph import Split
    from singledir.reliance.evaluators import FastPathFallback

    def fail(self, x):
        raise error

    monkeypatch.setattr(Split, "run_prefix", fail)
    run = lambda: sd.ablation_curves(mlp(), data, ["hidden.0"], repeats=1, levels=[0, 3], progress=False)  # noqa: E731
    if falls_back:
        with pytest.warns(FastPathFallback):
            res = run()
        assert res.meta["method"] == "hooks"
    else:
        with pytest.raises(type(error)):
            run()


def test_colmajor_probe_propagates_out_of_memory(data, monkeypatch):
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

    def fail(self, cache):
        raise oom("out of memory")

    monkeypatch.setattr(FastEvaluator, "to_colmajor", fail)
    with pytest.raises(oom):
        sd.ablation_curves(mlp(), data, ["hidden.0", "hidden.1"], repeats=1, levels=[0, 3], progress=False)


def test_score_queue_scores_each_level_as_score_does_including_ties():
    from singledir.reliance.fast.scoring import ScoreQueue

    g = torch.Generator().manual_seed(3)
    n, k, levels = 300, 10, 9
    y = torch.randint(0, k, (n,), generator=g)
    queue = ScoreQueue(y, k, torch.float32, 4)  # 9 levels: two full rings and a flush
    want = []
    for level in range(levels):
        logits = (torch.randn(n, k, generator=g) * 3).round() if level % 2 else torch.randn(n, k, generator=g)
        if level == 4:  # the label tied with another class at the maximum, before and after it
            logits[:50, 2] = logits[:50, 7] = logits[:50].amax(1) + 1
        want.append(score(logits, y))
        queue.push(logits.t().contiguous().t(), level)
    got = {key: (c, lo) for key, c, lo in queue.flush()}
    assert sorted(got) == list(range(levels))
    for level, (c, lo) in enumerate(want):
        assert got[level][0] == c
        assert got[level][1] == pytest.approx(lo, rel=1e-6)
    assert int((y[:50] == 2).sum()) + int((y[:50] == 7).sum()) > 0  # the tie rule was exercised


def test_last_level_cache_is_read_from_sysfs(tmp_path):
    from singledir.reliance.fast.probe import last_level_cache

    for name, level, kind, size in (("index0", 1, "Data", "48K"), ("index1", 1, "Instruction", "32K"),
                                     ("index2", 2, "Unified", "1280K"), ("index3", 3, "Unified", "49152K")):
        d = tmp_path / name
        d.mkdir()
        for f, v in (("level", level), ("type", kind), ("size", size)):
            (d / f).write_text(f"{v}\n")
    assert last_level_cache(tmp_path) == 48 << 20
    (tmp_path / "index3" / "size").write_text("garbage\n")  # unreadable sizes are skipped
    assert last_level_cache(tmp_path) == 1280 << 10
    assert last_level_cache(tmp_path / "missing") == 0
