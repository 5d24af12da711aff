"""Cumulative ablation curves: accuracy and loss as more and more units (or random directions) are clamped.

Offers :func:`ablation_curves` and its result :class:`AblationResult` (``.curves``, ``.sequences``,
``.auc()``, ``.auc_per_curve()``, ``.to_frame()``, ``.meta``), plus :func:`resolve_levels` and
:func:`random_basis`.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from singledir import stats
from singledir.errors import SingledirError
from singledir.reliance.common import (
    BASES,
    check_budget,
    check_method,
    layer_plans,
    prepare,
    unit_means,
)
from singledir.reliance.evaluators import make_evaluator, path_meta
from singledir.reliance.hooks import model_guard
from singledir.reliance.importance import importance_table
from singledir.reliance.inputs import as_batches, check_choice, check_repeats, check_seed
from singledir.reliance.plan import Curve, LayerPlan

__all__ = ["ALL_LEVELS_MAX", "ORDERS", "AblationResult", "ablation_curves", "random_basis", "resolve_levels"]

ORDERS = ("random", "selectivity-high", "selectivity-low", "importance-high", "importance-low")
#: Up to this many pooled units the default levels are every k = 0 .. all; above, an even grid.
ALL_LEVELS_MAX = 1024
#: Points of the default even grid (0 and all included) when there are more units than ALL_LEVELS_MAX.
GRID_POINTS = 65


@dataclass
class AblationResult:
    """Cumulative-ablation curves.

    - ``curves``: DataFrame, one row per (order, repeat, level): ``order, repeat, k, fraction, accuracy,
      loss`` (``fraction`` = k / pooled units of all layers; ``loss`` = mean cross-entropy).
    - ``sequences``: ``{(order, repeat): [(layer, unit), ...]}`` the exact ablation sequence of each
      curve (for ``basis="random"`` unit i means direction i, see ``directions``).
    - ``directions``: ``{(order, repeat): {layer: (C, C) float64 tensor}}`` -- the orthonormal directions
      (columns) of each curve when ``basis="random"``; empty otherwise.
    - ``meta``: layers, units per layer, clamp, basis, seed, n_examples, base accuracy/loss, and the path:
      ``method`` (the path taken: "fast", "hooks" or "reference"), ``method_requested``,
      ``fallback_reason`` (why "auto" did not take the fx path, else None).
    """

    curves: pd.DataFrame
    sequences: dict
    meta: dict
    directions: dict = field(default_factory=dict)

    def auc_per_curve(self) -> pd.DataFrame:
        """One row per (order, repeat): :func:`singledir.stats.ablation_auc` -- ``auc`` (trapezoid of
        accuracy over fraction), ``normalized_auc`` (divided by the unablated accuracy), ``base_accuracy``."""
        rows = []
        base = self.meta["base_accuracy"]
        for (order, rep), g in self.curves.groupby(["order", "repeat"], sort=False):
            g = g.sort_values("k")
            a = stats.ablation_auc(g["fraction"].to_numpy(), g["accuracy"].to_numpy(), base)
            rows.append({"order": order, "repeat": int(rep), **a})
        return pd.DataFrame(rows, columns=["order", "repeat", "auc", "normalized_auc", "base_accuracy"])

    def auc(self, confidence: float = 0.95, n_boot: int = 2000) -> pd.DataFrame:
        """One row per order: mean, std and seeded bootstrap interval of the raw and normalized AUC.

        Columns: ``order, n_curves, auc_mean, auc_std, auc_ci_low, auc_ci_high, normalized_auc_mean,
        normalized_auc_std, normalized_auc_ci_low, normalized_auc_ci_high, base_accuracy``. The std
        (ddof=1) and interval are NaN for a single curve.
        """
        per = self.auc_per_curve()
        rows = []
        for order, g in per.groupby("order", sort=False):
            row = {"order": order, "n_curves": len(g)}
            for col in ("auc", "normalized_auc"):
                s = stats.mean_std_ci(g[col].to_numpy(), n_boot=n_boot, confidence=confidence, seed=self.meta["seed"])
                row.update({f"{col}_{k}": v for k, v in s.items()})
            row["base_accuracy"] = self.meta["base_accuracy"]
            rows.append(row)
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        """The curves with the run's settings as extra columns (clamp, basis, seed, n_examples, layers)."""
        df = self.curves.copy()
        for key in ("clamp", "basis", "seed", "n_examples"):
            df[key] = self.meta[key]
        df["layers"] = ",".join(self.meta["layers"])
        return df

    def sequences_frame(self) -> pd.DataFrame:
        """The sequences as a DataFrame: ``order, repeat, position, layer, unit``."""
        rows = [
            (order, rep, i, layer, unit)
            for (order, rep), seq in self.sequences.items()
            for i, (layer, unit) in enumerate(seq)
        ]
        return pd.DataFrame(rows, columns=["order", "repeat", "position", "layer", "unit"])


