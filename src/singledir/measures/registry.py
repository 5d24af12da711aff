"""The measure registry: what each generalization measure is, where it comes from, how it is oriented.

- :class:`Measure` -- one entry: the group that computes its raw values, how its raw value is picked,
  how it becomes a complexity (larger predicts a larger generalization gap), its source and normalization.
- :data:`MEASURES` -- ``{name: Measure}`` in report order; :func:`measure_names`.
- :data:`FAMILIES` -- the family of each group (norm-based, margin-based, ...), ``Measure.family``.
- :class:`MeasureSettings` -- subset sizes and search depths of the expensive measures.
- :data:`COLUMNS` -- the columns of :func:`singledir.measures.measure_all`'s table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from singledir.errors import SingledirError

__all__ = ["COLUMNS", "FAMILIES", "MEASURES", "Measure", "MeasureSettings", "measure_names"]

COLUMNS = ["name", "raw", "complexity", "seconds", "error", "source", "normalization"]


@dataclass
class MeasureSettings:
    """Sizes of the training subsets the expensive measures use, and their search settings.

    Subsets are the first n examples of a permutation of the training set seeded with ``seed`` (so
    every model of a zoo sees the same examples). Margins and norms use the whole training set.
    """

    n_reliance: int = 1000
    reliance_repeats: int = 3
    n_flatness: int = 1000
    mc_samples: int = 10
    search_depth: int = 15
    sharpness_depth: int = 12
    sharpness_steps: int = 5
    n_jacobian: int = 512
    n_db: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "seed" else 1):
                raise SingledirError(f"measure setting {k} must be an integer >= {0 if k == 'seed' else 1}, got {v!r}")


@dataclass(frozen=True)
class Measure:
    """One registry entry: ``group`` computes raw values (shared by several measures); ``raw`` picks or
    derives this measure's value from them; ``complexity(raw, m)`` orients and normalizes it."""

    name: str
    group: str
    raw: Callable[[dict], float]
    complexity: Callable[[float, int], float]
    source: str
    normalization: str
    needs: tuple[str, ...] = field(default=())

    @property
    def family(self) -> str:
        """What kind of measure this is (:data:`FAMILIES` of its group), e.g. ``"norm-based"``."""
        return FAMILIES[self.group]


#: The family of each group's measures, as the zoo report groups them (Jiang et al. 2020 group theirs alike).
FAMILIES: dict[str, str] = {
    "reliance_ablation": "reliance on single directions", "reliance_noise": "reliance on single directions",
    "distance": "norm-based", "norms": "norm-based", "margin": "margin-based",
    "pacbayes": "sharpness / flatness", "pacbayes_mag": "sharpness / flatness", "sharpness": "sharpness / flatness",
    "weightwatcher": "spectral (WeightWatcher)", "jacobian": "input sensitivity (Jacobian)",
    "db_mixup": "representation geometry",
}


def _sqrt_norm(v, m):
    return math.sqrt(v / m)


def _log_norm(v, m):
    return (v - math.log(m)) / 2


def _positive_margin(r) -> float:
    mg = r["margin"]["p10"]
    if not mg > 0:
        raise SingledirError(f"the 10th-percentile training margin is {mg:.4g} <= 0; margin-normalized measures are undefined")
    return mg


