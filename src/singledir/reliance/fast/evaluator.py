"""The fx fast path's evaluator: the traced model split into a cached prefix and a rest run node by node.

Offers :class:`FastEvaluator` (``method="fast"``; ``"auto"`` when the model traces). It implements the
evaluator interface of :mod:`singledir.reliance.reference` (``base``, ``cumulative``, ``singles``,
``noise``) and gives the reference's numbers up to float rounding inside the network (see
:func:`singledir.reliance.testing.compare_curves` for what "equal" means).

*Split* (:mod:`.graph`). The model is traced with a marker node after each analysed layer. Nodes that no
marker reaches (the *prefix*: for the MLP's ``hidden.0`` the input flatten and the first Linear) compute
the same value at every ablation level, so they run ONCE per example chunk; the prefix values the rest
consumes are cached (and kept across ``base`` / ``singles`` / ``noise`` / ``cumulative`` while all
chunks' values fit a quarter of ``memory_budget``). Only the *rest* is recomputed per level, with the
ablation applied at the markers by the very same edit function the reference installs as a hook. The
level walk and its incremental updates are in :mod:`.walk`; the column-major layout, buffers and fusions
in :mod:`.layout`; scoring in :mod:`.scoring`.

*Chunks* (sized by :mod:`.probe`). Example chunks are sized so that the recomputed state of one chunk
stays in each worker's share of the CPU's last-level cache (at least ``_CACHE_TARGET``), or fits a
quarter of the free memory of a CUDA device,
and everything held by the workers at once stays within ``memory_budget``; their number is a multiple of
the workers (:mod:`.pool`).

*Noise* (:mod:`.noise`) uses the same cached prefix, layout, buffers and batched scoring; its draws depend
only on (seed, repeat, layer, example index, unit), as in the reference. *Threads* (:mod:`.pool`): chunks
are walked by as many threads as the caller gives torch; the thread count is never changed.

*Units on the last axis* (transformer MLP neurons): edits in the canonical layout, rank-1 updates of a
Linear read-out at every position (:mod:`.walk`); their single-unit and noise passes use the batched hooks.

*Importance* (single-unit ablations) stays row-major, where row-sparse steps are faster (measured on the
MLP's 128 hidden.0 units, 10k images: 0.56 s row-major vs 0.98 s column-major dense); there a narrow
readout (<= ``_NARROW_OUT`` outputs) still runs as ``W h^T``. Dense ReLU chains (MLPs) walk their curves
with :class:`~.chainwalk.DenseChain` and ablate units in groups (:mod:`.singles`).

Assumptions (checked where possible -- by :func:`.probe.probe` --, else :class:`~.graph.TraceFailed` and
the hook path is used): one input tensor, a logits tensor output, examples treated independently in eval
mode (chunks and row subsets of a batch give the same per-example results), no in-place op in the cached
prefix on a value the rest read earlier, and a traced graph that reproduces the model's output on a probe
batch.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from tqdm.auto import tqdm

from singledir.reliance.fast.graph import (
    Split,
    TraceFailed,
    find_linear_chain,
    is_inplace,
    load_args,
    run_node,
    trace_with_markers,
)
from singledir.reliance.fast.chainwalk import DenseChain
from singledir.reliance.fast.layout import (
    Folded,
    buffer,
    colmajor_copy,
    foldable,
    is_colmajor,
    linear_colmajor,
    nbytes,
)
from singledir.reliance.fast.scoring import SCORE_RING, ScoreQueue, check_total, example_scores, score_logits
from singledir.reliance.fast.noise import noise_counts
from singledir.reliance.fast.singles import chain_singles
from singledir.reliance.fast.pool import chunk_workers, example_chunks, host_reads_free, map_chunks
from singledir.reliance.fast.probe import probe
from singledir.reliance.fast.walk import ChainUpdates, LevelWalk, SingleAblation
from singledir.reliance.inputs import ModelInput, check_finite
from singledir.reliance.plan import DEFAULT_MEMORY_BUDGET

__all__ = ["FastEvaluator"]

#: Linear layers with at most this many outputs run as a transposed GEMM even on row-major input.
_NARROW_OUT = 16


class FastEvaluator:
    """Cached prefix, incremental linear consumers, level walk on cache-sized chunks (this module's docstring)."""

    name = "fast"

    def __init__(self, model, batches, plans, memory_budget: int | None = None, progress: bool = False):
        self.model = model
        self.batches = batches
        self.plans = plans
        self.progress = progress
        self.budget = int(memory_budget or DEFAULT_MEMORY_BUDGET)
        self.feed = ModelInput(model)
        self.device = self.feed.device
        #: chunks walked at once (:mod:`.pool`): the caller's torch threads on the CPU, 1 on a GPU
        self.workers = chunk_workers(self.device)
        #: row-sparse steps (:mod:`.walk`) need host reads of the changed rows: only where they are free
        self.sparse_steps = host_reads_free(self.device)
        self.names = [p.name for p in plans]
        self.layer_index = {n: i for i, n in enumerate(self.names)}
        self.traced = trace_with_markers(model, self.names)
        out = self.traced.output.args[0]
        if not isinstance(out, fx.Node):
            raise TraceFailed("the traced forward does not return a single tensor")
        self.out_node = out
        self.split = Split.build(self.traced, self.names)
        self.inplace = {n for n in self.split.rest if is_inplace(n, self.traced)}
        self.linear_nodes = self._find_linear_nodes()
        self.relu_nodes = self._find_relu_nodes()
        self.out_features = {n: wb[0].shape[0] for n, wb in self.linear_nodes.items() if wb is not None}
        self.colmajor = False
        probe(self)
        self.chains = {}
        #: layers whose units are not on axis 1 (transformer MLP neurons): see the module docstring
        self.other_axis = {p.name for p in plans if p.unit_dim != 1}
        for m in self.split.markers:
            ch = find_linear_chain(m, self.traced)
            if ch is None:
                continue
            if self.split.marker_layer[m] in self.other_axis:
                if self._last_axis_chain_ok(ch):
                    self.chains[m] = ch
            elif self._chain_ok(ch):
                self.chains[m] = ch
        self.chain_consumers = {ch.consumer: ch for ch in self.chains.values()}
        # Fusions of column-major walks (:mod:`.layout`):
        # consumer -> its only user, an out-of-place ReLU: the ReLU is computed from the accumulator;
        # marker -> its only user, a Linear: the clamp is folded into the Linear's weights and bias.
        self.relu_of_consumer = {}
        for c in self.chain_consumers:
            users = list(c.users)
            if len(users) == 1 and users[0] in self.relu_nodes:
                self.relu_of_consumer[c] = users[0]
        self.folded_markers = {}
        for m in self.split.markers:
            if self.split.marker_layer[m] in self.other_axis:
                continue
            users = list(m.users)
            if len(users) == 1 and users[0] in self.linear_nodes and users[0].args[0] is m:
                self.folded_markers[m] = users[0]
        self.updates = ChainUpdates(self)
        self.dense_chain = DenseChain.build(self)  # MLP rests: the tight walk of :mod:`.chainwalk`
        self._prefix_cache: dict = {}
        self._prefix_bytes = 0
        self._prefix_lock = threading.Lock()

    # ---------------------------------------------------------------- set-up

    def run_rest(self, env, nodes, edits=None, noise_fn=None, bufs=None):
        """Compute ``nodes`` (graph order) into ``env``. Walks pass ``bufs``, their own output tensors:
        markers, ReLUs and column-major Linears then write into the node's buffer from the previous
        level instead of a new tensor, and column-major walks fold clamps into Linears (module
        docstring, item 4)."""
        fuse = bufs is not None and self.colmajor
        for n in nodes:
            if n in self.split.marker_layer:
                h = env[n.args[0]]
                li = self.layer_index[self.split.marker_layer[n]]
                if noise_fn is not None:
                    env[n] = noise_fn(li, h)
                else:
                    e = edits.get(li) if edits else None
                    if fuse and n in self.folded_markers and is_colmajor(h) and foldable(e):
                        env[n] = Folded(h, e)  # applied by its Linear (the next branch)
                    elif e is None:
                        env[n] = h
                    elif bufs is not None and getattr(e, "supports_out", False) and e.ablated:
                        env[n] = e(h, out=buffer(bufs, n, h))
                    else:
                        env[n] = e(h)
            elif n in self.inplace:
                env[n] = run_node(n, env, self.traced, first_arg=env[n.args[0]].clone())
            elif n in self.linear_nodes and self._transposed_gemm(n, env[n.args[0]]):
                w, b = self.linear_nodes[n] or (*load_args(n.args[1:], env), None)[:2]
                h = env[n.args[0]]
                if isinstance(h, Folded):
                    w, b, h = h.fold(w, b)
                out = None
                if bufs is not None:  # (out_features, n) row-major == the (n, out_features) result column-major
                    out = buffer(bufs, n, h, shape=(w.shape[0], h.shape[0]), stride=(h.shape[0], 1))
                env[n] = linear_colmajor(h, w, b, out=out)
            elif bufs is not None and n in self.relu_nodes:
                h = env[n.args[0]]
                env[n] = torch.clamp_min(h, 0, out=buffer(bufs, n, h))  # what torch.relu computes
            else:
                env[n] = run_node(n, env, self.traced)

    def _transposed_gemm(self, n, h) -> bool:
        """Whether Linear node ``n`` runs as ``W h^T + b`` on input ``h``: always for a column-major or
        folded input; for a row-major 2-D input when the layer is a narrow readout (at most
        ``_NARROW_OUT`` outputs: there the long-inner-dimension GEMM is ~2x faster than ``F.linear``
        on these CPUs, e.g. 181 vs 427 us for 2000 x 128 -> 10; equal for 128 -> 128)."""
        if isinstance(h, Folded) or is_colmajor(h):
            return True
        return (
            isinstance(h, torch.Tensor)
            and h.ndim == 2
            and h.shape[0] > 1
            and h.is_contiguous()
            and self.out_features.get(n, _NARROW_OUT + 1) <= _NARROW_OUT
        )

    def _plain_module(self, n, cls):
        """The module node ``n`` calls on one argument if it is exactly a ``cls`` and no hook (its own or
        global) would run around it -- then the engine may compute it its own way -- else None."""
        if n.op != "call_module" or len(n.args) != 1 or n.kwargs:
            return None
        if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
            return None
        m = self.traced.module(n.target)
        if type(m) is not cls or m._forward_hooks or m._forward_pre_hooks:
            return None
        return m

    def _find_linear_nodes(self) -> dict:
        """Rest nodes that are plain ``nn.Linear`` calls (-> (weight, bias)) or ``F.linear`` (-> None)."""
        found = {}
        for n in self.split.rest:
            m = self._plain_module(n, nn.Linear)
            if m is not None:
                found[n] = (m.weight, m.bias)
            elif n.op == "call_function" and n.target in (F.linear, torch._C._nn.linear) and len(n.args) in (2, 3) and not n.kwargs:
                found[n] = None
        return found

    def _find_relu_nodes(self) -> set:
        """Rest nodes that are out-of-place ReLUs (``nn.ReLU()``, ``F.relu``, ``torch.relu``, ``.relu()``)."""
        found = set()
        for n in self.split.rest:
            if len(n.args) != 1 or n in self.inplace:
                continue
            m = self._plain_module(n, nn.ReLU)
            if (
                (m is not None and not m.inplace)
                or (n.op == "call_function" and n.target in (F.relu, torch.relu) and not n.kwargs.get("inplace", False))
                or (n.op == "call_method" and n.target == "relu" and not n.kwargs)
            ):
                found.add(n)
        return found

    def _last_axis_chain_ok(self, ch) -> bool:
        """A marker with units on its last axis read directly by a Linear over that axis (the down-projection
        of a transformer MLP): updated per unit by ``h[..., u] (x) W[:, u]`` at every position."""
        shape = self.shapes.get(ch.marker)
        plan = self.plans[self.layer_index[self.split.marker_layer[ch.marker]]]
        if (shape is None or len(shape) < 3 or plan.unit_dim != len(shape) - 1 or ch.kind != "linear" or ch.ops
                or self.colmajor or ch.module.in_features != shape[-1]):
            return False
        ch.r, ch.units, ch.last_axis = 1, shape[-1], True
        return True

    def _chain_ok(self, ch) -> bool:
        c = self.shapes[ch.marker][1]
        inp = ch.ops[-1] if ch.ops else ch.marker
        shape = self.shapes.get(inp)
        if shape is None:
            return False
        if ch.kind == "linear":
            if len(shape) != 2 or shape[1] % c:
                return False
            r = shape[1] // c
            if not ch.flattened and r != 1:
                return False
            ch.r = r
        else:
            conv = ch.module
            if len(shape) != conv.weight.ndim or shape[1] != conv.in_channels:
                return False
            ch.r = 1
        ch.units = c
        return True

    def chunks(self):
        """``(start, x, y)`` example chunks of ``self.chunk`` consecutive examples (:func:`example_chunks`)."""
        return example_chunks(self.batches, self.chunk)

    def nchunks(self) -> int:
        n = sum(int(b[1].shape[0]) for b in self.batches)
        return max(1, math.ceil(n / self.chunk))

    def _colmajor_ok(self, node, v) -> bool:
        """A cached batch tensor (n, C) that the column-major layout applies to."""
        return (
            node in self.split.input_dependent
            and isinstance(v, torch.Tensor)
            and v.ndim == 2
            and v.shape[0] > 1
            and v.shape[1] > 1
            and v.is_floating_point()
        )

    def to_colmajor(self, cache: dict) -> dict:
        return {k: colmajor_copy(v) if self._colmajor_ok(k, v) else v for k, v in cache.items()}

    def cached_prefix(self, start: int, x) -> dict:
        """:meth:`_prefix`, column-major when the walks are."""
        env = self._prefix(start, x)
        return self.to_colmajor(env) if self.colmajor else env

    def _prefix(self, start: int, x) -> dict:
        """The prefix values (row-major) of the chunk starting at example ``start``.

        Kept across calls (``base`` then ``singles`` / ``noise`` / ``cumulative`` run the prefix once,
        not twice) while all chunks' prefix values fit in a quarter of ``memory_budget``.
        """
        hit = self._prefix_cache.get(start)
        if hit is not None and hit[0] == x.shape[0]:
            return dict(hit[1])
        cache = self.split.run_prefix(self.feed(x))
        size = sum(nbytes(v) for v in cache.values())
        with self._prefix_lock:  # chunks run in worker threads (:mod:`.pool`)
            if self._prefix_bytes + size <= self.budget // 4:
                self._prefix_cache[start] = (x.shape[0], cache)
                self._prefix_bytes += size
        return dict(cache)

    def base_env(self, start, x, colmajor: bool | None = None):
        """Prefix cache plus the unablated rest for the chunk ``x`` starting at example ``start``
        (column-major if ``self.colmajor``, or as ``colmajor`` says)."""
        env = self._prefix(start, x)
        if self.colmajor if colmajor is None else colmajor:
            env = self.to_colmajor(env)
        self.run_rest(env, self.split.rest)
        for m in self.split.markers:
            check_finite(env[m], f"the output of layer {self.split.marker_layer[m]!r}")
        return env

    # ---------------------------------------------------------------- evaluator interface
    def map_chunks(self, fn) -> list:
        """``fn(start, x, y)`` for every example chunk, ``self.workers`` chunks at once (:mod:`.pool`)."""
        return map_chunks(lambda c: fn(*c), self.chunks(), self.workers)

    def base(self):
        def one(start, x, y):
            env = self.base_env(start, x)
            return score_logits(env[self.out_node], y.to(self.device))

        parts = self.map_chunks(one)
        return sum(c for c, _ in parts), sum(lo for _, lo in parts)

    def cumulative(self, curves, watch=None):
        """``watch``: optional set of ``(curve index, level index)``; the logits of those levels are kept,
        concatenated over chunks, in ``self.watched`` (for :mod:`singledir.reliance.testing`). Chunks are
        walked ``self.workers`` at a time (:mod:`.pool`)."""
        watch = set(watch or ())
        total = self.nchunks() * sum(len(c.levels) for c in curves)
        with tqdm(total=total, desc="ablation", disable=not self.progress, leave=False) as bar:

            def one(start, x, y):
                res = [(np.zeros(len(c.levels), dtype=np.int64), np.zeros(len(c.levels))) for c in curves]
                watched = {key: [] for key in watch}
                y = y.to(self.device)
                base_env = self.base_env(start, x)
                base_scores = None  # per-example scores of the unablated chunk: for LevelWalk's row-sparse steps
                bufs: dict = {}  # reused by each curve's walk (a walk starts from base_env, never from these)
                queue = None
                if self.colmajor:  # no row-sparse steps: level totals suffice, scored in batches
                    out = base_env[self.out_node]
                    size = max(1, min(32, SCORE_RING // max(1, out.numel() * out.element_size())))
                    queue = ScoreQueue(y, out.shape[1], out.dtype, size)
                for ci, curve in enumerate(curves):
                    if queue is not None and self.dense_chain is not None and self.dense_chain.fits(curve.plans):
                        self.dense_chain.walk(curve, base_env, bufs, queue, watched, ci)
                        for i, c, lo in queue.flush():
                            res[ci][0][i] += c
                            res[ci][1][i] += lo
                    else:
                        if base_scores is None:
                            base_scores = example_scores(base_env[self.out_node], y)
                        walk = LevelWalk(self, base_env, curve.plans, bufs)
                        self._walk(ci, curve, walk, base_scores, y, queue, res[ci], watched)
                    bar.update(len(curve.levels))
                return res, watched

            parts = self.map_chunks(one)
        res = [(np.zeros(len(c.levels), dtype=np.int64), np.zeros(len(c.levels))) for c in curves]
        for part, _w in parts:  # summed in chunk order: the same totals for any number of workers
            for (c, lo), (pc, plo) in zip(res, part):
                c += pc
                lo += plo
        self.watched = {key: torch.cat([t for _p, w in parts for t in w[key]]) for key in watch}
        return res

    def _walk(self, ci, curve, walk, base_scores, y, queue, res, watched) -> None:
        """Walk one curve's levels on one chunk, adding each level's (correct, loss) to ``res``."""
        cv, lv = base_scores[0].clone(), base_scores[1].clone()
        k = 0
        pending = []  # per-level (correct, loss) tensors of row-major walks, read once at the end
        for i, level in enumerate(curve.levels):
            if level > k:
                r = walk.advance(curve.units_between(k, level))
                if queue is None:  # (column-major walks are scored by the queue below)
                    if r is None:
                        cv, lv = example_scores(walk.env[self.out_node], y)
                    elif r[0].numel():
                        c_r, l_r = example_scores(r[1], y.index_select(0, r[0]))
                        cv.index_copy_(0, r[0], c_r)
                        lv.index_copy_(0, r[0], l_r)
                k = level
            if (ci, i) in watched:
                watched[(ci, i)].append(walk.env[self.out_node].clone())
            if queue is not None:
                queue.push(walk.env[self.out_node], i)
            else:
                pending.append(torch.stack([cv.sum(dtype=torch.float64), lv.sum()]))
        if pending:  # one host read for the whole walk, not one per level
            for i, (c, lo) in enumerate(torch.stack(pending).tolist()):
                res[0][i] += int(c)
                res[1][i] += check_total(lo)
        if queue is not None:
            for i, c, lo in queue.flush():
                res[0][i] += c
                res[1][i] += lo

    def _hooks(self):
        """The batched-hook evaluator of the same model, data and plans (for units not on axis 1)."""
        from singledir.reliance.batched import HookEvaluator

        return HookEvaluator(self.model, self.batches, self.plans, self.budget, self.progress)

    def singles(self, plans, units, watch=None):
        """``watch``: optional set of indices into ``units`` whose logits are kept in ``self.watched``."""
        if self.other_axis and watch is None:
            return self._hooks().singles(plans, units)
        watch = set(watch or ())
        with tqdm(total=self.nchunks() * len(units), desc="importance", disable=not self.progress, leave=False) as bar:

            chain = self.dense_chain
            grouped = (chain is not None and self.sparse_steps and chain.fits(plans)  # host reads per group of units
                       and all(li in chain.stage_of for li, _u in units))

            def one(start, x, y):
                watched = {key: [] for key in watch}
                y = y.to(self.device)
                base_env = self.base_env(start, x, colmajor=False)  # row-major (this module's docstring)
                if grouped:  # units stacked in groups (:mod:`.singles`)
                    t = chain_singles(chain, base_env, plans, units, y, watch, watched)
                    bar.update(len(units))
                    return t.cpu().numpy(), watched
                base_cv, base_lv = example_scores(base_env[self.out_node], y)
                base = torch.stack([base_cv.sum(dtype=torch.float64), base_lv.sum()])
                single = SingleAblation(self, base_env, plans)
                totals = []  # per unit (correct, loss) as a device tensor: one host read per chunk
                for i, (li, u) in enumerate(units):
                    rows, out = single.run(li, u)
                    if rows is None:
                        cv, lv = example_scores(out, y)
                        t = torch.stack([cv.sum(dtype=torch.float64), lv.sum()])
                    else:
                        c_r, l_r = example_scores(out, y.index_select(0, rows))
                        t = base + torch.stack([
                            c_r.sum(dtype=torch.float64) - base_cv.index_select(0, rows).sum(dtype=torch.float64),
                            l_r.sum() - base_lv.index_select(0, rows).sum()])
                    totals.append(t)
                    if i in watched:
                        full = out.clone() if rows is None else base_env[self.out_node].clone().index_copy_(0, rows, out)
                        watched[i].append(full)
                    bar.update(1)
                return torch.stack(totals).cpu().numpy(), watched

            parts = self.map_chunks(one)
        correct = np.zeros(len(units), dtype=np.int64)
        loss = np.zeros(len(units))
        for t, _w in parts:
            correct += np.rint(t[:, 0]).astype(np.int64)
            loss += t[:, 1]
        check_total(float(loss.sum()))
        self.watched = {key: torch.cat([t for _t, w in parts for t in w[key]]) for key in watch}
        return correct, loss

    def noise(self, plan, watch=None):
        """Noise curves (:mod:`.noise`); ``watch``: ``(repeat, scale index)`` pairs kept in ``self.watched``."""
        if self.other_axis and watch is None:
            return self._hooks().noise(plan)
        return noise_counts(self, plan, watch)
