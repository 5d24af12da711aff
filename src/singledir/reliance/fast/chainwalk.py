"""Level walks of dense ReLU chains (MLP rests): the walk of :mod:`.walk` with its per-level bookkeeping
done once per chunk, so that a level costs the ops it needs and little Python.

Offers :class:`DenseChain` (``DenseChain.build(ev)``: the chain of a :class:`~.evaluator.FastEvaluator`, or
None when its rest is not one) and its :meth:`DenseChain.walk` (one curve on one chunk).

Which rests. The rest after the first analysed layer is a chain of *stages*: an ``nn.Linear`` reading a
marker (read by nothing else: its chain consumer, :mod:`.walk`) or, for a layer not analysed, the previous
ReLU directly; then -- except for the last stage, whose Linear is the output -- an out-of-place ReLU read
only by the next stage. E.g. the 784-128-128-10 MLP on ``hidden.0`` and ``hidden.1``: marker 0 -> Linear ->
ReLU -> marker 1 -> Linear (logits). Each analysed layer has one marker and unit clamps (no random basis),
the activations are column-major (:mod:`.layout`), on the CPU (GPUs keep :class:`~.walk.LevelWalk`).

The arithmetic is that of :class:`~.walk.LevelWalk` on such a rest (the same updates, in the same float
types, each value rounded the same number of times):

- units newly ablated in the lowest changed layer update its consumer incrementally by rank-1 terms,
  float32 terms re-anchored to a float64 sum every :data:`~.layout.ANCHOR_EVERY` updates (unless the layer
  becomes fully ablated: then the consumer is recomputed, all weights folded to zero, giving the bias);
- every later stage is recomputed: ReLU into a buffer, then its Linear with the clamp folded into the
  weights (zeroed columns of the ablated units; a fill's terms in the bias, :class:`~.layout.Folded`);
  the output Linear writes into the score queue's next slot (:meth:`~.scoring.ScoreQueue.slot`), so a
  level's logits are not copied to be scored (A/B on the MLP curve: 0.677 -> 0.598 s of CPU).

Why it is faster. :class:`~.walk.LevelWalk` re-derives at every level which nodes change, builds edits,
folds weights anew and looks up buffers: ~250 us of Python per level and chunk on this project's CPU,
against ~100-200 us of arithmetic for a 2500-example chunk of the MLP (measured: the full 257-level MLP
curve on 64 examples took 80 ms, i.e. almost all overhead). Here the walk keeps, per chunk, the transposed
``(units, n)`` activations, their per-unit rows (views, made once), the folded weights (a column zeroed
per ablated unit) and the float64 consumer weights per unit: a level is the rank-1 update, the ReLU and
the GEMM of each stage after it, in C.
"""

from __future__ import annotations

import torch

from singledir.reliance.fast.layout import AnchoredSum, buffer

__all__ = ["DenseChain"]


class _Stage:
    """Linear ``lin`` (weight (out, C), bias) reading marker ``marker`` of layer index ``li`` (both None when
    it reads the previous stage's ReLU directly: a layer not analysed); ``relu``: the ReLU after it (None
    for the output Linear)."""

    __slots__ = ("marker", "li", "lin", "relu", "wt32", "wt64", "nwt32", "nwt64", "bias", "units")

    def __init__(self, marker, li, lin, relu, weight, bias):
        self.marker, self.li, self.lin, self.relu = marker, li, lin, relu
        w = weight.detach()
        self.units = int(w.shape[1])
        self.wt32 = w.t().contiguous()  # (C, out): row u = the consumer's weights of unit u
        self.wt64 = self.wt32.double()
        self.nwt32, self.nwt64 = -self.wt32, -self.wt64  # zero clamps: (0 - h) w == h (-w), exactly
        self.bias = None if bias is None else bias.detach()


class _Anchored(AnchoredSum):
    """A consumer's transposed output ``(out, n)`` updated by rank-1 terms: :class:`~.layout.AnchoredSum`
    in the transposed layout, on buffers the chain keeps per walk."""

    transposed = True

    def __init__(self, work: torch.Tensor, exact: torch.Tensor):
        self._set(work, exact)