_J20 = "Jiang et al. 2020 (Fantastic), nitarshan/robust-generalization-measures"
_M = [
    Measure("reliance_ablation_auc", "reliance_ablation", lambda r: r["reliance_ablation"]["auc"], lambda v, m: 1 - v,
            "Morcos et al. 2018; cumulative random ablation of all unit layers, training subset", "1 - AUC"),
    Measure("reliance_ablation_nauc", "reliance_ablation", lambda r: r["reliance_ablation"]["nauc"], lambda v, m: 1 - v,
            "Morcos et al. 2018; AUC / unablated accuracy, training subset", "1 - nAUC"),
    Measure("reliance_noise_nauc", "reliance_noise", lambda r: r["reliance_noise"]["nauc"], lambda v, m: 1 - v,
            "Morcos et al. 2018; noise on all unit layers, normalized AUC over log10 scale, training subset",
            "1 - nAUC"),
    Measure("distance_from_init", "distance", lambda r: r["distance"]["value"], _sqrt_norm,
            _J20 + " DIST_FROM_INIT: sum ||W - W0||_F^2", "sqrt(v / m)"),
    Measure("log_prod_frobenius", "norms", lambda r: r["norms"]["log_prod_fro"], _log_norm,
            _J20 + " LOG_PROD_OF_FRO", "(v - log m) / 2"),
    Measure("log_sum_frobenius", "norms", lambda r: r["norms"]["log_sum_fro"], _log_norm,
            _J20 + " LOG_SUM_OF_FRO", "(v - log m) / 2"),
    Measure("log_prod_spectral", "norms", lambda r: r["norms"]["log_prod_spec"], _log_norm,
            _J20 + " LOG_PROD_OF_SPEC (reshaped kernels)", "(v - log m) / 2"),
    Measure("path_norm", "norms", lambda r: r["norms"]["path_norm"], _sqrt_norm,
            _J20 + " PATH_NORM", "sqrt(v / m)"),
    Measure("margin_p10", "margin", lambda r: r["margin"]["p10"], lambda v, m: -v,
            _J20 + " 10th-percentile output margin on the training set", "-margin"),
    Measure("inverse_margin", "margin", lambda r: 1.0 / _positive_margin(r) ** 2, _sqrt_norm,
            _J20 + " INVERSE_MARGIN = 1 / margin^2", "sqrt(v / m)"),
    Measure("log_spectral_over_margin", "margin",
            lambda r: r["norms"]["log_prod_spec"] - 2 * math.log(_positive_margin(r)), _log_norm,
            _J20 + " LOG_SPEC_OVER_MARGIN: log(prod ||W||_2^2 / margin^2)", "(v - log m) / 2", ("norms",)),
    Measure("log_frobenius_over_margin", "margin",
            lambda r: r["norms"]["log_prod_fro"] - 2 * math.log(_positive_margin(r)), _log_norm,
            _J20 + " LOG_PROD_OF_FRO_OVER_MARGIN: log(prod ||W||_F^2 / margin^2)", "(v - log m) / 2", ("norms",)),
    Measure("path_norm_over_margin", "margin", lambda r: r["norms"]["path_norm"] / _positive_margin(r) ** 2,
            _sqrt_norm, _J20 + " PATH_NORM_OVER_MARGIN", "sqrt(v / m)", ("norms",)),
    Measure("pacbayes_flatness", "pacbayes", lambda r: r["pacbayes"]["sigma"], lambda v, m: _sqrt_norm(1 / v**2, m),
            _J20 + " PACBAYES_FLATNESS: raw = sigma (accuracy drop 0.1), complexity from 1 / sigma^2",
            "sqrt(1 / (sigma^2 m))"),
    Measure("pacbayes_mag_flatness", "pacbayes_mag", lambda r: r["pacbayes_mag"]["sigma"],
            lambda v, m: _sqrt_norm(1 / v**2, m),
            _J20 + " PACBAYES_MAG_FLATNESS: noise std sqrt(sigma^2 w^2 + 1e-6)", "sqrt(1 / (sigma^2 m))"),
    Measure("sharpness", "sharpness", lambda r: r["sharpness"]["magnitude"], lambda v, m: _sqrt_norm(1 / v**2, m),
            "PGDL baseline sharpness (bisected relative magnitude with ascent; see library.sharpness_magnitude)",
            "sqrt(1 / (a^2 m))"),
    Measure("ww_alpha", "weightwatcher", lambda r: r["weightwatcher"]["alpha"], lambda v, m: v,
            "Martin & Mahoney 2021, weightwatcher package get_summary()['alpha']", "none"),
    Measure("ww_alpha_weighted", "weightwatcher", lambda r: r["weightwatcher"]["alpha_weighted"], lambda v, m: v,
            "Martin & Mahoney 2021, weightwatcher package get_summary()['alpha_weighted']", "none"),
    Measure("jacobian_norm", "jacobian", lambda r: r["jacobian"]["value"], lambda v, m: v,
            "PGDL baseline: mean ||d logits / d x||_F^2 on a training subset", "none"),
    Measure("db_mixup", "db_mixup", lambda r: r["db_mixup"]["value"], lambda v, m: v,
            "PGDL winner (Natekar & Sharma 2020): Davies-Bouldin of the first unit layer x (1 - mixup accuracy)",
            "none"),
]
MEASURES: dict[str, Measure] = {m.name: m for m in _M}


def measure_names() -> list[str]:
    """Every registered measure, in registry order."""
    return list(MEASURES)
