"""The fx path's level walk: consumers of a layer updated incrementally, one step per set of newly ablated units.

Offers:

- :class:`ChainUpdates` -- per evaluator: consumer weights per unit / direction (cached), the chain inputs
  of newly ablated units and the consumer changes they cause, and which nodes a step must recompute
  (cached per kind of step).
- :class:`LevelWalk` -- one curve's walk over increasing levels on one example chunk: ``advance(new)``.
- :class:`SingleAblation` -- one unit ablated alone, starting from the chunk's unablated state
  (importance): ``run(layer_index, unit)``.
- :class:`RowView` -- the env of a row-sparse step (new values for a subset of rows).

Why incremental updates are exact. If a marker feeds only channel-separable linear ops (average pools,
flatten, identity) ending in one ``nn.Linear`` / ``nn.ConvNd`` (a *chain*, :func:`.graph.find_linear_chain`),
the consumer's output is linear in the layer's units: ``out = b + sum_u W_u g_u(h_u)``. Clamping unit u to
c_u changes it by exactly ``W_u g_u(c_u - h_u)``; so going from level k-1 to k the newly ablated units'
deltas are added to an accumulator instead of recomputing the consumer (and everything in between).
Products of float32 numbers are exact in float64, so a float64 accumulator carries the exact sum up to
one rounding per addition (~1e-16 relative) -- far below the float32 rounding of the reference's own
matmul (column-major walks keep a float32 copy re-anchored to it, :class:`.layout.AnchoredSum`). When a
layer becomes *fully* ablated the consumer is recomputed from the clamped tensor instead (exactly the
reference's value: all-zero inputs give the bias bit for bit). A random-basis "unit" is a direction q:
its coordinate is ``q . h`` and its weight ``W q``, the same update. The update is only used when nothing
upstream of the marker changed in the same step; otherwise the marker and everything after it are
recomputed and the accumulator restarts from the new value.

Why walks. For each example chunk, each curve walks its levels in increasing k, recomputing only the
nodes whose inputs changed. Chunks are sized so that the recomputed state stays cache-sized (these CPUs
are memory-bandwidth bound: stacking hundreds of levels along the batch made every elementwise op ~10x
slower than walking levels on cache-resident chunks).

Row-sparse steps: clamping unit u changes nothing for examples whose ``h_u`` already equals the clamp
value (post-ReLU zeros under a zero clamp); examples are independent in eval mode, so the nodes downstream
are recomputed for the changed rows only (bitwise the same per-row results). Walks use them only when at
most 30% of the rows change (they must write the rows back) and never column-major; single-unit
ablations up to 70%. Only where host reads are free (the CPU, :func:`~.pool.host_reads_free`): finding the
changed rows (``nonzero``) would wait for the GPU at every step.
"""

from __future__ import annotations

from collections import ChainMap

import torch
import torch.nn.functional as F

from singledir.reliance.fast.graph import run_node
from singledir.reliance.fast.layout import AnchoredSum, buffer

__all__ = ["ChainUpdates", "LevelWalk", "RowView", "SingleAblation"]

#: Row-sparse steps when at most this fraction of the chunk's examples change: walks must write the
#: changed rows back (pays off only when few rows change), single-unit ablations need not.
_SPARSE_WALK = 0.3
_SPARSE_SINGLE = 0.7


class RowView:
    """Env for recomputing nodes on a subset of rows: new values go to ``sub``; inputs from outside are
    gathered from ``env`` (batch tensors) or passed as they are (parameters, constants)."""

    def __init__(self, env, rows, batch_nodes):
        self.env, self.rows, self.batch_nodes = env, rows, batch_nodes
        self.sub: dict = {}

    def __getitem__(self, node):
        v = self.sub.get(node)
        if v is None:
            v = self.env[node]
            if node in self.batch_nodes and isinstance(v, torch.Tensor):
                v = self.sub[node] = v.index_select(0, self.rows)
        return v

    def __setitem__(self, node, value):
        self.sub[node] = value

    def get(self, node, default=None):
        return self.sub.get(node, default)



