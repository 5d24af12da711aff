"""Input checks for the reliance engine: data as batches, layer names, labels, finite activations.

Offers (stable names, also used by the selectivity code):

- :func:`as_batches` -- ``(inputs, labels)`` tensors or any iterable of ``(x, y)`` batches -> a list of
  ``(x, y)`` batches (float inputs, int64 1-D labels), checked: non-empty, matching lengths.
- :func:`concat_batches` -- the batches as one ``(x, y)`` pair (for the fast path's example chunks).
- :func:`num_examples` -- total examples in a list of batches.
- :func:`validate_layers` -- dotted layer names -> list of names; unknown names raise with candidates.
- :func:`check_unit_output` -- a layer's output must be a tensor with a unit dimension (dim 1).
- :func:`check_labels` -- labels must lie in ``[0, num_outputs)``.
- :func:`check_finite` -- NaN / inf in an activation or in the logits raise.
- :func:`check_choice`, :func:`check_repeats`, :func:`check_seed` -- small argument checks.
- :class:`ModelInput` -- moves a batch's inputs to the model's device (and floating inputs to the model's
  floating dtype); every path that calls the model feeds it through one.

Every problem raises :class:`singledir.errors.SingledirError` with one line naming it and the fix.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from singledir.devices import model_device
from singledir.errors import SingledirError

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "ModelInput",
    "as_batches",
    "candidate_layers",
    "check_choice",
    "check_finite",
    "check_labels",
    "check_repeats",
    "check_seed",
    "check_unit_output",
    "concat_batches",
    "num_examples",
    "validate_layers",
]

#: Batch size used to split an ``(inputs, labels)`` pair when ``batch_size`` is not given.
DEFAULT_BATCH_SIZE = 500

_MAX_LISTED = 20


def _as_tensor(value, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise SingledirError(
        f"{what} must be a torch.Tensor or numpy array, got {type(value).__name__}; "
        f"pass data as (inputs, labels) tensors or an iterable of (x, y) batches"
    )


def _labels(y, where: str) -> torch.Tensor:
    y = _as_tensor(y, f"labels of {where}")
    if y.ndim != 1:
        raise SingledirError(
            f"labels of {where} must be a 1-D tensor of class indices, got shape {tuple(y.shape)}; "
            f"convert one-hot labels with y.argmax(1)"
        )
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise SingledirError(f"labels of {where} must be integer class indices, got non-integer floats")
    elif y.dtype == torch.bool or y.is_complex():
        raise SingledirError(f"labels of {where} must be integer class indices, got dtype {y.dtype}")
    return y.long()


def _inputs(x, where: str) -> torch.Tensor:
    x = _as_tensor(x, f"inputs of {where}")
    if x.ndim < 1:
        raise SingledirError(f"inputs of {where} must have a batch dimension, got a scalar")
    if not x.is_floating_point():
        x = x.float()
    return x


def _is_array(v) -> bool:
    return isinstance(v, (torch.Tensor, np.ndarray))


def as_batches(data, batch_size: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Turn ``data`` into a non-empty list of ``(x, y)`` batches with float ``x`` and int64 1-D ``y``.

    ``data`` is an ``(inputs, labels)`` pair of tensors / numpy arrays (split into batches of
    ``batch_size``, default :data:`DEFAULT_BATCH_SIZE`) or any iterable of ``(x, y)`` batches such as a
    ``DataLoader`` (kept as they come, or re-split into ``batch_size`` if given). The iterable is read
    once, in order; its errors propagate. Empty batches are dropped; an empty dataset raises.

    Example::

        batches = as_batches((x_test, y_test), batch_size=256)
        for x, y in batches: ...
    """
    if batch_size is not None:
        bs = operator.index(batch_size) if not isinstance(batch_size, bool) else None
        if bs is None or bs < 1:
            raise SingledirError(f"batch_size must be a positive int or None, got {batch_size!r}")
        batch_size = bs
    if data is None:
        raise SingledirError("data is None; pass (inputs, labels) tensors or an iterable of (x, y) batches")

    if isinstance(data, (tuple, list)) and len(data) == 2 and _is_array(data[0]) and _is_array(data[1]):
        x = _inputs(data[0], "data")
        y = _labels(data[1], "data")
        if x.shape[0] != y.shape[0]:
            raise SingledirError(
                f"data has {x.shape[0]} inputs but {y.shape[0]} labels; pass matching (inputs, labels)"
            )
        if x.shape[0] == 0:
            raise SingledirError("data is empty (0 examples); pass at least one (input, label) example")
        bs = batch_size or DEFAULT_BATCH_SIZE
        return [(x[i : i + bs], y[i : i + bs]) for i in range(0, x.shape[0], bs)]

    if isinstance(data, (str, bytes, dict)) or not isinstance(data, Iterable):
        raise SingledirError(
            f"data must be (inputs, labels) tensors or an iterable of (x, y) batches, got "
            f"{type(data).__name__}"
        )
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i, item in enumerate(data):
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise SingledirError(
                f"batch {i} of data is a {type(item).__name__}, not an (x, y) pair; "
                f"yield (inputs, labels) from the iterable"
            )
        x = _inputs(item[0], f"batch {i}")
        y = _labels(item[1], f"batch {i}")
        if x.shape[0] != y.shape[0]:
            raise SingledirError(
                f"batch {i} has {x.shape[0]} inputs but {y.shape[0]} labels; yield matching (x, y) pairs"
            )
        if batches and x.shape[1:] != batches[0][0].shape[1:]:
            raise SingledirError(
                f"batch {i} has per-example shape {tuple(x.shape[1:])}, batch 0 has "
                f"{tuple(batches[0][0].shape[1:])}; all inputs must have the same shape"
            )
        if x.shape[0] > 0:
            batches.append((x, y))
    if not batches:
        raise SingledirError("data is empty (0 examples); pass at least one (input, label) example")
    if batch_size is not None:
        x, y = concat_batches(batches)
        batches = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return batches