class DenseChain:
    """The stages of an evaluator's rest (module docstring); :meth:`walk` runs one curve on one chunk."""

    def __init__(self, ev, stages: list):
        self.ev, self.stages = ev, stages
        self.stage_of = {st.li: i for i, st in enumerate(stages) if st.li is not None}

    @classmethod
    def build(cls, ev):
        """The chain of ``ev``'s rest, or None when the rest is not one (module docstring)."""
        if not ev.colmajor or ev.inplace or ev.other_axis or ev.device.type != "cpu":
            return None
        rest = list(ev.split.rest)
        stages, i, prev = [], 0, None
        while i < len(rest):
            m, li = rest[i], None
            name = ev.split.marker_layer.get(m)
            if name is not None:  # an analysed layer's marker, read only by its consumer Linear
                ch = ev.chains.get(m)
                if ch is None or len(ev.traced.markers.get(name, ())) != 1 or m.args[0] is not prev and prev is not None:
                    return None
                if ch.kind != "linear" or ch.r != 1 or ch.ops or ch.last_axis or ev.folded_markers.get(m) is not ch.consumer:
                    return None
                li = ev.layer_index[name]
                i += 1
            elif prev is None:
                return None
            lin = rest[i] if i < len(rest) else None
            wb = ev.linear_nodes.get(lin)
            if wb is None or wb[0].dtype != torch.float32 or (li is None and lin.args[0] is not prev):
                return None
            if i + 1 == len(rest):  # the output Linear
                if lin is not ev.out_node:
                    return None
                stages.append(_Stage(m if li is not None else None, li, lin, None, *wb))
                break
            relu = rest[i + 1]
            if relu not in ev.relu_nodes or relu.args[0] is not lin or len(lin.users) != 1 or len(relu.users) != 1:
                return None
            stages.append(_Stage(m if li is not None else None, li, lin, relu, *wb))
            prev, i = relu, i + 2
        if not stages or stages[-1].relu is not None or sum(s.li is not None for s in stages) != len(ev.names):
            return None
        return cls(ev, stages)

    def fits(self, plans) -> bool:
        """Whether the curve's layer plans are unit clamps on axis 1 (no random basis)."""
        return all(p.basis is None and p.unit_dim == 1 for p in plans)

    def walk(self, curve, base_env: dict, bufs: dict, queue, watched, ci: int) -> None:
        """Walk ``curve``'s levels on the chunk of ``base_env`` (column-major), pushing each level's logits
        to ``queue`` (:class:`~.scoring.ScoreQueue`, keyed by level index; the caller flushes it) and keeping
        those of ``watched`` levels."""
        _ChainWalk(self, base_env, curve.plans, bufs, queue).run(curve, watched, ci)