class ChainUpdates:
    """Incremental-update arithmetic of one :class:`~.evaluator.FastEvaluator` (weights cached per plan)."""

    def __init__(self, ev):
        self.ev = ev
        self._weights: dict = {}
        self._todo_cache: dict = {}
        self._bases: dict = {}

    def weight(self, ch, plan):
        """Consumer weights per unit/direction: float64 (units, R, out) for Linear, float32 for conv."""
        key = (ch.consumer, id(plan))
        w = self._weights.get(key)
        if w is None:
            wt = ch.module.weight.detach()
            if ch.kind == "linear":
                w = wt.double().reshape(wt.shape[0], ch.units, ch.r)  # (out, C, R)
                if plan.basis is not None:
                    w = torch.einsum("ocr,cd->odr", w, plan.basis.to(w.device))
                w = w.permute(1, 2, 0).contiguous()  # (C, R, out)
            else:
                w = wt
                if plan.basis is not None:
                    w = torch.einsum("oc...,cd->od...", wt.double(), plan.basis.to(wt.device)).to(wt.dtype)
                w = w.transpose(0, 1).unsqueeze(2).contiguous()  # (C, out, 1, k...)
            self._weights[key] = (w, plan)  # keep plan alive so id() stays unique
            return w
        return w[0]

    def weight32(self, ch, plan, w):
        """``w`` (float64 Linear weights per unit) in float32, cached."""
        key = (ch.consumer, id(plan), "f32")
        hit = self._weights.get(key)
        if hit is None:
            hit = self._weights[key] = (w.to(ch.module.weight.dtype), plan)
        return hit[0]

    def coord(self, h, plan, u):
        """(value - clamp) of unit/direction ``u`` of ``h``, shape (n, 1, ...), before the chain ops; for
        units on the last axis (``plan.unit_dim``) shape (n, *positions, 1)."""
        if plan.unit_dim == h.ndim - 1 and h.ndim > 2:
            if plan.basis is None:
                return plan.values[u].to(h.dtype) - h[..., u : u + 1]
            q = plan.basis[:, u].to(dtype=h.dtype, device=h.device)
            return plan.direction_value(u) - (h @ q).unsqueeze(-1)
        if plan.basis is None:
            return plan.values[u].to(h.dtype) - h[:, u : u + 1]
        key = (id(plan), h.dtype, h.device)
        basis = self._bases.get(key)
        if basis is None:  # sent to the device once per plan, not per unit
            basis = self._bases[key] = (plan.basis.to(dtype=h.dtype, device=h.device), plan)
        q = basis[0][:, u]
        a = (h.movedim(1, -1) @ q).unsqueeze(1)
        return plan.direction_value(u) - a

    def chain_inputs(self, ch, env, plan, units):
        """``[(u, d)]``: the chain ops applied to (clamp - value) of each unit, shape (n, ...)."""
        h = env[ch.marker.args[0]]
        out = []
        for u in units:
            d = self.coord(h, plan, u)
            for op in ch.ops:
                d = run_node(op, env, self.ev.traced, first_arg=d)
            out.append((u, d))
        return out

    def delta(self, ch, w, u, d):
        """The consumer-output change (float64 for Linear) caused by chain input ``d`` of unit ``u``."""
        if ch.last_axis:  # (n, *P, 1) x (out,) -> (n, *P, out)
            return d.to(torch.float64) * w[u, 0]
        if ch.kind == "linear":
            dd = d.reshape(d.shape[0], -1).to(torch.float64)
            return torch.outer(dd[:, 0], w[u, 0]) if ch.r == 1 else dd @ w[u]
        conv = ch.module
        fconv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[d.ndim]
        return fconv(d, w[u], None, conv.stride, conv.padding, conv.dilation)

    def add_dense(self, acc, ch, w, ds, inplace: bool):
        """``acc`` plus the deltas of ``ds`` over all rows (in place if ``inplace``)."""
        for u, d in ds:
            if ch.last_axis:  # rank-1 update of every position: acc (n, *P, out) viewed as (n * P, out)
                if not acc.is_contiguous():
                    acc, inplace = acc.contiguous(), True
                v = d.reshape(-1).to(torch.float64)
                flat = acc.view(-1, acc.shape[-1])
                if inplace:
                    flat.addr_(v, w[u, 0])
                else:
                    acc = torch.addr(flat, v, w[u, 0]).view(acc.shape)
            elif ch.kind == "linear" and ch.r == 1:
                v = d.reshape(-1).to(torch.float64)
                acc = acc.addr_(v, w[u, 0]) if inplace else torch.addr(acc, v, w[u, 0])
            else:
                delta = self.delta(ch, w, u, d)
                acc = acc.add_(delta) if inplace else acc + delta
            inplace = True  # acc is our own tensor from here on
        return acc

    def todo(self, inc, dirty):
        """Nodes to recompute (graph order) after updating ``inc`` incrementally and ``dirty`` markers,
        and whether they can be recomputed on a subset of rows (all outside inputs are batch tensors)."""
        key = (inc, dirty)
        hit = self._todo_cache.get(key)
        if hit is None:
            changed = {self.ev.chains[m].consumer for m in inc}
            set_by_acc = set(changed)
            todo = []
            for n in self.ev.split.rest:
                if n in set_by_acc:
                    continue
                if n in dirty or any(a in changed for a in n.all_input_nodes):
                    todo.append(n)
                    changed.add(n)
            row_safe = True
            for n in todo:
                for a in n.all_input_nodes:
                    if a in changed or a not in self.ev.split.input_dependent:
                        continue
                    shape = self.ev.shapes.get(a)
                    if shape is None or not shape or shape[0] != self.ev.probe_n:
                        row_safe = False
            hit = self._todo_cache[key] = (todo, row_safe)
        return hit

    def classify(self, new: dict, counts: dict, plans) -> tuple[list, list, list, bool]:
        """For newly ablated units ``new`` ({layer index: units}): ``(inc, dirty, todo, row_safe)``.

        ``inc``: ``(marker, chain, layer index, units)`` updated incrementally (a chain, the layer not
        fully ablated, nothing above it changed in this step); ``dirty``: markers recomputed instead;
        ``todo``: the nodes to recompute; ``row_safe``: whether they can run on a subset of rows.
        """
        ev = self.ev
        changed_layers = {ev.names[li] for li in new}
        inc, dirty = [], []
        for li, units in new.items():
            full = counts[li] >= plans[li].units
            for m in ev.traced.markers[ev.names[li]]:
                ch = ev.chains.get(m)
                if ch is not None and not full and not (ev.split.upstream_layers[m] & changed_layers):
                    inc.append((m, ch, li, units))
                else:
                    dirty.append(m)
        todo, row_safe = self.todo(frozenset(m for m, *_ in inc), frozenset(dirty))
        return inc, dirty, todo, row_safe


