"""Generalization measures of one trained network, oriented as complexities, with the registry that runs them.

Offers:

- :data:`MEASURES` -- the registry: ``{name: Measure}``; each :class:`Measure` names its source, how its
  raw value becomes a complexity (larger predicts a larger generalization gap) and the normalization.
- :func:`measure_all` -- every (or the named) measure of a model on its training data ->
  a DataFrame, one row per measure: ``name, raw, complexity, seconds, error, source, normalization``.
  A measure that fails (NaN, a diverged net, a layer it cannot read) gets ``error`` = its reason and NaN
  values; it never stops the others.
- :func:`measure_run` -- the same for a run directory made by ``singledir train`` (its training labels,
  its initial weights from the epoch-0 checkpoint or rebuilt from the seed).
- :class:`MeasureSettings` -- the training-subset sizes and search depths of the expensive measures.
- The measure functions themselves (:mod:`.library`) and the weight helpers (:mod:`.weights`).

Normalization (Jiang et al. 2020 as implemented in nitarshan/robust-generalization-measures): with m
the training-set size, non-log norm measures enter as ``sqrt(v / m)`` and log measures as
``(v - log m) / 2``; batch norm is folded into the preceding weights before any norm measure.

Example::

    import singledir as sd
    table = sd.measures.measure_run("runs/mlp-w128")          # or measure_all(model, (x, y), init_model=m0)
    table.set_index("name")["complexity"]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from singledir.errors import SingledirError
from singledir.measures import library
from singledir.measures.library import *  # noqa: F401,F403 - the measure functions are part of this API
from singledir.measures.weights import fold_batchnorm, initial_model, weight_layers, weight_matrices

__all__ = [
    "MEASURES",
    "Measure",
    "MeasureSettings",
    "fold_batchnorm",
    "initial_model",
    "measure_all",
    "measure_names",
    "measure_run",
    "weight_layers",
    "weight_matrices",
    *library.__all__,
]


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


class _Context:
    """What the measure groups read: the model, its folded copy, the data subsets, the initial model."""

    def __init__(self, model, x, y, init_model, layers, settings: MeasureSettings):
        self.model, self.x, self.y, self.init, self.layers, self.s = model, x, y, init_model, layers, settings
        self.perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(settings.seed))
        self._folded = None

    def subset(self, n: int):
        idx = self.perm[:n]
        return self.x[idx], self.y[idx]

    def folded(self):
        if self._folded is None:
            self._folded = fold_batchnorm(self.model)
        return self._folded

    def need_layers(self):
        if not self.layers:
            raise SingledirError("no unit layers: pass layers=[...] (dotted names of post-ReLU modules)")
        return self.layers


def _g_reliance_ablation(c: _Context):
    x, y = c.subset(c.s.n_reliance)
    return library.reliance_ablation(c.model, x, y, c.need_layers(), repeats=c.s.reliance_repeats, seed=c.s.seed)


def _g_reliance_noise(c: _Context):
    x, y = c.subset(c.s.n_reliance)
    return {"nauc": library.reliance_noise(c.model, x, y, c.need_layers(), repeats=c.s.reliance_repeats, seed=c.s.seed)}


def _g_distance(c: _Context):
    if c.init is None:
        raise SingledirError("no initial weights given (init_model); distance from initialization needs them")
    return {"value": library.distance_from_init(c.folded(), fold_batchnorm(c.init))}


def _g_norms(c: _Context):
    f = c.folded()
    return {
        "log_prod_fro": library.log_prod_frobenius(f),
        "log_sum_fro": library.log_sum_frobenius(f),
        "log_prod_spec": library.log_prod_spectral(f),
        "path_norm": library.path_norm(f),
    }


def _g_margin(c: _Context):
    return {"p10": library.margin_percentile(c.model, c.x, c.y)}


def _g_pacbayes(c: _Context, mag: bool):
    x, y = c.subset(c.s.n_flatness)
    sigma = library.pacbayes_sigma(c.folded(), x, y, magnitude_aware=mag, search_depth=c.s.search_depth,
                                   mc_samples=c.s.mc_samples, seed=c.s.seed)
    return {"sigma": sigma}


def _g_sharpness(c: _Context):
    x, y = c.subset(c.s.n_flatness)
    return {"magnitude": library.sharpness_magnitude(c.folded(), x, y, search_depth=c.s.sharpness_depth,
                                                     ascent_steps=c.s.sharpness_steps, seed=c.s.seed)}


def _g_jacobian(c: _Context):
    x, _ = c.subset(c.s.n_jacobian)
    return {"value": library.jacobian_norm(c.model, x)}


def _g_db(c: _Context):
    x, y = c.subset(c.s.n_db)
    return library.davies_bouldin_mixup(c.model, x, y, c.need_layers()[0], seed=c.s.seed)


_GROUPS: dict[str, Callable[[_Context], dict]] = {
    "reliance_ablation": _g_reliance_ablation,
    "reliance_noise": _g_reliance_noise,
    "distance": _g_distance,
    "norms": _g_norms,
    "margin": _g_margin,
    "pacbayes": lambda c: _g_pacbayes(c, False),
    "pacbayes_mag": lambda c: _g_pacbayes(c, True),
    "sharpness": _g_sharpness,
    "weightwatcher": lambda c: library.weightwatcher_summary(c.folded()),
    "jacobian": _g_jacobian,
    "db_mixup": _g_db,
}

COLUMNS = ["name", "raw", "complexity", "seconds", "error", "source", "normalization"]


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if not isinstance(err, SingledirError) else text


def measure_all(model: torch.nn.Module, train_data, *, init_model: torch.nn.Module | None = None,
                names: Sequence[str] | None = None, layers: Sequence[str] | None = None,
                num_train: int | None = None, settings: MeasureSettings | None = None) -> pd.DataFrame:
    """Every measure in ``names`` (default: all of :data:`MEASURES`) of ``model`` on ``train_data``.

    ``train_data``: ``(x, y)`` tensors -- the training set with the labels the model was trained on.
    ``init_model``: the same architecture with its initial weights (for distance from initialization).
    ``layers``: unit layers for the reliance and Davies-Bouldin measures (default
    :func:`singledir.models.unit_layers`). ``num_train``: m of the normalizations (default ``len(x)``).
    Returns one row per measure (columns :data:`COLUMNS`); failures are rows with ``error`` set. The model
    is not changed (measures work on copies; it is handed back in the mode it came in).
    """
    from singledir.models import unit_layers

    settings = settings or MeasureSettings()
    names = list(MEASURES) if names is None else list(names)
    unknown = [n for n in names if n not in MEASURES]
    if unknown:
        raise SingledirError(f"unknown measure {unknown[0]!r}; choose from {', '.join(MEASURES)}")
    if not (isinstance(train_data, (tuple, list)) and len(train_data) == 2):
        raise SingledirError("train_data must be a pair (x, y) of tensors: the training inputs and labels")
    x, y = (torch.as_tensor(t) for t in train_data)
    if len(x) != len(y) or len(x) < 2:
        raise SingledirError(f"train_data has {len(x)} inputs and {len(y)} labels; pass at least 2 of each, equal counts")
    y = y.long().cpu()
    x = x.float().cpu()
    if layers is None:
        try:
            layers = unit_layers(model)
        except SingledirError:
            layers = []
    m = int(num_train or len(x))
    was_training = model.training
    model.eval()
    ctx = _Context(model, x, y, init_model, list(layers), settings)
    raws: dict[str, dict] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    wanted = {MEASURES[n].group for n in names} | {g for n in names for g in MEASURES[n].needs}
    bad_params = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    try:
        for g in _GROUPS:
            if g not in wanted:
                continue
            if bad_params:
                errors[g] = f"the weights {bad_params[0]!r} contain NaN or inf (diverged training); no measure is defined"
                continue
            t0 = time.perf_counter()
            try:
                raws[g] = _GROUPS[g](ctx)
            except Exception as err:  # noqa: BLE001 - a failing measure is recorded, never fatal
                errors[g] = _reason(err)
            seconds[g] = time.perf_counter() - t0
    finally:
        model.train(was_training)
    rows = []
    for n in names:
        meas = MEASURES[n]
        deps = (meas.group, *meas.needs)
        row = {"name": n, "raw": float("nan"), "complexity": float("nan"), "error": None,
               "seconds": float(sum(seconds.get(d, 0.0) for d in deps)),
               "source": meas.source, "normalization": meas.normalization}
        bad = next((d for d in deps if d in errors), None)
        if bad is not None:
            row["error"] = errors[bad]
        else:
            try:
                v = float(meas.raw(raws))
                cx = float(meas.complexity(v, m))
                if not (np.isfinite(v) and np.isfinite(cx)):
                    raise SingledirError(f"the value is not finite ({v!r}); the network may have diverged")
                row["raw"], row["complexity"] = v, cx
            except (SingledirError, ArithmeticError, ValueError) as err:
                row["error"] = _reason(err)
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def measure_run(run_dir, *, names: Sequence[str] | None = None, settings: MeasureSettings | None = None,
                device: str = "cpu") -> pd.DataFrame:
    """:func:`measure_all` for a complete run directory: final weights, the labels it trained on, its
    initial weights (:func:`~.weights.initial_model`), and m = its training-set size. ``device``: where
    the model is evaluated ("cpu" or "cuda")."""
    from singledir.devices import resolve_device
    from singledir.training import load_run

    dev = resolve_device(device)
    run = load_run(run_dir)
    ds = run.data
    return measure_all(run.model.to(dev), (ds.x_train, ds.y_train), init_model=initial_model(run_dir), names=names,
                       settings=settings)