class _ChainWalk:
    """One curve's walk on one chunk: per stage the transposed input ``h`` (C, n), consumer output ``z``
    (out, n), folded weights and anchored accumulator."""

    def __init__(self, dc: DenseChain, base_env: dict, plans, bufs: dict, queue):
        self.dc, self.bufs, self.queue = dc, bufs, queue
        st = dc.stages
        self.h = [base_env[s.lin.args[0] if s.marker is None else s.marker.args[0]].t() for s in st]
        self.z = [base_env[s.lin].t() for s in st]
        self.owned = [False] * len(st)  # z[i] is this walk's buffer (else the base env's tensor)
        self.rows = [None if s.li is None else list(h.unbind(0)) for s, h in zip(st, self.h)]
        self.acc: list = [None] * len(st)
        self.counts = [0] * len(st)
        self.values = [None if s.li is None else plans[s.li].values.tolist() for s in st]
        # (C, out) weights with the ablated units' rows zeroed (a copy only where units are ablated)
        self.fold_t = [s.wt32 if s.li is None else buffer(bufs, ("wk", i), s.wt32).copy_(s.wt32) for i, s in enumerate(st)]
        self.fold_rows = [None if s.li is None else list(w.unbind(0)) for s, w in zip(st, self.fold_t)]
        self.fill = [None] * len(st)  # float32 (C,) clamp values of ablated units with a non-zero clamp
        self.fold_w = [w.t() for w in self.fold_t]  # (out, C) views: zeroing a row of fold_t shows here
        self.fbias = [None if s.bias is None else s.bias.unsqueeze(1) for s in st]  # bias + W fill, (out, 1)
        self.hown = [False] * len(st)  # h[i] is this walk's ReLU buffer
        self.slot = None  # the queue slot holding the logits the last readout wrote

    def run(self, curve, watched, ci: int) -> None:
        k, queue = 0, self.queue
        for i, level in enumerate(curve.levels):
            in_slot = False
            if level > k:
                self.advance(curve.units_between(k, level))
                in_slot = self.z[-1] is self.slot
                k = level
            if (ci, i) in watched:
                watched[(ci, i)].append(self.z[-1].t().clone())
            if in_slot:  # the readout was computed in the queue's slot
                queue.commit(i)
            else:
                queue.push(self.z[-1].t(), i)

    def _ablate(self, i: int, units) -> None:
        """Fold the clamps of ``units`` of stage ``i`` into its Linear's weights / bias."""
        rows, vals, s = self.fold_rows[i], self.values[i], self.dc.stages[i]
        fill_changed = False
        for u in units:
            rows[u].zero_()
            if vals[u] != 0.0:
                if self.fill[i] is None:
                    self.fill[i] = torch.zeros(s.units, dtype=s.wt32.dtype, device=s.wt32.device)
                self.fill[i][u] = vals[u]
                fill_changed = True
        if fill_changed:
            fb = s.wt32.t() @ self.fill[i]
            self.fbias[i] = (fb if s.bias is None else s.bias + fb).unsqueeze(1)
        self.counts[i] += len(units)

    def advance(self, new: dict) -> None:
        dc, stages = self.dc, self.dc.stages
        i0 = len(stages)
        for li, units in new.items():
            i = dc.stage_of[li]
            self._ablate(i, units)
            i0 = min(i0, i)
        s = stages[i0]
        if self.counts[i0] < s.units:  # incremental update of stage i0's consumer
            acc = self.acc[i0]
            if acc is None:
                acc = self.acc[i0] = self._anchored(i0)
            rows, vals = self.rows[i0], self.values[i0]
            for u in new[s.li]:
                c = vals[u]
                if c == 0.0:
                    acc.add(rows[u], s.nwt64[u], s.nwt32[u])
                else:
                    acc.add(torch.rsub(rows[u], c), s.wt64[u], s.wt32[u])
        else:  # fully ablated: recomputed (all weights folded to zero: the bias, as the reference)
            self._linear(i0)
        for j in range(i0 + 1, len(stages)):
            hb = self.h[j]
            if not self.hown[j]:
                hb = self.h[j] = buffer(self.bufs, ("h", j), hb)
                self.rows[j] = None if stages[j].li is None else list(hb.unbind(0))
                self.hown[j] = True
            torch.clamp_min(self.z[j - 1], 0, out=hb)
            self._linear(j)

    def _anchored(self, i: int) -> _Anchored:
        z = self.z[i]
        if not self.owned[i]:
            z = self.z[i] = buffer(self.bufs, ("z", i), z).copy_(z)
            self.owned[i] = True
        return _Anchored(z, buffer(self.bufs, ("exact", i), z, dtype=torch.float64))

    def _linear(self, i: int) -> None:
        """Stage ``i``'s Linear on its current input with the folded weights (its accumulator restarts)."""
        if i + 1 == len(self.dc.stages):  # the logits: straight into the score queue's next slot
            z = self.slot = self.queue.slot()
        else:
            z = self.z[i] if self.owned[i] else buffer(self.bufs, ("z", i), self.z[i])
        b = self.fbias[i]
        if b is None:
            torch.mm(self.fold_w[i], self.h[i], out=z)
        else:
            torch.addmm(b, self.fold_w[i], self.h[i], out=z)
        self.z[i], self.owned[i], self.acc[i] = z, z is not self.slot, None