def _changed_rows(ds) -> tuple[torch.Tensor, int]:
    """The examples whose chain input is non-zero for some unit of ``ds`` (the others do not change)."""
    n = ds[0][1].shape[0]
    nz = None
    for _u, d in ds:
        z = d.reshape(n, -1).ne(0).any(1)
        nz = z if nz is None else nz | z
    return nz.nonzero().squeeze(1), n


class LevelWalk:
    """One curve's walk over increasing levels on one example chunk.

    ``env`` holds the chunk's current node values (its output node: the current logits). The walk owns
    float64 accumulators (or :class:`~.layout.AnchoredSum` in column-major walks), the set of nodes whose
    tensors it may write into, and ``bufs``, buffers it shares with later walks over the same chunk
    (a walk starts from the cached base env, never from these).
    """

    def __init__(self, ev, base_env: dict, plans, bufs: dict):
        self.ev, self.up, self.plans, self.bufs = ev, ev.updates, plans, bufs
        self.env = dict(base_env)
        self.accs: dict = {}
        self.owned: set = set()
        self.edits = {li: p.walker(ev.device) for li, p in enumerate(plans)}
        self.counts = {li: 0 for li in range(len(ev.names))}

    def advance(self, new: dict):
        """Ablate ``new`` ({layer index: units}) on top of the units ablated so far.

        Returns None after a dense step, or ``(rows, output_rows)`` after a row-sparse step (only the
        examples ``rows`` changed; their new values are also written into ``env``).
        """
        ev, up, env, plans = self.ev, self.up, self.env, self.plans
        for li, us in new.items():
            self.edits[li].add(us)
            self.counts[li] = len(self.edits[li].ablated)
        inc, dirty, todo, row_safe = up.classify(new, self.counts, plans)
        inputs = {}
        if len(inc) == 1 and not dirty and row_safe and not ev.colmajor and ev.sparse_steps:
            m, ch, li, units = inc[0]
            ds = inputs[m] = up.chain_inputs(ch, env, plans[li], units)
            rows, n = _changed_rows(ds)
            if rows.numel() <= _SPARSE_WALK * n:
                return self._sparse(ch, plans[li], ds, rows, todo)
        fused = set()
        for m, ch, li, units in inc:
            c = ch.consumer
            ds = inputs.get(m) or up.chain_inputs(ch, env, plans[li], units)
            w = up.weight(ch, plans[li])
            anchored = ev.colmajor and ch.kind == "linear" and ch.r == 1 and not ch.last_axis
            if anchored:
                acc = self.accs.get(c)
                if acc is None:
                    acc = self.accs[c] = AnchoredSum(env[c], self.bufs, c)
                w32 = up.weight32(ch, plans[li], w)
                for u, d in ds:
                    acc.add(d.reshape(-1), w[u, 0], w32[u, 0])
                acc = acc.work
            else:
                acc = self.accs.get(c)
                if acc is None:
                    acc = env[c].to(torch.float64, copy=True)
                acc = self.accs[c] = up.add_dense(acc, ch, w, ds, inplace=True)
            r = ev.relu_of_consumer.get(c) if ev.colmajor else None
            if r is not None and r in todo:
                # The ReLU straight from the accumulator; the pre-activation (read by this ReLU only)
                # is not kept. Bitwise what the ReLU node computes on it.
                out = buffer(self.bufs, r, acc, dtype=ev.dtypes[c])
                env[r] = torch.clamp_min(acc, 0, out=out) if acc.dtype == out.dtype else out.copy_(acc).clamp_min_(0)
                env.pop(c, None)
                fused.add(r)
            elif anchored:
                env[c] = acc  # the accumulator's own float32 tensor, updated in place by later steps
            else:
                env[c] = buffer(self.bufs, c, env[c]).copy_(acc)
            self.owned.discard(c)
        ev.run_rest(env, [n for n in todo if n not in fused] if fused else todo, edits=self.edits, bufs=self.bufs)
        for n in todo:
            if n in ev.chain_consumers:
                self.accs.pop(n, None)
            self.owned.discard(n)
        return None

    def _sparse(self, ch, plan, ds, rows, todo):
        ev, env = self.ev, self.env
        if rows.numel() == 0:  # every example already sits at the clamp value: nothing changes
            return rows, env[ev.out_node][:0]
        c = ch.consumer
        w = self.up.weight(ch, plan)
        acc = self.accs.get(c)
        if acc is None:
            acc = self.accs[c] = env[c].to(torch.float64, copy=True)
        for u, d in ds:
            acc.index_add_(0, rows, self.up.delta(ch, w, u, d.index_select(0, rows)).to(acc.dtype))
        view = RowView(env, rows, ev.split.input_dependent)
        view[c] = acc.index_select(0, rows).to(env[c].dtype)
        ev.run_rest(view, todo, edits=self.edits)
        for node in [c, *todo]:  # write the changed rows back (into tensors this walk owns)
            t = env[node]
            if node not in self.owned:
                t = env[node] = t.clone()
                self.owned.add(node)
            t.index_copy_(0, rows, view.sub[node])
        for n in todo:
            if n in ev.chain_consumers:
                self.accs.pop(n, None)
        out = view.sub.get(ev.out_node)
        if out is None:  # the output does not depend on this layer
            return rows[:0], env[ev.out_node][:0]
        return rows, out


