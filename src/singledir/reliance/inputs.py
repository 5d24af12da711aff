"""Input checks for the reliance engine: data as batches, layer names, labels, finite activations.

Offers (stable names, also used by the selectivity code):

- :func:`as_batches` -- ``(inputs, labels)`` tensors, a dict of tensors holding ``labels``, or any
  iterable of ``(x, y)`` batches or of such dicts (a ``DataLoader``) -> a list of ``(x, y)`` batches,
  checked: non-empty, matching lengths. ``x`` is a tensor (its dtype kept: token ids stay int64) or a
  dict of tensors (called as ``model(**x)``); ``y`` is int64, (N,) per-sequence labels or (N, S)
  per-token labels, where :data:`IGNORE_INDEX` (-100) marks an unscored position.
- :func:`batch_len`, :func:`take`, :func:`cat_inputs`, :func:`repeat_inputs` -- a batch's inputs (a
  tensor or a dict of tensors) measured, sliced, concatenated and repeated along the batch axis.
- :func:`num_scored` -- the scored labels (tokens for per-token labels) of a list of batches.
- :func:`shift_labels` -- next-token labels for a causal LM (``labels[:, t] = input_ids[:, t + 1]``).
- :func:`logits_of` -- the logits of a model's output: a tensor, a tuple's first element, ``.logits``,
  or a user ``output_fn``.
- :func:`concat_batches` -- the batches as one ``(x, y)`` pair (for the fast path's example chunks).
- :func:`num_examples` -- total examples in a list of batches.
- :func:`validate_layers` -- dotted layer names -> list of names; unknown names raise with candidates.
- :func:`check_unit_output` -- a layer's output must be a tensor with a unit dimension (dim 1).
- :func:`check_labels` -- labels must lie in ``[0, num_outputs)``.
- :func:`check_finite` -- NaN / inf in an activation or in the logits raise.
- :func:`check_choice`, :func:`check_repeats`, :func:`check_seed` -- small argument checks.
- :class:`ModelInput` -- moves a batch's inputs to the model's device (and floating inputs to the model's
  floating dtype) and calls the model (``model(x)`` or ``model(**x)``) for its logits; every path that
  calls the model goes through one.

Every problem raises :class:`singledir.errors.SingledirError` with one line naming it and the fix.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from singledir.devices import model_device
from singledir.errors import SingledirError

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "IGNORE_INDEX",
    "ModelInput",
    "as_batches",
    "batch_len",
    "cat_inputs",
    "logits_of",
    "num_scored",
    "repeat_inputs",
    "shift_labels",
    "split_layer",
    "take",
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
#: A layer name ending in this suffix names the *input* of that module, e.g.
#: ``"model.layers.0.mlp.down_proj:input"``: a gated MLP's neurons (``act(gate(x)) * up(x)``) exist only
#: as the input of its down-projection.
INPUT_SUFFIX = ":input"
#: A label with this value is not scored (the Hugging Face / PyTorch ``ignore_index`` convention).
IGNORE_INDEX = -100

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
    if y.ndim not in (1, 2):
        raise SingledirError(
            f"labels of {where} must be (N,) class indices or (N, S) per-token class indices, got shape "
            f"{tuple(y.shape)}; convert one-hot labels with y.argmax(-1)"
        )
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise SingledirError(f"labels of {where} must be integer class indices, got non-integer floats")
    elif y.dtype == torch.bool or y.is_complex():
        raise SingledirError(f"labels of {where} must be integer class indices, got dtype {y.dtype}")
    return y.long()


def _tensor_input(x, where: str) -> torch.Tensor:
    x = _as_tensor(x, where)
    if x.ndim < 1:
        raise SingledirError(f"{where} must have a batch dimension, got a scalar")
    return x


def _inputs(x, where: str):
    """A batch's inputs: a tensor (any dtype, kept) or a dict of tensors with a common batch length."""
    if isinstance(x, Mapping):
        if not x:
            raise SingledirError(f"inputs of {where} are an empty dict; pass e.g. {{'input_ids': ids}}")
        out = {}
        for k, v in x.items():
            if not isinstance(k, str):
                raise SingledirError(f"input names of {where} must be strings (keyword arguments), got {k!r}")
            out[k] = _tensor_input(v, f"input {k!r} of {where}")
        lens = {k: v.shape[0] for k, v in out.items()}
        if len(set(lens.values())) != 1:
            raise SingledirError(f"inputs of {where} have different batch lengths {lens}; pass tensors of one batch")
        return out
    return _tensor_input(x, f"inputs of {where}")


def _is_array(v) -> bool:
    return isinstance(v, (torch.Tensor, np.ndarray))


def _is_inputs(v) -> bool:
    return _is_array(v) or (isinstance(v, Mapping) and bool(v) and all(_is_array(t) for t in v.values()))


def batch_len(x) -> int:
    """Number of examples in a batch's inputs (a tensor or a dict of tensors)."""
    if isinstance(x, Mapping):
        return int(next(iter(x.values())).shape[0])
    return int(x.shape[0])


