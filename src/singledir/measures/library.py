"""The generalization measures, one documented function each (raw values; orientation is in the registry).

Sources: Jiang et al. 2020 "Fantastic generalization measures and where to find them" (J20) as
implemented in nitarshan/robust-generalization-measures ``data/generation/measures.py`` (RGM); the
NeurIPS 2020 PGDL competition baselines (PGDL) and winner (Natekar & Sharma 2020, parthnatekar/pgdl);
Martin & Mahoney's WeightWatcher; Morcos et al. 2018 for reliance. Every function takes the model as
given (callers fold batch norm first where the measure says so: :func:`~.weights.fold_batchnorm`),
never changes it, and returns floats.

Offers: :func:`reliance_ablation`, :func:`reliance_noise`, :func:`distance_from_init`,
:func:`log_prod_frobenius`, :func:`log_sum_frobenius`, :func:`log_prod_spectral`, :func:`path_norm`,
:func:`output_margins`, :func:`margin_percentile`, :func:`pacbayes_sigma`, :func:`sharpness_magnitude`,
:func:`weightwatcher_summary`, :func:`jacobian_norm`, :func:`davies_bouldin_mixup`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from singledir.errors import SingledirError
from singledir.measures.weights import weight_matrices
from singledir.reliance.edits import example_noise

__all__ = [
    "davies_bouldin_mixup",
    "distance_from_init",
    "jacobian_norm",
    "log_prod_frobenius",
    "log_prod_spectral",
    "log_sum_frobenius",
    "margin_percentile",
    "output_margins",
    "pacbayes_sigma",
    "path_norm",
    "reliance_ablation",
    "reliance_noise",
    "sharpness_magnitude",
    "weightwatcher_summary",
]


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    from singledir.devices import model_device

    dev = model_device(model)
    return torch.cat([model(x[i : i + batch_size].to(dev)).double().cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    logits = _logits(model, x)  # on the host
    return float((logits.argmax(1) == y.to(logits.device)).double().mean())


# ---------------------------------------------------------------------------- reliance (Morcos et al.)
def reliance_ablation(model, x, y, layers, *, repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """Cumulative ablation of random units of ``layers`` (pooled) on training data (Morcos et al. 2018).

    Returns ``{"auc", "nauc"}``: the mean over ``repeats`` random orders of the area under accuracy vs
    ablated fraction, and that area divided by the unablated accuracy (``singledir.ablation_curves``).
    """
    from singledir import ablation_curves

    res = ablation_curves(model, (x, y), layers, order="random", repeats=repeats, seed=seed, progress=False)
    row = res.auc().iloc[0]
    return {"auc": float(row["auc_mean"]), "nauc": float(row["normalized_auc_mean"])}


def reliance_noise(model, x, y, layers, *, repeats: int = 3, seed: int = 0) -> float:
    """Normalized area under accuracy vs log10 noise scale, noise added to every unit of ``layers`` at
    once, scaled by each unit's std on the training data (``singledir.noise_curves``; 1 = no loss)."""
    from singledir import noise_curves

    res = noise_curves(model, (x, y), layers, repeats=repeats, seed=seed, progress=False)
    return float(res.auc().iloc[0]["normalized_auc_mean"])


# ---------------------------------------------------------------------------- norms (J20 / RGM)
def distance_from_init(model: nn.Module, init_model: nn.Module) -> float:
    """``sum_l ||W_l - W0_l||_F^2`` over the weight layers (RGM ``DIST_FROM_INIT``; biases excluded)."""
    w, w0 = weight_matrices(model), weight_matrices(init_model)
    if [a.shape for a in w] != [b.shape for b in w0]:
        raise SingledirError("the initial model's weight layers do not match the model's; pass the same architecture")
    return float(sum(((a - b) ** 2).sum() for a, b in zip(w, w0)))


def log_prod_frobenius(model: nn.Module) -> float:
    """``sum_l log ||W_l||_F^2`` = log of the product of squared Frobenius norms (RGM ``LOG_PROD_OF_FRO``)."""
    return float(sum(torch.log((m**2).sum()) for m in weight_matrices(model)))


def log_sum_frobenius(model: nn.Module) -> float:
    """``log d + (1/d) sum_l log ||W_l||_F^2``, d = number of layers (RGM ``LOG_SUM_OF_FRO``: the log of
    d times the geometric mean, a lower bound of the log sum that is invariant to layer-wise rescaling)."""
    mats = weight_matrices(model)
    d = len(mats)
    return math.log(d) + log_prod_frobenius(model) / d


def log_prod_spectral(model: nn.Module) -> float:
    """``sum_l log ||W_l||_2^2`` with the largest singular value of each reshaped weight (RGM
    ``LOG_PROD_OF_SPEC``; conv kernels reshaped to ``(out, in * k * k)``, not the exact conv operator)."""
    return float(sum(2 * torch.log(torch.linalg.matrix_norm(m, ord=2)) for m in weight_matrices(model)))