class SingleAblation:
    """Units ablated one at a time, each from the chunk's unablated state ``base_env`` (never modified).

    One update from the base state is done in the model's dtype: it is rounded once, as exact as that
    dtype allows (float64 accumulation only matters for the many updates of a walk); a float64 copy would
    cost a 2x larger fresh tensor per unit. Non-rank-1 updates share float64 base accumulators.
    """

    def __init__(self, ev, base_env: dict, plans):
        self.ev, self.up, self.plans, self.base_env = ev, ev.updates, plans, base_env
        self.base_accs: dict = {}

    def run(self, li: int, u: int):
        """Ablate unit ``u`` of layer ``li`` alone: ``(None, logits)`` after a dense step, or
        ``(rows, output_rows)`` after a row-sparse one (only the examples ``rows`` changed)."""
        ev, up, plans = self.ev, self.up, self.plans
        env = ChainMap({}, self.base_env)
        edits = {li: plans[li].edit([u])}
        counts = {j: 0 for j in range(len(plans))}
        counts[li] = 1
        inc, dirty, todo, row_safe = up.classify({li: [u]}, counts, plans)
        inputs = {}
        if len(inc) == 1 and not dirty and row_safe and ev.sparse_steps:
            m, ch, lj, units = inc[0]
            ds = inputs[m] = up.chain_inputs(ch, env, plans[lj], units)
            rows, n = _changed_rows(ds)
            if rows.numel() <= _SPARSE_SINGLE * n:
                return self._sparse(env, edits, ch, plans[lj], ds, rows, todo)
        for m, ch, lj, units in inc:
            c = ch.consumer
            ds = inputs.get(m) or up.chain_inputs(ch, env, plans[lj], units)
            w = up.weight(ch, plans[lj])
            if ch.kind == "linear" and ch.r == 1 and len(ds) == 1:
                uu, d = ds[0]
                acc = torch.addr(env[c], d.reshape(-1), up.weight32(ch, plans[lj], w)[uu, 0])
            else:
                acc0 = self.base_accs.get(c)
                if acc0 is None:
                    acc0 = self.base_accs[c] = env[c].to(torch.float64, copy=True)
                acc = up.add_dense(acc0, ch, w, ds, inplace=False)
            env[c] = acc if acc.dtype == env[c].dtype else acc.to(env[c].dtype, copy=True)
        ev.run_rest(env, todo, edits=edits)
        return None, env[ev.out_node]

    def _sparse(self, env, edits, ch, plan, ds, rows, todo):
        ev = self.ev
        if rows.numel() == 0:  # every example already sits at the clamp value: nothing changes
            return rows, env[ev.out_node][:0]
        c = ch.consumer
        w = self.up.weight(ch, plan)
        dtype = env[c].dtype
        acc_rows = env[c].index_select(0, rows)
        for u, d in ds:
            d_rows = d.index_select(0, rows)
            if ch.kind == "linear" and ch.r == 1:
                acc_rows.addr_(d_rows.reshape(-1), self.up.weight32(ch, plan, w)[u, 0])
            else:
                acc_rows += self.up.delta(ch, w, u, d_rows).to(dtype)
        view = RowView(env, rows, ev.split.input_dependent)
        view[c] = acc_rows.to(dtype)
        ev.run_rest(view, todo, edits=edits)
        out = view.sub.get(ev.out_node)
        if out is None:  # the output does not depend on this layer
            return rows[:0], env[ev.out_node][:0]
        return rows, out