def concat_batches(batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """All batches as one ``(x, y)`` pair (no copy when there is a single batch)."""
    if len(batches) == 1:
        return batches[0][0], batches[0][1]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def num_examples(batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Total number of examples in ``batches``."""
    return int(sum(b[1].shape[0] for b in batches))


def candidate_layers(model: nn.Module) -> list[str]:
    """Layer names to suggest: ``model.unit_layers`` if present, else all named submodules."""
    names = getattr(model, "unit_layers", None)
    if names:
        return list(names)
    return [n for n, _ in model.named_modules() if n]


def _listing(names: list[str]) -> str:
    if len(names) <= _MAX_LISTED:
        return ", ".join(names)
    return ", ".join(names[:_MAX_LISTED]) + f", ... ({len(names) - _MAX_LISTED} more)"


def validate_layers(model: nn.Module, layers) -> list[str]:
    """Check dotted layer names against ``model`` and return them as a list (a single str is allowed).

    Unknown names raise :class:`SingledirError` listing valid ones (``model.unit_layers`` if the model
    has it, else its named modules, truncated). Empty or repeated names also raise.

    Example::

        validate_layers(model, "hidden.0")            # -> ["hidden.0"]
        validate_layers(model, ["hidden.0", "oops"])  # SingledirError: unknown layer 'oops' ...
    """
    if isinstance(layers, str):
        layers = [layers]
    if layers is None or not isinstance(layers, Iterable):
        raise SingledirError(f"layers must be a list of dotted module names, got {layers!r}")
    layers = list(layers)
    if not layers:
        raise SingledirError(
            f"no layers given; pass dotted module names, e.g. {_listing(candidate_layers(model))}"
        )
    modules = dict(model.named_modules())
    seen: set[str] = set()
    for name in layers:
        if not isinstance(name, str):
            raise SingledirError(f"layer names must be strings (dotted module names), got {name!r}")
        if name not in modules or name == "":
            raise SingledirError(
                f"unknown layer {name!r}; valid layers: {_listing(candidate_layers(model))}"
            )
        if name in seen:
            raise SingledirError(f"layer {name!r} is listed twice; list each layer once")
        seen.add(name)
    return layers


def check_unit_output(out, layer: str) -> torch.Tensor:
    """Return ``out`` if it is a tensor with a unit dimension (``ndim >= 2``, dim 1 = units), else raise."""
    if not isinstance(out, torch.Tensor):
        raise SingledirError(
            f"layer {layer!r} outputs a {type(out).__name__}, not a tensor; pick a module whose output is "
            f"an activation tensor (N, units, ...)"
        )
    if out.ndim < 2:
        raise SingledirError(
            f"layer {layer!r} outputs a {out.ndim}-D tensor of shape {tuple(out.shape)}, which has no unit "
            f"dimension; pick a module whose output is (N, units, ...)"
        )
    if not out.is_floating_point():
        raise SingledirError(f"layer {layer!r} outputs dtype {out.dtype}; a unit layer must output floats")
    return out


def check_labels(y: torch.Tensor, num_outputs: int, where: str = "data") -> None:
    """Raise unless every label lies in ``[0, num_outputs)`` (the model's output classes)."""
    if y.numel() == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_outputs:
        bad = lo if lo < 0 else hi
        raise SingledirError(
            f"label {bad} in {where} is outside the model's {num_outputs} classes [0, {num_outputs}); "
            f"pass labels that are class indices of this model"
        )


def check_finite(t: torch.Tensor, where: str) -> None:
    """Raise if ``t`` holds NaN or inf (``where`` names the layer or the logits)."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise SingledirError(
            f"non-finite values (NaN or inf) in {where}; check the inputs and the model's weights"
        )


def check_choice(value, choices: Sequence[str], what: str) -> str:
    """Return ``value`` if it is one of ``choices`` (strings), else raise naming them."""
    if not isinstance(value, str) or value not in choices:
        raise SingledirError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


def check_repeats(repeats) -> int:
    """``repeats`` as an int >= 1, else raise."""
    r = None if isinstance(repeats, bool) else _int_or_none(repeats)
    if r is None or r < 1:
        raise SingledirError(f"repeats must be an int >= 1, got {repeats!r}")
    return r


def check_seed(seed) -> int:
    """``seed`` as a non-negative int, else raise."""
    s = None if isinstance(seed, bool) else _int_or_none(seed)
    if s is None or s < 0:
        raise SingledirError(f"seed must be a non-negative int, got {seed!r}")
    return s


def _int_or_none(v):
    try:
        return operator.index(v)
    except TypeError:
        return None


class ModelInput:
    """``feed(x)``: ``x`` on the model's device, floating inputs in the model's floating dtype.

    The device is :func:`singledir.devices.model_device`; the dtype is that of the model's first floating
    parameter (or buffer), so a float64 model accepts float32 data. ``feed.device`` is the device.
    """

    def __init__(self, model: nn.Module):
        self.device = model_device(model)
        self.dtype = next(
            (t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is not None and x.is_floating_point():
            return x.to(device=self.device, dtype=self.dtype)
        return x.to(self.device)
