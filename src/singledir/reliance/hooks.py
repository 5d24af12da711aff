"""Context managers that install forward hooks on layers addressed by dotted names, and always remove them.

In the style of baukit's ``nethook``: every context manager removes the hooks it added on exit, even when
an exception is raised inside the ``with`` block; weights are never touched (every edit happens in
activation space, with the tensor functions of :mod:`.edits`).

Offers:

- :func:`model_guard` -- eval mode inside; on exit restores every submodule's training flag, removes any
  hook left behind, and checks that no parameter was modified.
- :func:`record` -- capture layer outputs (``rec[layer]``; a :class:`Recording`).
- :func:`edit_outputs` -- replace layer outputs by ``fn(output)``; the primitive behind the next two.
- :func:`ablate` -- clamp units (:class:`~.edits.ClampSpec`, or a list of unit indices for zero clamps) or
  project out directions (:class:`~.edits.ProjectSpec`); masks may be per *replica*.
- :func:`noise` -- add Gaussian noise (:class:`~.edits.NoiseSpec`) whose draw depends only on (seed,
  repeat, layer key, example index); yields a :class:`NoiseControl`.

The loop over a dataset's layer outputs is :func:`singledir.reliance.units.layer_outputs`.

Example::

    from singledir.reliance.hooks import model_guard, record, ablate
    with model_guard(model), torch.no_grad():
        with record(model, ["hidden.0"]) as rec:
            model(x)
        h = rec["hidden.0"]                      # (N, 128)
        with ablate(model, {"hidden.0": [3, 7]}):  # zero units 3 and 7
            logits = model(x)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from singledir.errors import SingledirError
from singledir.reliance.axes import from_canonical, to_canonical
from singledir.reliance.edits import NoiseSpec, apply_noise, as_edit, example_noise
from singledir.reliance.inputs import check_unit_output, split_layer, validate_layers

__all__ = ["NoiseControl", "Recording", "ablate", "edit_outputs", "model_guard", "noise", "record"]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
)


# --------------------------------------------------------------------------------------------------
# model_guard
# --------------------------------------------------------------------------------------------------
def _hook_keys(model: nn.Module) -> dict[int, dict[str, set]]:
    return {
        id(m): {d: set(getattr(m, d, {}) or {}) for d in _HOOK_DICTS} for m in model.modules()
    }


def _tensor_versions(model: nn.Module) -> dict[str, int]:
    # parameters only: a user's forward may legitimately update its own buffers (counters, caches)
    return {n: p._version for n, p in model.named_parameters()}


@contextlib.contextmanager
def model_guard(model: nn.Module, check_weights: bool = True) -> Iterator[nn.Module]:
    """Evaluate ``model`` in eval mode inside the block and hand it back exactly as it came.

    On exit -- also when an exception propagates -- every submodule's ``training`` flag is restored and
    every forward / pre-forward hook added inside the block is removed. On normal exit, with
    ``check_weights``, a ``RuntimeError`` is raised if a parameter was modified in place (that would be a
    bug in this package: ablations happen in activation space only). Eval-mode batch norm leaves its
    buffers alone; buffers a user's own forward updates are not checked.

    Example::

        with model_guard(model), torch.no_grad():
            logits = model(x)          # eval mode here
        # model.training and hooks are as before
    """
    if not isinstance(model, nn.Module):
        raise SingledirError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modes = [(m, m.training) for m in model.modules()]
    hooks_before = _hook_keys(model)
    versions = _tensor_versions(model) if check_weights else None
    model.eval()
    try:
        yield model
    finally:
        for m in model.modules():
            before = hooks_before.get(id(m), {})
            for d in _HOOK_DICTS:
                hooks = getattr(m, d, None)
                if not hooks:
                    continue
                for key in [k for k in hooks if k not in before.get(d, ())]:
                    del hooks[key]
        for m, flag in modes:
            m.training = flag
    if versions is not None and _tensor_versions(model) != versions:
        raise RuntimeError("internal error: a parameter was modified during the analysis")


def attach(model: nn.Module, name: str, fn):
    """Hook ``fn(value) -> new value or None`` on layer ``name``: its output, or with a ``":input"`` name
    its module's first positional input (a pre-hook). Returns the hook handle."""
    base, is_input = split_layer(name)
    module = model.get_submodule(base)
    if not is_input:
        return module.register_forward_hook(lambda _m, _i, out: fn(out))

    def pre(_m, args):
        if not args:
            raise SingledirError(f"layer {name!r}: the module is called without a positional input to read")
        new = fn(args[0])
        return None if new is None else (new, *args[1:])

    return module.register_forward_pre_hook(pre)


