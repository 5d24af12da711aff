"""Running the registry on one network: :func:`measure_all` (a model and its training data) and
:func:`measure_run` (a run directory).

A measure that is *undefined* for this network (a :class:`SingledirError` such as "no initial weights" or
"margin <= 0", an arithmetic or linear-algebra failure, a missing optional package) is a row with its
reason in ``error``. Any other exception is a bug and propagates: it never becomes a missing cell.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from singledir.errors import SingledirError
from singledir.measures import library
from singledir.measures.registry import COLUMNS, MEASURES, MeasureSettings
from singledir.measures.weights import fold_batchnorm, initial_model

__all__ = ["UNDEFINED", "measure_all", "measure_run"]

# What a measure may raise when it is not defined for a network (recorded with its reason); anything
# else is a bug and propagates.
UNDEFINED = (SingledirError, ArithmeticError, torch.linalg.LinAlgError, ImportError)


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

def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if not isinstance(err, SingledirError) else text


def measure_all(model: torch.nn.Module, train_data, *, init_model: torch.nn.Module | None = None,
                names: Sequence[str] | None = None, layers: Sequence[str] | None = None,
                num_train: int | None = None, settings: MeasureSettings | None = None,
                device=None) -> pd.DataFrame:
    """Every measure in ``names`` (default: all of :data:`MEASURES`) of ``model`` on ``train_data``.

    ``train_data``: ``(x, y)`` tensors -- the training set with the labels the model was trained on.
    ``init_model``: the same architecture with its initial weights (for distance from initialization).
    ``layers``: unit layers for the reliance and Davies-Bouldin measures (default
    :func:`singledir.models.unit_layers`). ``num_train``: m of the normalizations (default ``len(x)``).
    ``device``: where the measures run (default: where ``model``'s parameters are); the inputs are moved
    there, and the models are copied there when they live elsewhere (the labels stay on the CPU).
    Returns one row per measure (columns :data:`COLUMNS`); undefined measures are rows with ``error`` set
    (see the module docstring; any other exception propagates). The model is handed back exactly as it
    came: every submodule's training flag and hooks restored (:func:`singledir.reliance.hooks.model_guard`).
    """
    from singledir.devices import model_device, resolve_device
    from singledir.models import unit_layers
    from singledir.reliance.hooks import model_guard

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
    dev = model_device(model) if device is None else resolve_device(device)
    if model_device(model) != dev:
        model = copy.deepcopy(model).to(dev)
    if init_model is not None and model_device(init_model) != dev:
        init_model = copy.deepcopy(init_model).to(dev)
    y = y.long().cpu()
    x = x.float().to(dev)
    if layers is None:
        try:
            layers = unit_layers(model)
        except SingledirError:
            layers = []
    m = int(num_train or len(x))
    raws: dict[str, dict] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    wanted = {MEASURES[n].group for n in names} | {g for n in names for g in MEASURES[n].needs}
    bad_params = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    with model_guard(model):
        ctx = _Context(model, x, y, init_model, list(layers), settings)
        for g in _GROUPS:
            if g not in wanted:
                continue
            if bad_params:
                errors[g] = f"the weights {bad_params[0]!r} contain NaN or inf (diverged training); no measure is defined"
                continue
            t0 = time.perf_counter()
            try:
                raws[g] = _GROUPS[g](ctx)
            except UNDEFINED as err:  # undefined for this network: recorded with its reason
                errors[g] = _reason(err)
            seconds[g] = time.perf_counter() - t0
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

    run = load_run(run_dir)
    ds = run.data
    return measure_all(run.model, (ds.x_train, ds.y_train), init_model=initial_model(run_dir), names=names,
                       settings=settings, device=resolve_device(device))
