"""Noise curves on the fx path: the cached prefix, linear consumers of the first noisy layers updated by one
scaled term per noise scale, the rest recomputed column-major into walk-owned buffers, scored in batches.

Offers :func:`noise_counts` (what :meth:`~.evaluator.FastEvaluator.noise` runs).

Why it is exact up to float rounding. The noise of a repeat, ``n = s * sigma * z``, shares its draw ``z``
(which depends only on seed, repeat, layer and example index) across all scales ``s``. A marker whose
input no other noisy layer changes (a *root* marker) and that feeds a linear chain (:mod:`.walk`) has a
consumer output that is linear in the noise: ``consumer(h + s sigma z) = consumer(h) + s * D`` with
``D = consumer_without_bias(g(sigma z))``. So per chunk ``consumer(h)`` comes from the unablated env, per
repeat ``D`` costs one GEMM, and per scale the consumer is ONE fused ``base + s * D`` (``torch.add`` with
``alpha``) instead of a GEMM over all units; only the nodes after it are recomputed. In float32 both
orders round differently in the last bits, which is why fast == reference for noise is judged by
:func:`singledir.reliance.testing.compare_noise` (near-ties only). For the 784-128-128-10 MLP on both
layers this replaces the 128 -> 128 GEMM of every (repeat, scale) by an axpy: the reference runs the full
MLP 55 times (the 784 -> 128 layer dominates), the fast path the 128 -> 10 readout plus elementwise ops.

Markers that are not roots, or feed no linear chain, get the noise added (the same
:func:`~singledir.reliance.edits.apply_noise`) and everything after them is recomputed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from singledir.reliance.edits import NoiseSpec, apply_noise, example_noise, unit_shape
from singledir.reliance.fast.graph import run_node
from singledir.reliance.fast.layout import buffer, is_colmajor, linear_colmajor
from singledir.reliance.fast.scoring import SCORE_RING, ScoreQueue, check_total, example_scores

__all__ = ["noise_counts"]


def _linear_roots(ev) -> list:
    """Root markers (no other analysed layer above them) that feed a linear chain, with that chain."""
    return [(m, ev.chains[m]) for m in ev.split.markers if m in ev.chains and not ev.split.upstream_layers[m]]


def _consumer_delta(ev, ch, env, d):
    """``consumer_without_bias(chain_ops(d))`` for a chain input ``d`` shaped like the marker."""
    for op in ch.ops:
        d = run_node(op, env, ev.traced, first_arg=d)
    w = ch.module.weight
    if ch.kind == "linear":
        d = d.reshape(d.shape[0], -1) if d.ndim != 2 else d
        return linear_colmajor(d, w, None) if is_colmajor(d) else F.linear(d, w)
    conv = ch.module
    fconv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[d.ndim]
    return fconv(d, w, None, conv.stride, conv.padding, conv.dilation)


class _OnDevice:
    """A per-unit vector, sent once to each (device, dtype) it is used with, shaped to broadcast."""

    def __init__(self, v: torch.Tensor):
        self.v, self.cache = v, {}

    def get(self, h: torch.Tensor) -> torch.Tensor:
        key = (h.device, h.dtype, h.ndim)
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = self.v.to(dtype=h.dtype, device=h.device).view(unit_shape(h))
        return hit


def _noisy(h, z, std, bufs: dict, li: int):
    """:func:`~singledir.reliance.edits.apply_noise` (``h + z * std``, the same two roundings) written into a
    buffer of the walk: no fresh activation-sized tensors per configuration (a 1-D ``std`` only)."""
    if std.ndim != 1 or z.shape != h.shape or z.stride() != h.stride():
        return apply_noise(h, z, std)
    out = buffer(bufs, ("noise", li), h)
    torch.mul(z, std.to(dtype=h.dtype, device=h.device).view(unit_shape(h)), out=out)
    return out.add_(h)


def _readout_tail(ev, inc, todo):
    """The last stage of ``ev``'s dense chain (:mod:`.chainwalk`) when its noisy marker feeds the output
    Linear directly (the noise's readout term is then computed once per repeat, :func:`_noise_terms`)."""
    dc = ev.dense_chain
    if dc is None or not ev.colmajor:
        return None
    st = dc.stages[-1]
    if st.li is None or st.marker in inc or st.marker not in todo or st.lin not in todo:
        return None
    return st


def _noise_terms(st, z, stds):
    """``W (z * std_s) + b`` for every scale ``s`` (``stds``: (S, C)), as ONE GEMM with the stacked weights
    ``W * std_s``: (S * out, n). The readout of a noisy marker ``h + z * std_s`` is linear, so per
    configuration it is ``W h + terms[s]`` (:func:`_readout`): the noisy activations are never formed.
    (Float32 rounding: ``(W * std) z`` instead of ``W (z * std)`` -- within the near-tie rule of
    :func:`singledir.reliance.testing.compare_noise`, like the fast path's other reorderings.)"""
    w = st.wt32.t()  # (out, C)
    ws = (w.unsqueeze(0) * stds.to(w.dtype).unsqueeze(1)).reshape(-1, w.shape[1])
    bias = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if st.bias is None else st.bias
    return torch.addmm(bias.repeat(stds.shape[0]).unsqueeze(1), ws, z.t())


def _readout(st, env, terms, s, noise_fn, bufs):
    """The logits (n, out), column-major, of scale ``s``: ``W h + terms[s]`` (or, without ``terms``: the
    noisy marker formed by ``noise_fn`` and read out)."""
    h = env[st.marker.args[0]]
    out = st.wt32.shape[1]
    if terms is None:  # (a one-example chunk: no score queue)
        return F.linear(noise_fn(st.li, h), st.wt32.t(), st.bias)
    lt = buffer(bufs, "readout", h, shape=(out, h.shape[0]), stride=(h.shape[0], 1))
    return torch.addmm(terms[s * out : (s + 1) * out], st.wt32.t(), h.t(), out=lt).t()


def noise_counts(ev, plan, watch=None):
    """``(correct[repeats, scales], loss_sum[repeats, scales])`` of :class:`~..plan.NoisePlan` ``plan``
    with ``ev`` (a :class:`~.evaluator.FastEvaluator`); ``watch``: ``(repeat, scale index)`` pairs whose
    logits are kept in ``ev.watched``."""
    shape = (plan.repeats, len(plan.scales))
    correct = np.zeros(shape, dtype=np.int64)
    loss = np.zeros(shape)
    roots = _linear_roots(ev)
    inc = frozenset(m for m, _ch in roots)
    dirty = frozenset(m for m in ev.split.markers if m not in inc)
    todo = ev.updates.todo(inc, dirty)[0] if inc else ev.split.rest
    sigmas = [_OnDevice(NoiseSpec(s, 1.0).std) for s in plan.sigmas]
    # per-unit stds of every (scale, layer), sent to the device once (not per configuration and chunk)
    per_layer = [torch.stack([NoiseSpec(plan.sigmas[i], float(sc)).std for sc in plan.scales]).to(ev.device)
                 for i in range(len(ev.names))]
    stds_by_scale = [[per_layer[i][s] for i in range(len(ev.names))] for s in range(len(plan.scales))]
    tail = _readout_tail(ev, inc, todo)
    if tail is not None:
        todo = [n for n in todo if n is not tail.marker and n is not tail.lin]
    watch = set(watch or ())
    with tqdm(total=ev.nchunks() * shape[0] * shape[1], desc="noise", disable=not ev.progress, leave=False) as bar:

        def one(start, x, y):
            correct = np.zeros(shape, dtype=np.int64)
            loss = np.zeros(shape)
            watched = {key: [] for key in watch}
            y = y.to(ev.device)
            n = x.shape[0]
            env0 = ev.base_env(start, x) if inc else ev.cached_prefix(start, x)
            bufs: dict = {}  # each configuration starts from env0 and writes into these
            queue = None
            out_shape = ev.shapes[ev.out_node]
            if ev.colmajor and n > 1:
                size = max(1, min(32, SCORE_RING // max(1, n * out_shape[1] * 4)))
                queue = ScoreQueue(y, out_shape[1], ev.dtypes[ev.out_node], size)
            pending = []  # (repeat, scale, (correct, loss) tensor) of row-major logits: read once per chunk
            for r in range(plan.repeats):
                zs: dict = {}  # z depends on (seed, repeat, layer, example index) only: shared by all scales

                def draw(li, h, r=r, zs=zs, start=start, n=n):
                    key = (li, tuple(h.shape[1:]), is_colmajor(h))
                    z = zs.get(key)
                    if z is None:
                        z = zs[key] = example_noise(h.shape[1:], start, start + n, plan.key(r, li), dtype=h.dtype,
                                                    device=h.device, colmajor=key[2])
                    return z

                terms = None
                if tail is not None and queue is not None:  # W (z * std_s) + b of every scale: one GEMM
                    terms = _noise_terms(tail, draw(tail.li, env0[tail.marker.args[0]]), per_layer[tail.li])
                deltas = {}
                for m, ch in roots:
                    li = ev.layer_index[ev.split.marker_layer[m]]
                    h = env0[m.args[0]]
                    sig = sigmas[li].get(h)
                    deltas[ch.consumer] = _consumer_delta(ev, ch, env0, draw(li, h) * sig)
                for s, scale in enumerate(plan.scales):
                    stds = stds_by_scale[s]

                    def noise_fn(li, h, stds=stds, draw=draw):
                        return _noisy(h, draw(li, h), stds[li], bufs, li)

                    env = dict(env0)
                    for c, d in deltas.items():
                        env[c] = torch.add(env0[c], d, alpha=float(scale), out=buffer(bufs, c, env0[c]))
                    ev.run_rest(env, todo, noise_fn=noise_fn, bufs=bufs)
                    if tail is not None:
                        logits = _readout(tail, env, terms, s, noise_fn, bufs)
                    else:
                        logits = env[ev.out_node]
                    if (r, s) in watched:
                        watched[(r, s)].append(logits.clone())
                    if queue is not None:
                        queue.push(logits, (r, s))
                    else:
                        cv, lv = example_scores(logits, y)
                        pending.append((r, s, torch.stack([cv.sum(dtype=torch.float64), lv.sum()])))
                    bar.update(1)
                if queue is not None:
                    for (rr, ss), c, lo in queue.flush():
                        correct[rr, ss] += c
                        loss[rr, ss] += lo
            if pending:
                for (rr, ss, _t), (c, lo) in zip(pending, torch.stack([t for *_k, t in pending]).tolist()):
                    correct[rr, ss] += int(c)
                    loss[rr, ss] += check_total(lo)
            return correct, loss, watched

        parts = ev.map_chunks(one)
    correct = np.zeros(shape, dtype=np.int64)
    loss = np.zeros(shape)
    for c, lo, _w in parts:  # summed in chunk order
        correct += c
        loss += lo
    ev.watched = {key: torch.cat([t for *_cl, w in parts for t in w[key]]) for key in watch}
    return correct, loss

