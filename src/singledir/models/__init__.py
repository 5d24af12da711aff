"""Model registry: build the paper's networks by name; unit layers are dotted module names.

``build_model(name, input_shape, num_classes, ...)`` builds one of :data:`MODELS`:

- ``mlp`` (:mod:`.mlp`): flatten -> ``width`` x ``depth`` ReLU layers -> classes. Unit layers
  ``hidden.0``, ``hidden.1``. Uses ``width``, ``depth``, ``dropout``, ``batchnorm`` (default False);
  ignores ``width_mult``.
- ``convnet`` (:mod:`.convnet`): the paper's 11-layer CIFAR ConvNet (channels scaled by ``width_mult``).
  Unit layers are the ReLUs of ``features``. ``batchnorm`` default True; ignores ``width``.
- ``resnet`` (:mod:`.resnet`): small ResNet-18-style network. Unit layers ``stem``, ``layer1.0`` ...
  ``layer4.1``. ``batchnorm`` default True; ignores ``width``.

Every model has ``model.unit_layers`` (``model.get_submodule(name)``'s output is the post-ReLU
activation, units on dim 1) and ``model.config`` (JSON-able; ``build_model(**model.config)`` rebuilds the
same architecture -- it holds no seed, so pass ``seed=`` again for the same initial weights).
"""

from __future__ import annotations

import torch
from torch import nn

from singledir.devices import model_device
from singledir.errors import SingledirError
from singledir.models._common import (
    _as_int,
    check_dropout,
    check_input_shape,
    check_num_classes,
    check_width,
    check_width_mult,
)
from singledir.models.convnet import ConvNet
from singledir.models.mlp import MLP
from singledir.models.resnet import BasicBlock, ResNet

MODELS = ("mlp", "convnet", "resnet")

__all__ = [
    "MODELS",
    "MLP",
    "ConvNet",
    "ResNet",
    "BasicBlock",
    "build_model",
    "unit_layers",
    "unit_counts",
    "count_parameters",
]


def _build(name, input_shape, num_classes, width, width_mult, depth, dropout, batchnorm) -> nn.Module:
    if name == "mlp":
        return MLP(
            input_shape,
            num_classes,
            width=width,
            depth=2 if depth is None else depth,
            dropout=dropout,
            batchnorm=batchnorm,
        )
    if depth is not None:
        raise SingledirError(f"depth applies only to --model mlp, not {name!r}; leave it unset")
    cls = ConvNet if name == "convnet" else ResNet
    return cls(input_shape, num_classes, width_mult=width_mult, batchnorm=batchnorm, dropout=dropout)


def build_model(
    name: str,
    input_shape,
    num_classes: int,
    *,
    width: int = 128,
    width_mult: float = 1.0,
    dropout: float = 0.0,
    batchnorm: bool | None = None,
    seed: int | None = None,
    depth: int | None = None,
) -> nn.Module:
    """Build model ``name`` (one of :data:`MODELS`) for per-example ``input_shape`` and ``num_classes``.

    ``width``: MLP hidden units per layer. ``depth``: MLP hidden layers (default 2; MLP only).
    ``width_mult``: channel multiplier for convnet/resnet (e.g. 0.125 for CPU runs). ``dropout``: MLP
    only. ``batchnorm``: None = the model's default (False for mlp, True for convnet/resnet).
    ``seed``: if given, weights are initialized from a forked CPU RNG seeded with it -- the same seed
    gives identical weights and torch's global RNG state is left untouched. The model is on the CPU in
    train mode. Bad arguments raise :class:`SingledirError`.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise SingledirError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    check_input_shape(input_shape)
    check_num_classes(num_classes)
    check_width(width)
    check_width_mult(width_mult)
    check_dropout(dropout)
    if seed is not None:
        seed_int = _as_int(seed)
        if seed_int is None or seed_int < 0:
            raise SingledirError(f"seed must be a non-negative int or None, got {seed!r}")
        seed = seed_int

    args = (key, input_shape, num_classes, width, width_mult, depth, dropout, batchnorm)
    if seed is None:
        return _build(*args)
    # Only the CPU generator is seeded (torch.manual_seed would also touch CUDA's); fork_rng restores it.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return _build(*args)


def unit_layers(model: nn.Module) -> list[str]:
    """The model's unit layers: ``model.unit_layers`` if present, else the names of its ReLU modules."""
    names = getattr(model, "unit_layers", None)
    if names is not None:
        return list(names)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    if not names:
        raise SingledirError(
            f"{type(model).__name__} has no `unit_layers` attribute and no nn.ReLU modules; "
            f"pass the layer names explicitly"
        )
    return names


@torch.no_grad()
def unit_counts(model: nn.Module, input_shape=None) -> dict[str, int]:
    """Number of units (along each layer's unit axis, see :mod:`singledir.reliance.axes`) of each unit layer, from one forward pass on zeros.

    ``input_shape`` defaults to ``model.config["input_shape"]``. Counted by
    :func:`singledir.reliance.units.layer_units`, which hands the model back exactly as it came.
    """
    if input_shape is None:
        input_shape = getattr(model, "config", {}).get("input_shape")
        if input_shape is None:
            raise SingledirError("model has no config['input_shape']; pass input_shape explicitly")
    from singledir.reliance.units import layer_units  # the one unit-counting forward pass (model_guard inside)

    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros((1, *check_input_shape(input_shape)), device=model_device(model), dtype=dtype)
    return layer_units(model, (x, torch.zeros(1, dtype=torch.long, device=x.device)), unit_layers(model))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Total number of parameter elements (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
