"""Single-unit importance: the accuracy drop and loss rise when one unit alone is ablated.

Offers :func:`unit_importance` (one DataFrame row per unit) and :func:`importance_table` (the same from an
already prepared evaluator, used by the importance orders of :func:`~.ablation.ablation_curves`).
"""

from __future__ import annotations

import pandas as pd
import torch

from singledir.reliance.common import check_budget, check_method, layer_plans, prepare
from singledir.reliance.evaluators import make_evaluator, path_meta
from singledir.reliance.hooks import model_guard
from singledir.reliance.results import Table

__all__ = ["IMPORTANCE_COLUMNS", "importance_table", "unit_importance"]

IMPORTANCE_COLUMNS = [
    "layer",
    "unit",
    "accuracy_drop",
    "loss_increase",
    "accuracy",
    "loss",
    "base_accuracy",
    "base_loss",
]


def importance_table(evaluator, plans, n_examples: int) -> pd.DataFrame:
    """Ablate every unit of every plan's layer alone with ``evaluator``; one row per unit."""
    units = [(li, u) for li, p in enumerate(plans) for u in range(p.units)]
    base_c, base_l = evaluator.base()
    correct, loss = evaluator.singles(plans, units)
    df = pd.DataFrame(
        {
            "layer": [plans[li].name for li, _ in units],
            "unit": [u for _, u in units],
            "accuracy": correct / n_examples,
            "loss": loss / n_examples,
        }
    )
    df["base_accuracy"] = base_c / n_examples
    df["base_loss"] = base_l / n_examples
    df["accuracy_drop"] = df["base_accuracy"] - df["accuracy"]
    df["loss_increase"] = df["loss"] - df["base_loss"]
    return df[IMPORTANCE_COLUMNS]


def unit_importance(
    model,
    data,
    layers,
    *,
    clamp: str = "zero",
    stats_data=None,
    unit_dim=None,
    output_fn=None,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool = False,
    method: str = "auto",
) -> Table:
    """Accuracy drop and loss increase on ``data`` when each unit of ``layers`` alone is ablated.

    ``clamp``: "zero" or "mean" (the unit's mean over ``stats_data``, default ``data``; a conv map is set
    to that constant everywhere). ``method``: "auto" (fast fx path, batched hooks if the model cannot
    be traced), "fast", "hooks" or "reference" (one full forward pass per unit) -- all give the same
    numbers. ``unit_dim``, ``output_fn``: as in :func:`~.ablation.ablation_curves`. Returns a
    :class:`~.results.Table` (a DataFrame), one row per unit: ``layer, unit, accuracy_drop,
    loss_increase, accuracy, loss, base_accuracy, base_loss`` (loss = mean cross-entropy); ``.meta``
    (= ``.attrs``) holds ``clamp``, ``n_examples``, ``unit_dims`` and the path: ``method`` (taken),
    ``method_requested``, ``fallback_reason``. The model is handed back unchanged.

    Example::

        imp = sd.unit_importance(model, (x_test, y_test), ["hidden.0", "hidden.1"])
        imp.sort_values("accuracy_drop", ascending=False).head()
    """
    method = check_method(method)
    memory_budget = check_budget(memory_budget)
    with model_guard(model), torch.no_grad():
        prepared = prepare(model, data, layers, batch_size, unit_dim=unit_dim, output_fn=output_fn)
        plans = layer_plans(model, prepared, clamp, stats_data, batch_size)
        ev = make_evaluator(method, model, prepared.batches, plans, memory_budget, progress, output_fn)
        df = Table(importance_table(ev, plans, prepared.n_examples))
    df.attrs.update({"clamp": clamp, **path_meta(ev), "n_examples": prepared.n_examples, **prepared.meta()})
    return df