def resolve_levels(levels, total: int, limit: int | None = None) -> list[int]:
    """Sorted unique levels k; default every k (<= ALL_LEVELS_MAX units) or a 65-point even grid.

    ``limit`` (default ``total``) is the largest allowed level (an explicit sequence's length).
    """
    limit = total if limit is None else limit
    if levels is None:
        if limit <= ALL_LEVELS_MAX:
            return list(range(limit + 1))
        return sorted({int(round(v)) for v in np.linspace(0, limit, GRID_POINTS)})
    if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool):
        levels = [levels]
    out = set()
    for k in levels:
        try:
            ki = operator.index(k)
        except TypeError:
            raise SingledirError(f"levels must be integers (numbers of ablated units), got {k!r}") from None
        if ki < 0:
            raise SingledirError(f"level {ki} is negative; levels count ablated units, 0 .. {limit}")
        if ki > limit:
            what = "the sequence has" if limit != total else "the layers have"
            raise SingledirError(f"level {ki} is larger than the {limit} units {what}; use levels in 0 .. {limit}")
        out.add(ki)
    if not out:
        raise SingledirError("levels is empty; pass at least one number of ablated units, or None")
    return sorted(out)


def random_basis(units: int, seed: int, repeat: int, layer_index: int) -> torch.Tensor:
    """(C, C) float64 orthonormal directions (columns): seeded QR of a Gaussian matrix, sign-fixed."""
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, repeat, layer_index, 7]).generate_state(1)[0]))
    a = torch.randn(units, units, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    sign = torch.sign(torch.diagonal(r))
    sign[sign == 0] = 1
    return q * sign


def _explicit_sequence(order, prepared) -> list[tuple[int, int]]:
    index = {n: i for i, n in enumerate(prepared.layers)}
    seq, seen = [], set()
    for item in order:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise SingledirError(f"an explicit order must be a list of (layer, unit) pairs, got item {item!r}")
        layer, unit = item
        if layer not in index:
            raise SingledirError(
                f"sequence names layer {layer!r}, which is not among layers {prepared.layers}; add it to layers"
            )
        try:
            u = operator.index(unit)
        except TypeError:
            raise SingledirError(f"unit {unit!r} of layer {layer!r} in the sequence is not an int") from None
        c = prepared.units[layer]
        if not 0 <= u < c:
            raise SingledirError(f"unit {u} of layer {layer!r} in the sequence is outside [0, {c}); fix the sequence")
        if (layer, u) in seen:
            raise SingledirError(f"unit {u} of layer {layer!r} appears twice in the sequence; list each unit once")
        seen.add((layer, u))
        seq.append((index[layer], u))
    if not seq:
        raise SingledirError("the explicit sequence is empty; list at least one (layer, unit) pair")
    return seq


def _is_explicit(order) -> bool:
    return (
        not isinstance(order, str)
        and isinstance(order, Sequence)
        and len(order) > 0
        and all(isinstance(it, (tuple, list)) for it in order)
    )


def _sorted_sequence(pooled, score_a, score_b, descending: bool) -> list:
    """Pooled units sorted by score_a (ties: score_b, then pooled position), high or low first."""
    a = np.asarray(score_a, dtype=float)
    b = np.asarray(score_b, dtype=float)
    sign = -1.0 if descending else 1.0
    idx = np.lexsort((np.arange(len(a)), sign * np.nan_to_num(b), sign * np.nan_to_num(a)))
    return [pooled[i] for i in idx]


def ablation_curves(
    model,
    data,
    layers,
    *,
    order=None,
    repeats: int = 10,
    clamp: str = "zero",
    levels=None,
    seed: int = 0,
    stats_data=None,
    basis="units",
    unit_dim=None,
    output_fn=None,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool = False,
    method: str = "auto",
) -> AblationResult:
    """Cumulative ablation of the units of ``layers`` (pooled into one sequence) on ``data``.

    - ``order`` (default "random"; "rows" with a direction tensor): "random" (``repeats`` seeded
      permutations of the pooled units), "selectivity-high" /
      "selectivity-low" (class selectivity index on ``stats_data`` or ``data``, most / least selective
      first), "importance-high" / "importance-low" (single-unit accuracy drop on ``data``, ties by loss
      rise), a list of these names, or an explicit sequence of ``(layer, unit)`` pairs (one curve,
      order "custom"). Sorted orders give one curve (repeat 0).
    - ``clamp``: "zero" or "mean" (each unit's mean over ``stats_data``, default ``data``; conv maps are
      clamped to that constant everywhere).
    - ``levels``: numbers of ablated units to evaluate; default every k from 0 to all when the layers
      have <= 1024 units together (an explicit sequence: 0 .. its length), else a 65-point even grid.
    - ``basis``: "units", or "random": ablate seeded random orthonormal directions of each layer's unit
      space (``h <- h - Q_k Q_k^T h``, per spatial position for conv maps; with clamp "mean" the
      directions are clamped to the mean's component), pooled across layers; order must be "random".
      Or the directions you hold: a (k, units) tensor for a single layer, or a dict layer -> tensor
      (probe weights, PCA components, sparse-autoencoder decoder rows). Level j removes the *span* of the
      first j directions (projection onto its orthogonal complement, built by Gram-Schmidt / QR in
      float64; with clamp "mean" the span's component is set to the mean's). Directions need not be
      orthonormal: a direction inside the span of earlier ones removes nothing new (``meta["rank"]``
      counts the span's dimension). Default order: the rows' own order, layer after layer (one curve,
      order "rows"); ``order="random"``: ``repeats`` seeded shuffles of the pooled rows. The identity
      rows give exactly the unit ablation in their order.
    - ``unit_dim``: the axis of each layer's output that holds its units (an int for all layers, or a
      dict layer -> int; e.g. -1 for a transformer's MLP neurons (batch, tokens, d_mlp)); the other
      non-batch axes are positions, each ablated alike. Default: inferred where unambiguous (a 2-D
      output, a Linear's output -> last axis, a Conv's -> 1), else an error that asks for it.
    - ``output_fn``: picks the logits from the model's output (default: a tensor, a tuple's first
      element, or ``.logits``). (N, classes) logits are scored against (N,) labels; (N, S, vocab)
      per-token logits against (N, S) labels (-100 not scored): accuracy is then token accuracy, loss
      the mean cross-entropy over the scored tokens, and ``n_examples`` counts those tokens.
    - ``method``: "auto" (fast fx path; batched hooks if the model cannot be traced), "fast", "hooks", or
      "reference" (one plain forward pass per level). All give the same accuracies.
    - ``memory_budget``: bytes of activations the engine may hold (default 1 GiB); ``batch_size`` splits
      tensor data; ``progress``: tqdm bars on stderr.

    The model is evaluated in eval mode under ``no_grad`` and handed back as it came (training flags,
    weights, no hooks), also when an error is raised. Returns an :class:`AblationResult`; its ``meta``
    also holds ``unit_dims``, ``token_level`` and ``n_sequences`` (``n_examples`` counts scored labels),
    and for direction tensors ``directions``, ``rank``, ``orthonormal`` and ``removed``.

    Example::

        res = sd.ablation_curves(model, (x_test, y_test), ["hidden.0", "hidden.1"], repeats=10)
        res.auc()        # one row per order: auc_mean, normalized_auc_mean, bootstrap interval ...
    """
    method = check_method(method)
    memory_budget = check_budget(memory_budget)
    directions_given = not isinstance(basis, str)
    if not directions_given:
        basis = check_choice(basis, BASES, "basis")
    if order is None:
        order = "rows" if directions_given else "random"
    seed = check_seed(seed)
    repeats = check_repeats(repeats)
    if directions_given:
        from singledir.reliance.directions import direction_curves

        return direction_curves(model, data, layers, basis, order, repeats, clamp, levels, seed, stats_data,
                                unit_dim, output_fn, batch_size, memory_budget, progress, method)
    explicit = _is_explicit(order)
    if explicit:
        orders = ["custom"]
    else:
        orders = [order] if isinstance(order, str) else list(order) if isinstance(order, Sequence) else [order]
        if not orders:
            raise SingledirError(f"order is empty; choose from: {', '.join(ORDERS)}")
        for o in orders:
            check_choice(o, ORDERS, "order")
        if len(set(orders)) != len(orders):
            raise SingledirError("an order is listed twice; list each order once")
    if basis == "random" and orders != ["random"]:
        raise SingledirError("basis='random' supports only order='random' (directions have no selectivity)")

    with model_guard(model), torch.no_grad():
        prepared = prepare(model, data, layers, batch_size, unit_dim=unit_dim, output_fn=output_fn)
        check_choice(clamp, ("zero", "mean"), "clamp")
        # stats_data is read once (a shuffled DataLoader would yield a new order on every pass)
        stats_batches = None if stats_data is None else as_batches(stats_data, batch_size)
        plans = layer_plans(model, prepared, clamp if basis == "units" else "zero", stats_batches)
        pooled = [(li, u) for li, p in enumerate(plans) for u in range(p.units)]
        total = len(pooled)
        seq_explicit = _explicit_sequence(order, prepared) if explicit else None
        lv = resolve_levels(levels, total, len(seq_explicit) if explicit else None)

        centers = None
        if basis == "random" and clamp == "mean":
            centers = unit_means(model, prepared, stats_batches)

        ev = make_evaluator(method, model, prepared.batches, plans, memory_budget, progress, output_fn)
        curves: list[Curve] = []
        directions: dict = {}
        imp = None
        for o in orders:
            if o == "custom":
                curves.append(Curve(seq_explicit, lv, plans, "custom", 0))
            elif o == "random":
                for r in range(repeats):
                    rng = np.random.default_rng([seed, r])
                    perm = rng.permutation(total)
                    seq = [pooled[i] for i in perm]
                    cplans = plans
                    if basis == "random":
                        cplans = []
                        for li, p in enumerate(plans):
                            q = random_basis(p.units, seed, r, li)
                            center = centers[p.name].float() if centers is not None else None
                            cplans.append(LayerPlan(p.name, p.units, torch.zeros(p.units), q, center, p.unit_dim))
                        directions[("random", r)] = {p.name: p.basis for p in cplans}
                    curves.append(Curve(seq, lv, cplans, "random", r))
            elif o.startswith("selectivity"):
                from singledir.reliance.selectivity import class_selectivity

                src = prepared.batches if stats_batches is None else stats_batches
                sel = class_selectivity(model, src, prepared.layers, batch_size=batch_size,
                                        num_classes=prepared.num_classes, unit_dim=prepared.unit_dims,
                                        output_fn=output_fn)
                sel_map = {(r.layer, int(r.unit)): float(r.selectivity) for r in sel.itertuples()}
                a = [sel_map[(plans[li].name, u)] for li, u in pooled]
                seq = _sorted_sequence(pooled, a, np.zeros(total), descending=o.endswith("high"))
                curves.append(Curve(seq, lv, plans, o, 0))
            else:  # importance
                if imp is None:
                    imp = importance_table(ev, plans, prepared.n_examples)
                seq = _sorted_sequence(
                    pooled, imp["accuracy_drop"].to_numpy(), imp["loss_increase"].to_numpy(), o.endswith("high")
                )
                curves.append(Curve(seq, lv, plans, o, 0))

        results = ev.cumulative(curves)
        base = _base(ev, results, lv)
    return _result(prepared, plans, curves, results, lv, total, ev, base, clamp=clamp, basis=basis, seed=seed,
                   repeats=repeats, orders=orders, directions=directions)


def _base(ev, results, lv):
    if 0 in lv:
        first = results[0]
        return int(first[0][lv.index(0)]), float(first[1][lv.index(0)])
    return ev.base()


def _result(prepared, plans, curves, results, lv, total, ev, base, *, clamp, basis, seed, repeats, orders,
            directions, extra=None, seq_names=None):
    """The :class:`AblationResult` of evaluated curves."""
    base_c, base_l = base
    n = prepared.n_examples
    rows = []
    for curve, (correct, loss) in zip(curves, results):
        for i, k in enumerate(curve.levels):
            rows.append((curve.order, curve.repeat, k, k / total, correct[i] / n, loss[i] / n))
    df = pd.DataFrame(rows, columns=["order", "repeat", "k", "fraction", "accuracy", "loss"])
    sequences = {(c.order, c.repeat): [(plans[li].name, int(u)) for li, u in c.sequence] for c in curves}
    if seq_names is not None:
        sequences = seq_names
    meta = {
        "layers": list(prepared.layers),
        "units": dict(prepared.units),
        "total_units": total,
        "clamp": clamp,
        "basis": basis,
        "seed": seed,
        "repeats": repeats,
        "orders": orders,
        "levels": lv,
        "n_examples": n,
        "num_classes": prepared.num_classes,
        **path_meta(ev),
        "base_accuracy": base_c / n,
        "base_loss": base_l / n,
        **prepared.meta(),
        **(extra or {}),
    }
    return AblationResult(df, sequences, meta, directions)