def take(x, i: int, j: int):
    """Examples ``i .. j-1`` of a batch's inputs (a tensor or a dict of tensors)."""
    if isinstance(x, Mapping):
        return {k: v[i:j] for k, v in x.items()}
    return x[i:j]


def cat_inputs(parts: Sequence):
    """Batches' inputs concatenated along the batch axis (no copy for a single part)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], Mapping):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(list(parts))


def repeat_inputs(x, r: int):
    """The inputs repeated ``r`` times along the batch axis (replica i = examples ``i*n .. (i+1)*n - 1``)."""
    if r == 1:
        return x
    if isinstance(x, Mapping):
        return {k: v.repeat(r, *([1] * (v.ndim - 1))) for k, v in x.items()}
    return x.repeat(r, *([1] * (x.ndim - 1)))


def _shapes(x):
    if isinstance(x, Mapping):
        return {k: tuple(v.shape[1:]) for k, v in x.items()}
    return tuple(x.shape[1:])


def _pair(x, y, where: str):
    x = _inputs(x, where)
    y = _labels(y, where)
    n = batch_len(x)
    if n != y.shape[0]:
        raise SingledirError(f"{where} has {n} inputs but {y.shape[0]} labels; pass matching (inputs, labels)")
    return x, y


def _from_dict(d, where: str):
    if "labels" not in d:
        raise SingledirError(
            f"{where} is a dict without 'labels'; add the labels under 'labels' (the Hugging Face convention) "
            f"or pass (inputs, labels) pairs"
        )
    return _pair({k: v for k, v in d.items() if k != "labels"}, d["labels"], where)


def as_batches(data, batch_size: int | None = None) -> list[tuple]:
    """Turn ``data`` into a non-empty list of ``(x, y)`` batches (inputs kept as they are; int64 labels).

    ``data`` is an ``(inputs, labels)`` pair (``inputs`` a tensor / numpy array or a dict of tensors;
    split into batches of ``batch_size``, default :data:`DEFAULT_BATCH_SIZE`), a dict of tensors holding
    ``labels`` (the Hugging Face convention; the other entries are the model's keyword inputs), or any
    iterable of ``(x, y)`` batches or of such dicts, such as a ``DataLoader`` (kept as they come, or
    re-split into ``batch_size`` if given). Labels are (N,) or (N, S) (per token; -100 = not scored).
    The iterable is read once, in order; its errors propagate. Empty batches are dropped; an empty
    dataset raises.

    Example::

        batches = as_batches((x_test, y_test), batch_size=256)
        batches = as_batches({"input_ids": ids, "attention_mask": mask, "labels": y})
        for x, y in batches: ...
    """
    if batch_size is not None:
        bs = operator.index(batch_size) if not isinstance(batch_size, bool) else None
        if bs is None or bs < 1:
            raise SingledirError(f"batch_size must be a positive int or None, got {batch_size!r}")
        batch_size = bs
    if data is None:
        raise SingledirError("data is None; pass (inputs, labels) tensors or an iterable of (x, y) batches")

    whole = None
    if isinstance(data, (tuple, list)) and len(data) == 2 and _is_inputs(data[0]) and _is_array(data[1]):
        whole = _pair(data[0], data[1], "data")
    elif isinstance(data, Mapping) and _is_inputs(data):
        whole = _from_dict(data, "data")
    if whole is not None:
        x, y = whole
        n = batch_len(x)
        if n == 0:
            raise SingledirError("data is empty (0 examples); pass at least one (input, label) example")
        bs = batch_size or DEFAULT_BATCH_SIZE
        return [(take(x, i, i + bs), y[i : i + bs]) for i in range(0, n, bs)]

    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
        raise SingledirError(
            f"data must be (inputs, labels) tensors, a dict holding 'labels', or an iterable of (x, y) batches, "
            f"got {type(data).__name__}"
        )
    batches: list[tuple] = []
    for i, item in enumerate(data):
        if isinstance(item, Mapping):
            x, y = _from_dict(item, f"batch {i}")
        elif isinstance(item, (tuple, list)) and len(item) >= 2:
            x, y = _pair(item[0], item[1], f"batch {i}")
        else:
            raise SingledirError(
                f"batch {i} of data is a {type(item).__name__}, not an (x, y) pair; "
                f"yield (inputs, labels) or a dict holding 'labels' from the iterable"
            )
        if batches and (_shapes(x) != _shapes(batches[0][0]) or y.shape[1:] != batches[0][1].shape[1:]):
            raise SingledirError(
                f"batch {i} has per-example shape {_shapes(x)} (labels {tuple(y.shape[1:])}), batch 0 has "
                f"{_shapes(batches[0][0])} (labels {tuple(batches[0][1].shape[1:])}); all batches must have "
                f"the same shapes (pad sequences to one length)"
            )
        if batch_len(x) > 0:
            batches.append((x, y))
    if not batches:
        raise SingledirError("data is empty (0 examples); pass at least one (input, label) example")
    if batch_size is not None:
        x, y = concat_batches(batches)
        batches = [(take(x, i, i + batch_size), y[i : i + batch_size]) for i in range(0, y.shape[0], batch_size)]
    return batches


def concat_batches(batches: Sequence[tuple]) -> tuple:
    """All batches as one ``(x, y)`` pair (no copy when there is a single batch)."""
    if len(batches) == 1:
        return batches[0][0], batches[0][1]
    return cat_inputs([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def num_examples(batches: Sequence[tuple]) -> int:
    """Total number of examples (sequences, images) in ``batches``."""
    return int(sum(b[1].shape[0] for b in batches))


def num_scored(batches: Sequence[tuple]) -> int:
    """Total number of scored labels in ``batches``: examples, or tokens for per-token labels (-100 not
    counted). Accuracy and mean loss are over these."""
    return int(sum(int((b[1] != IGNORE_INDEX).sum()) for b in batches))


def shift_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token labels of a causal LM: ``labels[:, t] = input_ids[:, t + 1]``, -100 at the last position.

    The measurements score ``logits[:, t]`` against ``labels[:, t]`` as given; a Hugging Face model shifts
    ``labels=input_ids`` inside its own loss, which the measurements never call -- shift them with this.
    """
    ids = _as_tensor(input_ids, "input_ids").long()
    out = torch.full_like(ids, IGNORE_INDEX)
    out[:, :-1] = ids[:, 1:]
    return out


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


def split_layer(name: str) -> tuple[str, bool]:
    """``(module name, True)`` for ``"module:input"`` (the module's first positional input), else ``(name, False)``."""
    if name.endswith(INPUT_SUFFIX):
        return name[: -len(INPUT_SUFFIX)], True
    return name, False


def validate_layers(model: nn.Module, layers) -> list[str]:
    """Check dotted layer names against ``model`` and return them as a list (a single str is allowed).

    A name may end in ``":input"`` (the module's input, :data:`INPUT_SUFFIX`). Unknown names raise
    :class:`SingledirError` listing valid ones (``model.unit_layers`` if the model
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
        base = split_layer(name)[0]
        if base not in modules or base == "":
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
    y = y[y != IGNORE_INDEX]
    if y.numel() == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_outputs:
        bad = lo if lo < 0 else hi
        raise SingledirError(
            f"label {bad} in {where} is outside the model's {num_outputs} classes [0, {num_outputs}); "
            f"pass labels that are class indices of this model (-100 marks an unscored token)"
        )


def check_finite(t: torch.Tensor, where: str) -> None:
    """Raise if ``t`` holds NaN or inf (``where`` names the layer or the logits)."""
    # a float sum is finite only if every term is (NaN and inf propagate): one fast reduction, and the
    # elementwise test (a bool tensor, ~20x slower on the CPU) only when the sum overflowed or is not finite
    if t.is_floating_point() and not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
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


def logits_of(out, output_fn=None) -> torch.Tensor:
    """The logits in a model's output: ``output_fn(out)`` if given, else the tensor itself, a tuple's or
    list's first element, or the ``.logits`` attribute (the Hugging Face convention)."""
    if output_fn is not None:
        return output_fn(out)
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise SingledirError(
        f"the model returns a {type(out).__name__} with no logits tensor; pass output_fn=lambda out: ... that "
        f"picks the (N, classes) or (N, S, vocab) logits"
    )


class ModelInput:
    """``feed(x)``: ``x`` on the model's device, floating inputs in the model's floating dtype;
    ``feed.logits(model, x)``: the model called on them (``model(x)``, or ``model(**x)`` for a dict) and
    its logits picked by :func:`logits_of` (with ``output_fn``).

    The device is :func:`singledir.devices.model_device`; the dtype is that of the model's first floating
    parameter (or buffer), so a float64 model accepts float32 data. Integer inputs (token ids, attention
    masks) keep their dtype. ``feed.device`` is the device.
    """

    def __init__(self, model: nn.Module, output_fn=None):
        self.device = model_device(model)
        self.output_fn = output_fn
        self.dtype = next(
            (t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None
        )

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is not None and x.is_floating_point():
            return x.to(device=self.device, dtype=self.dtype)
        return x.to(self.device)

    def __call__(self, x):
        if isinstance(x, Mapping):
            return {k: self._one(v) for k, v in x.items()}
        return self._one(x)

    def call(self, model: nn.Module, x):
        """``model`` on inputs already fed: ``model(**x)`` for a dict, else ``model(x)``; the raw output."""
        return model(**x) if isinstance(x, Mapping) else model(x)

    def logits(self, model: nn.Module, x):
        """The logits of ``model`` on inputs already fed (:func:`logits_of`)."""
        return logits_of(self.call(model, x), self.output_fn)

    def logits_from(self, out):
        """The logits in a raw model output (:func:`logits_of` with this feed's ``output_fn``)."""
        return logits_of(out, self.output_fn)