@torch.no_grad()
def path_norm(model: nn.Module) -> float:
    """Squared path-norm (RGM ``PATH_NORM``): square every parameter, forward an all-ones input, sum the
    outputs. For a ReLU network without batch norm this is ``sum over input-output paths of prod w^2``
    (+ bias paths). Needs ``model.config["input_shape"]``."""
    shape = getattr(model, "config", {}).get("input_shape")
    if shape is None:
        raise SingledirError("path-norm needs the model's input shape (model.config['input_shape'])")
    m = copy.deepcopy(model).eval().double()
    for p in m.parameters():
        p.copy_(p**2)
    return float(m(torch.ones((1, *shape), dtype=torch.float64, device=next(m.parameters()).device)).sum())


# ---------------------------------------------------------------------------- margin (J20 / RGM)
def output_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example: the correct logit minus the largest other logit (float64)."""
    z = _logits(model, x)
    correct = z.gather(1, y.view(-1, 1)).squeeze(1)
    z = z.clone()
    z.scatter_(1, y.view(-1, 1), -math.inf)
    return correct - z.max(1).values


def margin_percentile(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The 10th-percentile output margin on the training set: the ``(m // 10)``-th smallest margin
    (1-based, at least the first), as RGM's ``margin.kthvalue(m // 10)``."""
    mg = output_margins(model, x, y)
    return float(mg.kthvalue(max(1, len(mg) // 10)).values)


# ---------------------------------------------------------------------------- flatness
def _bisect(drop_at: Callable[[float], float], *, target: float, tolerance: float, depth: int, upper: float) -> float:
    """Bisect ``v`` in ``[0, upper]`` until ``drop_at(v)`` (an accuracy drop, rising with v) is
    ``target +- tolerance`` or ``depth`` steps are done; returns the last midpoint (RGM's search)."""
    lo, hi = 0.0, float(upper)
    v = hi
    for _ in range(depth):
        v = (lo + hi) / 2
        drop = drop_at(v)
        if abs(drop - target) < tolerance:
            break
        if drop > target:
            hi = v
        else:
            lo = v
    return float(v)


@torch.no_grad()
def pacbayes_sigma(model: nn.Module, x, y, *, magnitude_aware: bool = False, target: float = 0.1,
                   tolerance: float = 0.01, search_depth: int = 15, mc_samples: int = 10, upper: float = 2.0,
                   eps: float = 1e-3, seed: int = 0) -> float:
    """The PAC-Bayes sigma of J20 (RGM ``_pacbayes_sigma``): bisect sigma in ``[0, upper]`` until adding
    N(0, sigma^2) to every parameter lowers the mean training accuracy (``mc_samples`` draws) by
    ``target +- tolerance``. ``magnitude_aware``: the noise std of weight w is
    ``sqrt(sigma^2 w^2 + eps^2)`` (J20's magnitude-aware variant). Flatness = 1 / sigma^2.
    Seeded: the noise is drawn on the parameters' device by the counter-based generator of
    :func:`singledir.reliance.edits.example_noise`, so the same model and seed give the same sigma on every
    device (up to float rounding)."""
    base = _accuracy(model, x, y)
    noisy = copy.deepcopy(model).eval()
    params0 = [p.detach().clone() for p in model.parameters()]
    draws = [0]  # Monte-Carlo draws so far: draw d of parameter k is keyed by (seed, d, k)

    def drop_at(sigma: float) -> float:
        accs = []
        for _ in range(mc_samples):
            for k, (p, p0) in enumerate(zip(noisy.parameters(), params0)):
                # drawn on the parameter's device, the same numbers on every device up to float rounding
                z = example_noise(p0.shape, 0, 1, (seed, draws[0], k), dtype=p0.dtype, device=p0.device)[0]
                std = torch.sqrt(sigma**2 * p0**2 + eps**2) if magnitude_aware else sigma
                p.copy_(p0 + z * std)
            draws[0] += 1
            accs.append(_accuracy(noisy, x, y))
        return base - float(np.mean(accs))

    return _bisect(drop_at, target=target, tolerance=tolerance, depth=search_depth, upper=upper)


def sharpness_magnitude(model: nn.Module, x, y, *, target: float = 0.1, tolerance: float = 0.01,
                        search_depth: int = 12, ascent_steps: int = 5, upper: float = 2.0, seed: int = 0) -> float:
    """Sharpness as in the PGDL baseline: bisect a relative magnitude ``a`` in ``[0, upper]``; for each,
    start from ``w (1 + U(-a, a))`` (uniform multiplicative noise) and take ``ascent_steps`` projected
    signed-gradient ascent steps of size ``a|w| / 2`` on the training cross-entropy, keeping every weight
    in ``w +- a|w|``; stop when the training accuracy falls by ``target +- tolerance``. Returns ``a``;
    the sharpness complexity is 1 / a^2. (The ascent rule is ours -- the baseline used an optimizer step
    -- chosen so the step scales with the box.)"""
    from singledir.devices import model_device

    base = _accuracy(model, x, y)
    pert = copy.deepcopy(model).eval()
    params0 = [p.detach().clone() for p in model.parameters()]
    dev = model_device(model)
    xd, yd = x.to(dev), y.to(dev)
    draws = [0]

    def drop_at(a: float) -> float:
        with torch.no_grad():
            for k, (p, p0) in enumerate(zip(pert.parameters(), params0)):
                # U(-1, 1) as erf(z / sqrt 2) of a standard normal drawn on the parameter's device
                z = example_noise(p0.shape, 0, 1, (seed, draws[0], k), dtype=torch.float32, device=p0.device)[0]
                u = torch.erf(z * 0.7071067811865476).to(p0.dtype)
                p.copy_(p0 * (1 + a * u))
            draws[0] += 1
        for _ in range(ascent_steps):
            pert.zero_grad(set_to_none=True)
            F.cross_entropy(pert(xd), yd).backward()
            with torch.no_grad():
                for p, p0 in zip(pert.parameters(), params0):
                    if p.grad is None:
                        continue
                    box = a * p0.abs()
                    p.add_(p.grad.sign() * box / 2)
                    p.copy_(torch.maximum(torch.minimum(p, p0 + box), p0 - box))
        pert.zero_grad(set_to_none=True)
        return base - _accuracy(pert, x, y)

    return _bisect(drop_at, target=target, tolerance=tolerance, depth=search_depth, upper=upper)


# ---------------------------------------------------------------------------- others
def weightwatcher_summary(model: nn.Module) -> dict[str, float]:
    """``weightwatcher.WeightWatcher(model=model).analyze()`` then ``get_summary()``: the mean power-law
    exponent ``alpha`` of the layers' eigenvalue spectra and ``alpha_weighted`` (alpha x log10 of the
    largest eigenvalue), Martin & Mahoney 2021. WeightWatcher skips layers smaller than its minimum size;
    a model with no analysable layer is an error. Its console output is suppressed."""
    import logging
    import warnings

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its own deprecation warnings, not the user's business
        import weightwatcher as ww

        watcher = ww.WeightWatcher(model=copy.deepcopy(model).cpu())
        details = watcher.analyze()
        summary = watcher.get_summary(details)
    if len(details) == 0 or "alpha" not in summary or not np.isfinite(summary["alpha"]):
        raise SingledirError("WeightWatcher found no layer large enough to analyse (all weight matrices too small)")
    return {"alpha": float(summary["alpha"]), "alpha_weighted": float(summary["alpha_weighted"])}


def jacobian_norm(model: nn.Module, x: torch.Tensor) -> float:
    """The PGDL baseline's Jacobian norm: the mean over examples of ``||d logits / d input||_F^2`` (one
    backward pass per class; examples are independent in eval mode)."""
    from singledir.devices import model_device

    m = copy.deepcopy(model).eval()
    xd = x.to(model_device(model)).clone().requires_grad_(True)
    out = m(xd)
    total = 0.0
    for c in range(out.shape[1]):
        (g,) = torch.autograd.grad(out[:, c].sum(), xd, retain_graph=c + 1 < out.shape[1])
        total += float((g.double() ** 2).sum())
    return total / len(x)


def davies_bouldin_mixup(model: nn.Module, x, y, layer: str, *, seed: int = 0) -> dict[str, float]:
    """The PGDL winner's measure (Natekar & Sharma 2020): the Davies-Bouldin index of the ``layer``
    representations clustered by label (``sklearn.metrics.davies_bouldin_score``; larger = worse
    separated), times the error on label-wise mixup inputs ``(x_i + x_j) / 2`` of two same-class examples
    (mixing weight 0.5, pairs drawn with a seeded permutation within each class).

    Returns ``{"db", "mixup_acc", "value"}`` with ``value = db * (1 - mixup_acc)``."""
    from sklearn.metrics import davies_bouldin_score

    feats = []
    mod = model.get_submodule(layer)
    h = mod.register_forward_hook(lambda _m, _i, out: feats.append(out.detach().flatten(1).double().cpu()))
    try:
        _logits(model, x)
    finally:
        h.remove()
    f = torch.cat(feats).numpy()
    labels = y.numpy()
    if len(np.unique(labels)) < 2:
        raise SingledirError("Davies-Bouldin needs examples of at least 2 classes")
    db = float(davies_bouldin_score(f, labels))
    gen = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).squeeze(1)
        if len(idx) < 2:
            continue
        perm = idx[torch.randperm(len(idx), generator=gen)]
        xs.append((x[idx] + x[perm]) / 2)
        ys.append(y[idx])
    mix_acc = _accuracy(model, torch.cat(xs), torch.cat(ys))
    return {"db": db, "mixup_acc": mix_acc, "value": db * (1.0 - mix_acc)}
