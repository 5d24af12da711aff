"""The weights the norm-based measures read: batch norm folded in, layer matrices, the initial model.

Offers:

- :func:`fold_batchnorm` -- a copy of the model (eval mode) with every BatchNorm folded into the Linear /
  Conv layer right before it (adjacent in an ``nn.Sequential``, or ``convN`` / ``bnN`` attributes of one
  module as in a ResNet block) and replaced by ``nn.Identity``; a BatchNorm it cannot fold is an error
  naming it. The user's model is never changed.
- :func:`weight_layers` -- ``[(name, module)]`` of the Linear / Conv layers (the "weights" of the
  measures: biases and BN parameters excluded, as in Jiang et al. 2020).
- :func:`weight_matrices` -- each layer's weight reshaped to ``(out, in * kernel)``.
- :func:`initial_model` -- a run's untrained model: its epoch-0 checkpoint when saved, else rebuilt
  from the run's seed exactly as training built it (``build_model(..., seed=config["seed"])``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from singledir.errors import SingledirError

__all__ = ["fold_batchnorm", "initial_model", "weight_layers", "weight_matrices", "WEIGHT_TYPES"]

WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: nn.Module) -> None:
    """``bn(layer(x)) == layer'(x)`` in eval mode: scale the output rows, shift the bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    w = layer.weight
    layer.weight.copy_(w * scale.reshape(-1, *([1] * (w.dim() - 1))))
    b = layer.bias if layer.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    new_b = (b - bn.running_mean) * scale + shift
    if layer.bias is None:
        layer.bias = nn.Parameter(new_b)
    else:
        layer.bias.copy_(new_b)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with its BatchNorms folded into the preceding layers."""
    m = copy.deepcopy(model).eval()
    folded: set[int] = set()
    for parent in m.modules():
        kids = list(parent.named_children())
        pairs = []
        if isinstance(parent, nn.Sequential):
            pairs += [(a, b) for a, b in zip(kids, kids[1:])]
        named = dict(kids)
        for name, child in kids:
            if isinstance(child, _BN) and name.startswith("bn") and f"conv{name[2:]}" in named:
                pairs.append(((f"conv{name[2:]}", named[f"conv{name[2:]}"]), (name, child)))
        for (ln, layer), (bn_name, bn) in pairs:
            if isinstance(layer, WEIGHT_TYPES) and isinstance(bn, _BN) and id(bn) not in folded:
                if bn.running_var is None:
                    raise SingledirError(f"BatchNorm {bn_name!r} keeps no running statistics; it cannot be folded")
                _fold_into(layer, bn)
                folded.add(id(bn))
                setattr(parent, bn_name, nn.Identity())
    left = [n for n, mod in m.named_modules() if isinstance(mod, _BN)]
    if left:
        raise SingledirError(
            f"cannot fold BatchNorm layer {left[0]!r} into a weight layer (it does not directly follow a "
            f"Linear or Conv layer); norm-based measures need BN-free weights"
        )
    return m


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear / Conv layers of ``model`` in definition order; an error when it has none."""
    out = [(n, mod) for n, mod in model.named_modules() if isinstance(mod, WEIGHT_TYPES)]
    if not out:
        raise SingledirError(
            f"{type(model).__name__} has no Linear or Conv layer; the norm-based measures need one"
        )
    return out


def weight_matrices(model: nn.Module) -> list[torch.Tensor]:
    """Each weight layer's weight as a float64 ``(out, in * kernel)`` matrix (detached, on the CPU)."""
    return [mod.weight.detach().to("cpu", torch.float64).reshape(mod.weight.shape[0], -1) for _, mod in weight_layers(model)]


def initial_model(run_dir) -> nn.Module:
    """The untrained model of a run made by ``singledir train`` (eval mode, CPU).

    Uses ``checkpoints/epoch_0000.safetensors`` when the run saved it; otherwise rebuilds the model from
    the run's ``model_config`` and ``seed`` with :func:`singledir.models.build_model`, which is how the
    training loop made the initial weights (same seed -> identical weights).
    """
    from singledir.models import build_model
    from singledir.training import rundir as rd

    run_dir = Path(run_dir)
    config = rd.read_config(run_dir)
    ckpt = rd.checkpoint_path(run_dir, 0)
    if ckpt.is_file():
        return rd.load_weights(rd.build_from_config(config), ckpt).eval()
    mc = dict(config["model_config"])
    name = mc.pop("name")
    return build_model(name, mc.pop("input_shape"), mc.pop("num_classes"), seed=int(config["seed"]), **mc).eval()