# --------------------------------------------------------------------------------------------------
# Generic output editing and recording
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def edit_outputs(model: nn.Module, edits: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
                 unit_dims: Mapping[str, int] | None = None):
    """Replace each named layer's output ``out`` by ``edits[layer](out)``; hooks removed on exit.

    ``unit_dims[layer]`` (default 1) is the layer's unit axis: the edit sees the output in the canonical
    layout (N, units, *positions) (:mod:`.axes`) and its result is moved back.

    Example::

        with edit_outputs(model, {"hidden.0": lambda h: h * 0}):
            model(x)
    """
    names = validate_layers(model, list(edits)) if edits else []
    handles = []
    try:
        for name in names:
            fn = edits[name]

            d = (unit_dims or {}).get(name, 1)

            def hook(out, fn=fn, name=name, d=d):
                return from_canonical(fn(to_canonical(check_unit_output(out, name), d)), d)

            handles.append(attach(model, name, hook))
        yield model
    finally:
        for h in handles:
            h.remove()


class Recording(dict):
    """``layer -> last output`` captured by :func:`record` (a dict; ``rec[layer]`` is a tensor)."""


@contextlib.contextmanager
def record(model: nn.Module, layers, *, detach: bool = True, clone: bool = False) -> Iterator[Recording]:
    """Capture the output of each layer in ``layers`` (the last call's output if called twice).

    Example::

        with record(model, ["features.2", "features.5"]) as rec:
            model(x)
        rec["features.2"].shape   # (N, C, H, W)
    """
    names = validate_layers(model, layers)
    rec = Recording()
    handles = []
    try:
        for name in names:

            def hook(out, name=name):
                if isinstance(out, torch.Tensor):
                    if detach:
                        out = out.detach()
                    if clone:
                        out = out.clone()
                rec[name] = out

            handles.append(attach(model, name, hook))
        yield rec
    finally:
        for h in handles:
            h.remove()



# --------------------------------------------------------------------------------------------------
# Ablation
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def ablate(model: nn.Module, specs: Mapping[str, object], unit_dims: Mapping[str, int] | None = None):
    """Clamp units / project out directions of layers' outputs while inside the block.

    ``specs[layer]`` is a :class:`~.edits.ClampSpec`, a :class:`~.edits.ProjectSpec` or a list of unit indices (clamped
    to zero); ``unit_dims[layer]`` the layer's unit axis (default 1).

    Example::

        with ablate(model, {"hidden.0": [0, 5], "hidden.1": ClampSpec(mask, means)}):
            logits = model(x)
    """
    edits = {name: as_edit(spec, name) for name, spec in specs.items()}
    with edit_outputs(model, edits, unit_dims):
        yield model



# --------------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------------
class NoiseControl:
    """Handle yielded by :func:`noise`: ``.start`` is the dataset index of the next batch's first example
    (it advances by the batch size after each forward pass; set it by hand to evaluate batches out of
    order)."""

    def __init__(self, start: int = 0) -> None:
        self.start = start


@contextlib.contextmanager
def noise(model: nn.Module, specs: Mapping[str, NoiseSpec], start: int = 0,
          unit_dims: Mapping[str, int] | None = None) -> Iterator[NoiseControl]:
    """Add Gaussian noise to layers' outputs; the noise of example i does not depend on batching.

    The noise is drawn in the canonical layout (N, units, *positions); ``unit_dims`` as in
    :func:`edit_outputs`.

    Example::

        spec = NoiseSpec(sigma=stats["hidden.0"].std, scales=0.5, key=(seed, repeat, 0))
        with noise(model, {"hidden.0": spec}) as ctl:
            for x, y in batches:
                logits = model(x)          # ctl.start advances by len(x)
    """
    ctl = NoiseControl(start)
    batch = {"n": 0}

    def make(spec: NoiseSpec):
        def edit(h):
            n = h.shape[0] // spec.replicas
            batch["n"] = n
            z = example_noise(h.shape[1:], ctl.start, ctl.start + n, spec.key, dtype=h.dtype, device=h.device)
            return apply_noise(h, z, spec.std)

        return edit

    edits = {name: make(spec) for name, spec in specs.items()}
    with edit_outputs(model, edits, unit_dims):
        root = model.register_forward_hook(lambda *_: setattr(ctl, "start", ctl.start + batch["n"]))
        try:
            yield ctl
        finally:
            root.remove()
