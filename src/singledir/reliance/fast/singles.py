"""Single-unit ablations (importance) of dense ReLU chains, several units per batch of ops.

Offers :func:`chain_singles` (one example chunk; what :meth:`~.evaluator.FastEvaluator.singles` runs when the
evaluator has a :class:`~.chainwalk.DenseChain`).

The arithmetic is :class:`~.walk.SingleAblation`'s row-sparse step: ablating unit ``u`` of a stage changes
only the examples whose ``h_u`` differs from the clamp value (post-ReLU zeros under a zero clamp: about
half of the MLP's ``hidden.0`` activations), and for them the stage's consumer output by one rank-1 term in
the model's dtype, ``z + w_u (c_u - h_u)`` (rounded once); the later stages are recomputed on those rows
and scored (``F.cross_entropy`` / ``argmax`` on row-major logits, as :func:`~.scoring.example_scores`). A
unit's totals are the chunk's base totals plus the changes of its rows.

Why grouped. Per unit, :class:`~.walk.SingleAblation` issues ~30 small ops (changed rows, gathers, the
update, the readout, scoring, base corrections) with their Python: on the MLP's 128 units x 10k images
that overhead was most of the time. Here the changed rows of ``GROUP`` units are found by ONE ``nonzero``
and stacked into one tall matrix (unit-major): one gather of the consumer rows, one per-row weight gather,
one ``addcmul`` for all rank-1 terms, one ReLU and one GEMM per later stage, one scoring, and the per-unit
sums by ``index_add``: ~20 ops per group instead of per unit, and taller GEMMs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from singledir.reliance.fast.layout import colmajor_copy
from singledir.reliance.fast.scoring import example_scores

#: Units whose changed rows are stacked into one batch of ops (at ~50% changed rows of a 2500-example
#: chunk: ~10k rows x 128 floats = 5 MB per stacked activation).
GROUP = 8

__all__ = ["GROUP", "chain_singles"]


def chain_singles(dc, base_env: dict, plans, units, y, watch=(), watched=None):
    """``totals``: a float64 (len(units), 2) tensor of (correct, summed loss) of the single-unit ablations
    ``units`` (``(layer index, unit)`` pairs) on the chunk of the row-major ``base_env``. ``watch``:
    indices into ``units`` whose full logits are appended to ``watched[i]``."""
    ev = dc.ev
    out = base_env[ev.out_node]
    base_cv, base_lv = example_scores(colmajor_copy(out), y)
    base = torch.stack([base_cv.sum(dtype=torch.float64), base_lv.sum()])
    base_c = base_cv.to(torch.float64)
    totals = base.repeat(len(units), 1)
    i = 0
    while i < len(units):  # runs of up to GROUP units of one stage
        li = units[i][0]
        j = i + 1
        while j < len(units) and j - i < GROUP and units[j][0] == li:
            j += 1
        _group(dc, base_env, plans[li], dc.stage_of[li], [u for _l, u in units[i:j]], y, base_c, base_lv,
               totals[i:j], {k - i: watched[k] for k in watch if i <= k < j} if watch else None, out)
        i = j
    return totals


def _group(dc, env, plan, si, us, y, base_c, base_lv, totals, watched, base_out) -> None:
    st = dc.stages[si]
    h = env[st.marker.args[0]]  # (n, C) row-major, the layer's output before the clamp
    uidx = torch.tensor(us, dtype=torch.long, device=h.device)
    vals = plan.values.to(device=h.device, dtype=h.dtype).index_select(0, uidx)
    hu = h.index_select(1, uidx).t()  # (G, n)
    k, rows = (hu != vals.unsqueeze(1)).nonzero(as_tuple=True)  # unit-major: unit slot k, example row
    if rows.numel() == 0:
        return
    d = vals.index_select(0, k) - hu[k, rows]  # (c_u - h_u) per changed row
    z = env[st.lin].index_select(0, rows)  # the consumer's rows, row-major (r, out)
    a = 0
    for g, cnt in enumerate(torch.bincount(k, minlength=len(us)).tolist()):  # one rank-1 term per unit
        if cnt:
            z[a : a + cnt].addr_(d[a : a + cnt], st.wt32[us[g]])
            a += cnt
    for s in dc.stages[si + 1 : -1]:
        z = F.linear(z.clamp_min_(0), s.wt32.t(), s.bias)
    if si + 1 < len(dc.stages):  # the readout as W h^T: logits (classes, r), scored column-wise
        s = dc.stages[-1]
        z = z.clamp_min_(0).t()
        logits = torch.mm(s.wt32.t(), z) if s.bias is None else torch.addmm(s.bias.unsqueeze(1), s.wt32.t(), z)
    else:
        logits = z.t().contiguous()
    yr = y.index_select(0, rows)
    cv, lv = example_scores(logits.t(), yr)
    totals[:, 0].index_add_(0, k, cv.to(torch.float64) - base_c.index_select(0, rows))
    totals[:, 1].index_add_(0, k, lv - base_lv.index_select(0, rows))
    if watched:
        for g, lst in watched.items():
            sel = (k == g).nonzero().squeeze(1)
            lst.append(base_out.clone().index_copy_(0, rows.index_select(0, sel), logits.t().index_select(0, sel)))
