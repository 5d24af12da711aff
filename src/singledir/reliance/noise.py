"""Noise curves: accuracy when Gaussian noise scaled per unit is added to every unit of the layers at once.

Offers :func:`noise_curves`, its result :class:`NoiseResult` (``.curves``, ``.auc()``,
``.auc_per_curve()``, ``.meta``) and :data:`DEFAULT_SCALES`.

Noise model: unit j of every listed layer gets ``s * sigma_j * z`` with ``sigma_j`` the unit's std over
``stats_data`` (default ``data``; over N*H*W for a feature map) and ``z`` standard normal, drawn anew for
every example, spatial position, layer and repeat. The draw of example i depends only on (seed, repeat,
layer, i) -- not on batching -- and is shared by all scales of a repeat (common random numbers: the
curve of a repeat is smooth in s, the repeats are independent).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from singledir import stats
from singledir.errors import SingledirError
from singledir.reliance.common import (
    check_budget,
    check_method,
    layer_plans,
    prepare,
)
from singledir.reliance.evaluators import make_evaluator, path_meta
from singledir.reliance.hooks import model_guard
from singledir.reliance.units import unit_stats
from singledir.reliance.inputs import as_batches, check_repeats, check_seed
from singledir.reliance.plan import NoisePlan

__all__ = ["DEFAULT_SCALES", "NoiseResult", "noise_curves"]

#: Default noise scales s (std = s * sigma_j): 11 points from 10^-1.5 to 10^1, log-spaced.
DEFAULT_SCALES = np.logspace(-1.5, 1.0, 11)


@dataclass
class NoiseResult:
    """Noise curves: ``curves`` DataFrame (``scale, repeat, accuracy, loss``) and ``meta`` (layers, units,
    scales, repeats, seed, n_examples, base accuracy/loss, sigma per layer, and the path: ``method`` taken,
    ``method_requested``, ``fallback_reason``)."""

    curves: pd.DataFrame
    meta: dict

    def auc_per_curve(self) -> pd.DataFrame:
        """One row per repeat: ``auc`` (:func:`singledir.stats.noise_auc`, trapezoid of accuracy over
        log10(scale)) and ``normalized_auc`` (:func:`singledir.stats.noise_auc_base_normalized`: divided by
        the log10 range and the noise-free accuracy, 1 = no loss at any scale)."""
        base = self.meta["base_accuracy"]
        rows = []
        for rep, g in self.curves.groupby("repeat", sort=True):
            s, a = g["scale"].to_numpy(), g["accuracy"].to_numpy()
            rows.append({"repeat": int(rep), "auc": stats.noise_auc(s, a),
                         "normalized_auc": stats.noise_auc_base_normalized(s, a, base), "base_accuracy": base})
        return pd.DataFrame(rows, columns=["repeat", "auc", "normalized_auc", "base_accuracy"])

    def auc(self, confidence: float = 0.95, n_boot: int = 2000) -> pd.DataFrame:
        """One row: mean, std (ddof=1) and seeded bootstrap interval of the raw and normalized AUC."""
        per = self.auc_per_curve()
        row = {"n_curves": len(per)}
        for col in ("auc", "normalized_auc"):
            s = stats.mean_std_ci(per[col].to_numpy(), n_boot=n_boot, confidence=confidence, seed=self.meta["seed"])
            row.update({f"{col}_{k}": v for k, v in s.items()})
        row["base_accuracy"] = self.meta["base_accuracy"]
        return pd.DataFrame([row])


def _check_scales(scales) -> list[float]:
    if scales is None:
        return [float(s) for s in DEFAULT_SCALES]
    arr = np.atleast_1d(np.asarray(scales, dtype=float)) if not isinstance(scales, str) else None
    if arr is None or arr.ndim != 1 or arr.size == 0:
        raise SingledirError(f"scales must be a non-empty list of positive numbers, got {scales!r}")
    if not np.all(np.isfinite(arr)):
        raise SingledirError(f"scales must be finite positive numbers, got {list(arr)}")
    if np.any(arr < 0):
        raise SingledirError(f"noise scales must be positive, got negative {float(arr[arr < 0][0])}; drop it")
    if np.any(arr == 0):
        raise SingledirError("noise scale 0 is not allowed (log axis); the noise-free accuracy is reported as base_accuracy")
    if len(np.unique(arr)) != len(arr):
        raise SingledirError("noise scales contain duplicates; list each scale once")
    return [float(s) for s in np.sort(arr)]


def noise_curves(
    model,
    data,
    layers,
    *,
    scales=None,
    repeats: int = 5,
    stats_data=None,
    seed: int = 0,
    unit_dim=None,
    output_fn=None,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool = False,
    method: str = "auto",
) -> NoiseResult:
    """Accuracy and loss on ``data`` with noise ``s * sigma_j`` added to every unit of ``layers`` at once.

    ``scales``: positive s values (default :data:`DEFAULT_SCALES`, 10^-1.5 .. 10^1); ``repeats``
    independent noise draws; ``sigma_j`` from ``stats_data`` (default ``data``). ``method`` as in
    :func:`~.ablation.ablation_curves` (all methods give the same numbers for the same seed); ``unit_dim`` and
    ``output_fn`` too (noise is drawn at every position of a unit; its sigma pools the non-padding
    positions). Returns a
    :class:`NoiseResult`; ``.auc()`` integrates accuracy over log10(s). The model is handed back unchanged.

    Example::

        res = sd.noise_curves(model, (x_train, y_train), ["hidden.0", "hidden.1"], repeats=5)
        res.curves.groupby("scale").accuracy.mean(); res.auc()
    """
    method = check_method(method)
    memory_budget = check_budget(memory_budget)
    scales = _check_scales(scales)
    repeats = check_repeats(repeats)
    seed = check_seed(seed)
    with model_guard(model), torch.no_grad():
        prepared = prepare(model, data, layers, batch_size, unit_dim=unit_dim, output_fn=output_fn)
        src = prepared.batches if stats_data is None else as_batches(stats_data, batch_size)
        st = unit_stats(model, src, prepared.layers, unit_dims=prepared.unit_dims)
        plans = layer_plans(model, prepared, "zero")
        for p in plans:
            if st[p.name].std.shape[0] != p.units:
                raise SingledirError(f"stats_data gives {st[p.name].std.shape[0]} units for layer {p.name!r}, data gives {p.units}")
        plan = NoisePlan([st[n].std for n in prepared.layers], scales, repeats, seed, list(prepared.layers))
        ev = make_evaluator(method, model, prepared.batches, plans, memory_budget, progress, output_fn)
        base_c, base_l = ev.base()
        correct, loss = ev.noise(plan)
    n = prepared.n_examples
    rows = [
        (scales[s], r, correct[r, s] / n, loss[r, s] / n) for r in range(repeats) for s in range(len(scales))
    ]
    df = pd.DataFrame(rows, columns=["scale", "repeat", "accuracy", "loss"])
    meta = {
        "layers": list(prepared.layers),
        "units": dict(prepared.units),
        "scales": scales,
        "repeats": repeats,
        "seed": seed,
        "n_examples": n,
        "num_classes": prepared.num_classes,
        **path_meta(ev),
        "base_accuracy": base_c / n,
        "base_loss": base_l / n,
        "sigma": {name: st[name].std.clone() for name in prepared.layers},
        **prepared.meta(),
    }
    return NoiseResult(df, meta)
