"""Cumulative ablation of the directions a user holds: the span of the first j rows of a (k, units) tensor.

Offers :func:`direction_curves` (what :func:`~.ablation.ablation_curves` runs for ``basis=`` a tensor or
a dict layer -> tensor) and :func:`span_basis` (Gram-Schmidt / QR of the rows in float64, dependent rows
adding nothing). Level j projects each position of the layer's output onto the orthogonal complement of
the span of its first j directions in the curve's order (with ``clamp="mean"`` the span's component is set
to the units' mean's); the curves run on every evaluation path as random-basis curves do (a
:class:`~.plan.LayerPlan` with ``basis`` columns).
"""

from __future__ import annotations

import numpy as np
import torch

from singledir.errors import SingledirError
from singledir.reliance.ablation import AblationResult, _base, _result, resolve_levels
from singledir.reliance.common import layer_plans, prepare, unit_means
from singledir.reliance.evaluators import make_evaluator
from singledir.reliance.hooks import model_guard
from singledir.reliance.inputs import as_batches, check_choice
from singledir.reliance.plan import Curve, LayerPlan

__all__ = ["SPAN_ULPS", "direction_curves", "span_basis"]


#: A direction whose residual (outside the span of the earlier ones) is below this many ulps of its
#: dtype, relative to its norm, adds nothing to the span (float32 rows: ~7.6e-6).
SPAN_ULPS = 64


def span_basis(rows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(C, k) float64 columns q_1..q_k and the rank: span(q_1..q_j) = span(d_1..d_j) for every j.

    Gram-Schmidt with re-orthogonalisation (what a QR of the stacked directions computes, column by column,
    also for dependent sets): a direction whose relative residual is below :data:`SPAN_ULPS` ulps of the
    rows' dtype gets a zero column (it removes nothing new). The sign of q_j follows d_j.
    """
    tol = SPAN_ULPS * torch.finfo(rows.dtype if rows.is_floating_point() else torch.float64).eps
    d = rows.double()
    c, k = d.shape[1], d.shape[0]
    q = torch.zeros(c, k, dtype=torch.float64)
    kept = []
    for j in range(k):
        v = d[j].clone()
        norm = float(v.norm())
        if norm == 0.0:
            continue
        for _ in range(2):
            if kept:
                qk = q[:, kept]
                v = v - qk @ (qk.T @ v)
        r = float(v.norm())
        if r > tol * norm:
            q[:, j] = v / r
            kept.append(j)
    return q, len(kept)


def _check_directions(basis, prepared) -> dict:
    """``{layer: (k, units) float64 tensor}`` from a tensor (one layer) or a dict layer -> tensor."""
    if isinstance(basis, (torch.Tensor, np.ndarray)):
        if len(prepared.layers) != 1:
            raise SingledirError(
                f"basis is one direction tensor but {len(prepared.layers)} layers are given; pass a dict "
                f"layer -> (k, units) tensor"
            )
        basis = {prepared.layers[0]: basis}
    if not isinstance(basis, dict) or not basis:
        raise SingledirError(f"basis must be 'units', 'random', a (k, units) tensor or a dict layer -> tensor, got {type(basis).__name__}")
    out = {}
    for name, d in basis.items():
        if name not in prepared.units:
            raise SingledirError(f"basis names layer {name!r}, which is not among layers {prepared.layers}; add it to layers")
        d = torch.as_tensor(d).detach().cpu()
        c = prepared.units[name]
        if d.ndim == 1:
            d = d[None, :]
        if d.ndim != 2 or d.shape[1] != c or d.shape[0] == 0:
            raise SingledirError(f"directions of layer {name!r} must be a (k, {c}) tensor (one row per direction), got shape {tuple(d.shape)}")
        if not d.is_floating_point():
            d = d.double()
        if not bool(torch.isfinite(d).all()):
            raise SingledirError(f"directions of layer {name!r} hold NaN or inf")
        out[name] = d  # its dtype sets the span tolerance (span_basis)
    missing = [n for n in prepared.layers if n not in out]
    if missing:
        raise SingledirError(f"basis gives no directions for layer {missing[0]!r}; pass a tensor for every layer or drop the layer")
    return out


def direction_curves(model, data, layers, basis, order, repeats, clamp, levels, seed, stats_data, unit_dim,
                      output_fn, batch_size, memory_budget, progress, method) -> AblationResult:
    """:func:`ablation_curves` with user directions (its docstring, ``basis``)."""
    if not isinstance(order, str) or order not in ("rows", "random"):
        raise SingledirError(f"with a direction tensor, order must be 'rows' (their order) or 'random', got {order!r}")
    clamp = check_choice(clamp, ("zero", "mean"), "clamp")
    with model_guard(model), torch.no_grad():
        prepared = prepare(model, data, layers, batch_size, unit_dim=unit_dim, output_fn=output_fn)
        dirs = _check_directions(basis, prepared)
        stats_batches = None if stats_data is None else as_batches(stats_data, batch_size)
        plans = layer_plans(model, prepared, "zero")
        centers = unit_means(model, prepared, stats_batches) if clamp == "mean" else None
        pooled = [(li, j) for li, p in enumerate(plans) for j in range(dirs[p.name].shape[0])]
        total = len(pooled)
        lv = resolve_levels(levels, total)
        if order == "rows":
            perms = [("rows", 0, list(range(total)))]
        else:
            perms = [("random", r, list(np.random.default_rng([seed, r]).permutation(total))) for r in range(repeats)]
        curves, directions, seq_names, ranks = [], {}, {}, {}
        for oname, r, perm in perms:
            seq = [pooled[i] for i in perm]
            cplans = []
            for li, p in enumerate(plans):
                rows = [j for (lj, j) in seq if lj == li]  # this layer's rows in curve order
                q, rank = span_basis(dirs[p.name][rows])
                qcols = torch.zeros_like(q)
                qcols[:, rows] = q  # column j = the new direction of row j
                center = centers[p.name].float() if centers is not None else None
                cplans.append(LayerPlan(p.name, p.units, torch.zeros(p.units), qcols, center, p.unit_dim))
                ranks[p.name] = rank
            curves.append(Curve(seq, lv, cplans, oname, r))
            directions[(oname, r)] = {p.name: p.basis for p in cplans}
            seq_names[(oname, r)] = [(plans[li].name, int(j)) for li, j in seq]
        ev = make_evaluator(method, model, prepared.batches, plans, memory_budget, progress, output_fn)
        results = ev.cumulative(curves)
        base = _base(ev, results, lv)
    orthonormal = all(
        torch.allclose(d.double() @ d.double().T, torch.eye(d.shape[0], dtype=torch.float64), atol=1e-6)
        for d in dirs.values()
    )
    extra = {
        "directions": {n: int(d.shape[0]) for n, d in dirs.items()},
        "rank": ranks,
        "orthonormal": bool(orthonormal),
        "removed": "level j projects each layer's output onto the orthogonal complement of the span of its first "
                   "j directions in the curve's order" + ("" if clamp == "zero" else ", the span's component set "
                   "to the units' mean's") + ("" if orthonormal else "; the directions are not orthonormal: a "
                   "direction removes only its part outside the span of the earlier ones"),
    }
    return _result(prepared, plans, curves, results, lv, total, ev, base, clamp=clamp, basis="directions",
                   seed=seed, repeats=len(perms), orders=[perms[0][0]], directions=directions, extra=extra,
                   seq_names=seq_names)
