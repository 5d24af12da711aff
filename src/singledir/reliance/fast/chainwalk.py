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
  weights (zeroed columns of the ablated units; a fill's terms in the bias, :class:`~.layout.Folded`),
  on the *live rows* only: the units of an analysed layer after the first are ordered by when the curve
  ablates them, so the units not yet ablated are a leading block of rows that the ReLU, the Linear and
  the rank-1 updates of the stage before read and write (:class:`_ChainWalk`; the Linear then sums its
  live terms in another order, a float-rounding difference);
  the output Linear writes into the score queue's next slot (:meth:`~.scoring.ScoreQueue.slot`), so a
  level's logits are not copied to be scored (A/B on the MLP curve: 0.677 -> 0.598 s of CPU); so does a
  rank-1 update of the logits (``torch.addr(previous level's slot, ..., out=next slot)``: the same sums).

Why it is faster. :class:`~.walk.LevelWalk` re-derives at every level which nodes change, builds edits,
folds weights anew and looks up buffers: ~250 us of Python per level and chunk on this project's CPU,
against ~100-200 us of arithmetic for a 2500-example chunk of the MLP (measured: the full 257-level MLP
curve on 64 examples took 80 ms, i.e. almost all overhead). Here the walk keeps, per chunk, the transposed
``(units, n)`` activations, their per-unit rows (views, made once), the folded weights (a column zeroed
per ablated unit) and the float64 consumer weights per unit: a level is the rank-1 update, the ReLU and
the GEMM of each stage after it, in C. Live rows: on the MLP curve over both layers (10k images) half the
hidden.1 rows are ablated on average; in two interleaved A/B runs (2 threads, 2500-example chunks) the
whole curve took 0.45 / 0.40 s of CPU instead of 0.53 / 0.44 s.
"""

from __future__ import annotations

import torch

from singledir.reliance.fast.layout import AnchoredSum, buffer

__all__ = ["DenseChain"]


class _Stage:
    """Linear ``lin`` (weight (out, C), bias) reading marker ``marker`` of layer index ``li`` (both None when
    it reads the previous stage's ReLU directly: a layer not analysed); ``relu``: the ReLU after it (None
    for the output Linear)."""

    __slots__ = ("marker", "li", "lin", "relu", "wt32", "wt64", "nwt32", "nwt64", "wt64_rows", "nwt64_rows", "bias",
                 "units")

    def __init__(self, marker, li, lin, relu, weight, bias):
        self.marker, self.li, self.lin, self.relu = marker, li, lin, relu
        w = weight.detach()
        self.units = int(w.shape[1])
        self.wt32 = w.t().contiguous()  # (C, out): row u = the consumer's weights of unit u
        self.wt64 = self.wt32.double()
        self.nwt32, self.nwt64 = -self.wt32, -self.wt64  # zero clamps: (0 - h) w == h (-w), exactly
        # the float64 terms' rows, made once (views of 128 rows cost ~0.2 ms; walks of 33 levels take ~2 ms)
        self.wt64_rows, self.nwt64_rows = list(self.wt64.unbind(0)), list(self.nwt64.unbind(0))
        self.bias = None if bias is None else bias.detach()


class _Anchored(AnchoredSum):
    """A consumer's transposed output ``(out, n)`` updated by rank-1 terms: :class:`~.layout.AnchoredSum`
    in the transposed layout, on buffers the chain keeps per walk, over its first ``rows`` rows (the
    outputs whose units are not yet ablated: see :class:`_ChainWalk`)."""

    transposed = True

    def __init__(self, work: torch.Tensor, exact: torch.Tensor, rows: int, order: torch.Tensor | None):
        self._set(work[:rows], exact[:rows])
        self.order = order  # the float64 terms' entries come in the stage's unit order: put in live order


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
        _ChainWalk(self, base_env, curve, bufs, queue).run(curve, watched, ci)


class _ChainWalk:
    """One curve's walk on one chunk: per stage the transposed input ``h`` (C, n), consumer output ``z``
    (out, n), folded weights and anchored accumulator.

    *Live rows.* Once a unit of an analysed layer after the first stage is ablated, its row of the
    previous stage's output (its pre-activation), its ReLU row and its column of the next Linear are
    never read again: the Linear's term for it is its clamp, in the bias. So the walk orders such a
    layer's units by when the curve ablates them -- the last ablated (or never) first -- in all of those
    tensors, and each level computes only the leading rows of the units still live: on the MLP curve
    over both layers the ReLU, the readout GEMM and the rank-1 updates of the hidden layer touch half
    the rows on average. A row's values are those of the full computation; the Linear sums only the
    live units' terms (in a different order: float rounding).
    """

    def __init__(self, dc: DenseChain, base_env: dict, curve, bufs: dict, queue):
        self.dc, self.bufs, self.queue = dc, bufs, queue
        st = dc.stages
        L = len(st)
        plans = curve.plans
        # positions of the units of each analysed layer after the first stage: the last ablated first
        perm = [None] * L
        for j, s in enumerate(st):
            if j and s.li is not None:
                when: dict = {}
                for t, (li, u) in enumerate(curve.sequence):
                    if li == s.li:
                        when.setdefault(u, t)
                never = len(curve.sequence)
                perm[j] = sorted(range(s.units), key=lambda u: -when.get(u, never))
        idx = [None if p is None else torch.tensor(p, device=st[0].wt32.device) for p in perm]
        self.perm, self.order = perm, idx
        self.h, self.z, self.rows = [None] * L, [None] * L, [None] * L
        self.fold_t, self.fold_rows, self.bias = [None] * L, [None] * L, [None] * L
        self.w32, self.n32, self.w64rows, self.n64rows = [None] * L, [None] * L, [None] * L, [None] * L
        for i, s in enumerate(st):
            pin, pout = idx[i], idx[i + 1] if i + 1 < L else None
            h = base_env[s.lin.args[0] if s.marker is None else s.marker.args[0]].t()
            if i:  # recomputed at every level below it: the walk's own buffer, its rows in live order
                hb = buffer(bufs, ("h", i), h)
                h = torch.index_select(h, 0, pin, out=hb) if pin is not None else hb.copy_(h)
            self.h[i] = h
            z = base_env[s.lin].t()
            if i + 1 < L:
                zb = buffer(bufs, ("z", i), z)
                z = torch.index_select(z, 0, pout, out=zb) if pout is not None else zb.copy_(z)
            self.z[i] = z
            if s.li is not None:
                hrows = _row_views(bufs, ("h", i), h)
                self.rows[i] = hrows if pin is None else [hrows[p] for p in _inverse(perm[i])]
            # (C, out) weights, rows in the input's order, columns in the output's; ablated units' rows
            # zeroed (a copy only where units are ablated or reordered)
            w = s.wt32
            if pin is not None:
                w = w.index_select(0, pin)
            if pout is not None:
                w = w.index_select(1, pout)
            if s.li is not None or pout is not None:
                w = buffer(bufs, ("wk", i), w).copy_(w)
            self.fold_t[i] = w
            if s.li is not None and pin is None:
                self.fold_rows[i] = _row_views(bufs, ("wk", i), w)
            b = s.bias if s.bias is None or pout is None else s.bias.index_select(0, pout)
            self.bias[i] = b
            if s.li is not None:  # the rank-1 terms of this stage's units: rows by unit, columns in z's order
                cols = (lambda t: t) if pout is None else (lambda t: t.index_select(1, pout))
                self.w32[i], self.n32[i] = cols(s.wt32), cols(s.nwt32)
                # float64 terms in the stage's own order, put in z's order when anchored (:class:`_Anchored`)
                self.w64rows[i], self.n64rows[i] = s.wt64_rows, s.nwt64_rows
        self.acc: list = [None] * L
        self.counts = [0] * L
        self.values = [None if s.li is None else plans[s.li].values.tolist() for s in st]
        self.fill = [None] * L  # float32 (C,) clamp values of ablated units with a non-zero clamp
        self.fold_w = [w.t() for w in self.fold_t]  # (out, C) views
        self.fbias = [None if b is None else b.unsqueeze(1) for b in self.bias]  # bias + W fill, (out, 1)
        self.slot = None  # the queue slot holding the logits the last readout wrote
        # live rows (:class:`_ChainWalk`) and the views of them each level uses
        self.all_in = [s.units for s in st]
        self.all_out = [int(z.shape[0]) for z in self.z]
        self.live_in, self.live_out = list(self.all_in), list(self.all_out)
        self.hA, self.zA, self.fwA, self.fbA, self.w32A, self.n32A = ([None] * L for _ in range(6))
        for i in range(L):
            self._views(i)
        self.stale: set = set()  # stages whose views wait for the next level that uses them

    def _views(self, i: int) -> None:
        """Refresh stage ``i``'s views of its live rows (after its or the next stage's units were ablated,
        or its bias changed)."""
        a, b = self.live_in[i], self.live_out[i]
        a_all, b_all = self.all_in[i], self.all_out[i]
        self.hA[i] = self.h[i] if a == a_all else self.h[i][:a]
        self.fwA[i] = self.fold_w[i] if a == a_all and b == b_all else self.fold_w[i][:b, :a]
        fb = self.fbias[i]
        self.fbA[i] = fb if fb is None or b == b_all else fb[:b]
        if i + 1 < len(self.z):
            self.zA[i] = self.z[i] if b == b_all else self.z[i][:b]
        if self.w32[i] is not None:
            self.w32A[i] = self.w32[i] if b == b_all else self.w32[i][:, :b]
            self.n32A[i] = self.n32[i] if b == b_all else self.n32[i][:, :b]
        if self.acc[i] is not None:
            self.acc[i].narrow(b)

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
            if rows is not None:  # (units in live order drop out of the Linear instead)
                rows[u].zero_()
            if vals[u] != 0.0:
                if self.fill[i] is None:
                    self.fill[i] = torch.zeros(s.units, dtype=s.wt32.dtype, device=s.wt32.device)
                self.fill[i][u] = vals[u]
                fill_changed = True
        if fill_changed:
            fb = self.w32[i].t() @ self.fill[i]
            self.fbias[i] = (fb if self.bias[i] is None else self.bias[i] + fb).unsqueeze(1)
        self.counts[i] += len(units)
        if self.perm[i] is not None:
            self.live_in[i] = s.units - self.counts[i]
            self.live_out[i - 1] = self.live_in[i]
            self.stale.add(i - 1)
        if self.perm[i] is not None or fill_changed:
            self.stale.add(i)

    def advance(self, new: dict) -> None:
        dc, stages = self.dc, self.dc.stages
        i0 = len(stages)
        for li, units in new.items():
            i = dc.stage_of[li]
            self._ablate(i, units)
            i0 = min(i0, i)
        if self.stale:  # the stages this level computes (i0 and after) need their views now
            for i in [i for i in self.stale if i >= i0]:
                self._views(i)
                self.stale.discard(i)
        s = stages[i0]
        if self.counts[i0] < s.units:  # incremental update of stage i0's consumer
            acc = self.acc[i0]
            if acc is None:
                acc = self.acc[i0] = self._anchored(i0)
            rows, vals = self.rows[i0], self.values[i0]
            # the logits: written into the score queue's next slot (the last level's are only read)
            out = self.slot = self.queue.slot() if i0 + 1 == len(stages) else None
            for u in new[s.li]:
                c = vals[u]
                if c == 0.0:
                    acc.add(rows[u], self.n64rows[i0][u], self.n32A[i0][u], out)
                else:
                    acc.add(torch.rsub(rows[u], c), self.w64rows[i0][u], self.w32A[i0][u], out)
            if out is not None:
                self.z[i0] = out
        else:  # fully ablated: recomputed (all weights folded to zero: the bias, as the reference)
            self._linear(i0)
        for j in range(i0 + 1, len(stages)):
            torch.clamp_min(self.zA[j - 1], 0, out=self.hA[j])
            self._linear(j)

    def _anchored(self, i: int) -> _Anchored:
        """An accumulator on stage ``i``'s output: the walk's buffer, or for the logits (the base env's or a
        queue slot, only read) the slots each level writes (:meth:`advance`)."""
        z = self.z[i]
        order = self.order[i + 1] if i + 1 < len(self.order) else None
        return _Anchored(z, buffer(self.bufs, ("exact", i), z, dtype=torch.float64), self.live_out[i], order)

    def _linear(self, i: int) -> None:
        """Stage ``i``'s Linear on its current input with the folded weights (its accumulator restarts)."""
        if i + 1 == len(self.dc.stages):  # the logits: straight into the score queue's next slot
            z = out = self.slot = self.queue.slot()
        else:
            z, out = self.z[i], self.zA[i]
        b = self.fbA[i]
        if b is None:
            torch.mm(self.fwA[i], self.hA[i], out=out)
        else:
            torch.addmm(b, self.fwA[i], self.hA[i], out=out)
        self.z[i], self.acc[i] = z, None


def _row_views(bufs: dict, key, t: torch.Tensor) -> list:
    """``list(t.unbind(0))``, kept in ``bufs`` while ``t`` views the same memory the same way (a chunk's
    buffers and its base values serve every curve's walk; the kept views hold that memory)."""
    same = (t.data_ptr(), t.shape, t.stride(), t.dtype)
    hit = bufs.get(("rows", key))
    if hit is None or hit[0] != same:
        hit = bufs[("rows", key)] = (same, list(t.unbind(0)))
    return hit[1]


def _inverse(perm: list) -> list:
    """Position of each unit in ``perm`` (the units in position order)."""
    pos = [0] * len(perm)
    for p, u in enumerate(perm):
        pos[u] = p
    return pos
