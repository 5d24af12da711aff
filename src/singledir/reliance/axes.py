"""The unit axis of each analysed layer: the ``unit_dim`` keyword, its inference, and padding masks.

The *units* of a layer are the entries along one axis of its output (its ``unit_dim``); the batch is
axis 0, and every other axis is a *position* (a conv map's spatial axes, a transformer's token axis).
Internally every path works on the *canonical* layout ``(N, units, *positions)``
(:func:`to_canonical` / :func:`from_canonical`), so a clamp, a projection or noise is the same function
whatever the layer's layout.

Offers:

- :func:`check_unit_dim` -- the ``unit_dim`` keyword (None, an int, or a dict layer -> int) checked.
- :func:`resolve_unit_dims` -- ``{layer: axis}`` (non-negative) from the keyword, or inferred where it is
  unambiguous: a 2-D output -> 1; the output of a ``Linear`` (or Hugging Face ``Conv1D``), or of an
  elementwise module (activation, dropout, identity) fed by one -> the last axis; a ``Conv``/batch norm
  (or an elementwise module fed by one, or a block made of convolutions and no linear layer) -> 1; the
  ``":input"`` of a ``Linear`` -> the last axis, of a ``Conv`` -> 1.
  Anything else raises a one-line :class:`~singledir.errors.SingledirError` naming ``unit_dim``.
- :func:`to_canonical` / :func:`from_canonical` -- move the unit axis to 1 and back (views; the result of
  an edit is made contiguous, as the model's next module may ``.view`` it).
- :func:`position_mask` -- the ``attention_mask`` of a batch's dict inputs, when its shape matches the
  layer's positions: padding is left out of the statistics pooled over positions.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from singledir.errors import SingledirError
from singledir.reliance.inputs import split_layer

__all__ = ["check_unit_dim", "from_canonical", "position_mask", "resolve_unit_dims", "to_canonical"]

_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
    nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.PReLU, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
_CHANNEL_FIRST = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.InstanceNorm3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _is_linear(m: nn.Module) -> bool:
    """``nn.Linear`` or a Hugging Face ``Conv1D`` (a linear layer whose weight is stored (in, out))."""
    return isinstance(m, nn.Linear) or (type(m).__name__ == "Conv1D" and hasattr(m, "nf"))


def _is_elementwise(m: nn.Module) -> bool:
    """An activation / dropout / identity module (Hugging Face activation classes included)."""
    if isinstance(m, _ELEMENTWISE):
        return True
    name = type(m).__name__
    return not list(m.children()) and not list(m.parameters(recurse=False)) and (
        name.endswith("Activation") or name in ("QuickGELU", "NewGELU", "FastGELU", "SiLU", "GELU", "Swish")
    )


def check_unit_dim(unit_dim):
    """The ``unit_dim`` keyword: None (infer), an int (all layers) or a dict layer -> int."""
    if unit_dim is None:
        return None
    if isinstance(unit_dim, Mapping):
        for k, v in unit_dim.items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int):
                raise SingledirError(f"unit_dim must map layer names to ints, got {k!r}: {v!r}")
        return dict(unit_dim)
    if isinstance(unit_dim, bool) or not isinstance(unit_dim, int):
        raise SingledirError(f"unit_dim must be an int, a dict layer -> int, or None, got {unit_dim!r}")
    return unit_dim


def _probe_feeders(model: nn.Module, run) -> dict:
    """Run ``run()`` with hooks on every module: ``{id(output tensor): module}`` and each module's first
    input tensor (what feeds it)."""
    produced: dict = {}
    fed: dict = {}
    handles = []

    def hook(m, args, out):
        if args and isinstance(args[0], torch.Tensor):
            fed.setdefault(id(m), args[0])
        if isinstance(out, torch.Tensor):
            produced.setdefault(id(out), (m, out))  # first producer wins (in-place ops, containers); held: no id reuse

    for m in model.modules():
        handles.append(m.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return {"produced": produced, "fed": fed}


def _infer(m: nn.Module, probe: dict, depth: int = 0) -> int | None:
    """-1 (last axis), 1 (channel-first), or None (ambiguous) for the output of module ``m``."""
    if _is_linear(m):
        return -1
    if isinstance(m, _CHANNEL_FIRST):
        return 1
    if _is_elementwise(m) and depth < 8:
        src = probe["fed"].get(id(m))
        feeder = probe["produced"].get(id(src), (None,))[0] if src is not None else None
        return None if feeder is None or feeder is m else _infer(feeder, probe, depth + 1)
    leaves = [c for c in m.modules() if not list(c.children())]
    if any(isinstance(c, _CONV) for c in leaves) and not any(_is_linear(c) for c in leaves):
        return 1
    return None


def resolve_unit_dims(model: nn.Module, names, outputs: dict, unit_dim, run=None) -> dict[str, int]:
    """``{layer: unit axis >= 1}`` for the recorded ``outputs`` of ``names`` (see the module docstring).

    ``run()`` re-runs the probe forward pass (for inference through elementwise modules); with an explicit
    ``unit_dim`` it is not needed. Raises when an axis is out of range, is the batch axis, or cannot be
    inferred.
    """
    unit_dim = check_unit_dim(unit_dim)
    if isinstance(unit_dim, dict):
        extra = [k for k in unit_dim if k not in names]
        if extra:
            raise SingledirError(f"unit_dim names layer {extra[0]!r}, which is not among layers {list(names)}")
    probe = None
    dims = {}
    for n in names:
        h = outputs[n]
        given = unit_dim.get(n) if isinstance(unit_dim, dict) else unit_dim
        if given is None:
            if h.ndim == 2:
                given = 1
            else:
                if probe is None and run is not None:
                    probe = _probe_feeders(model, run)
                base, is_input = split_layer(n)
                module = model.get_submodule(base)
                if is_input:  # the input of a Linear has its features last, of a Conv on axis 1
                    given = -1 if _is_linear(module) else 1 if isinstance(module, _CONV) else None
                else:
                    given = _infer(module, probe) if probe is not None else None
                if given is None:
                    raise SingledirError(
                        f"layer {n!r} outputs shape {tuple(h.shape)} and its unit axis is ambiguous; pass "
                        f"unit_dim=-1 (units on the last axis, e.g. transformer MLP neurons) or unit_dim="
                        f"{{{n!r}: 1}} (channels)"
                    )
        d = given + h.ndim if given < 0 else given
        if not 0 <= d < h.ndim:
            raise SingledirError(f"unit_dim {given} is out of range for layer {n!r} with output shape {tuple(h.shape)}")
        if d == 0:
            raise SingledirError(f"unit_dim 0 of layer {n!r} is the batch axis; pass the axis of the units")
        dims[n] = d
    return dims


def to_canonical(h: torch.Tensor, d: int) -> torch.Tensor:
    """``h`` with its unit axis ``d`` moved to 1 (a view)."""
    return h if d == 1 else h.movedim(d, 1)


def from_canonical(h: torch.Tensor, d: int) -> torch.Tensor:
    """Inverse of :func:`to_canonical`, contiguous (the model's next module may ``.view`` it)."""
    return h if d == 1 else h.movedim(1, d).contiguous()


def position_mask(x, h: torch.Tensor) -> torch.Tensor | None:
    """(N, *positions) bool mask of real (non-padding) positions of canonical ``h`` (N, C, *P), or None.

    Taken from ``x["attention_mask"]`` when the inputs are a dict holding one of shape (N, *P); None (every
    position counts) otherwise.
    """
    if h.ndim < 3 or not isinstance(x, Mapping):
        return None
    m = x.get("attention_mask")
    if not isinstance(m, torch.Tensor) or tuple(m.shape) != (h.shape[0], *h.shape[2:]):
        return None
    return m.to(h.device) != 0
