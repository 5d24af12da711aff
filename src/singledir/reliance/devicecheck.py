"""Device bugs caught on a CPU-only machine: a torch-function mode that plays "the host" against "the device".

Offers :class:`DeviceCheck` (a ``torch.overrides.TorchFunctionMode``) and :class:`DeviceMismatch`.

Why. On a machine without a GPU every tensor is on the CPU, so ``torch.where(cuda_mask, cpu_values, ...)``
-- an error on a GPU -- runs fine, and host synchronisations inside hot loops (``.item()`` per level) cost
nothing. Inside ``with DeviceCheck() as dc:`` every tensor is classed as a *host* tensor or a *device*
tensor, as it would be if the model lived on a GPU:

- *host*: made by a factory function (``torch.zeros``, ``torch.full``, ``torch.tensor``, ``torch.arange``,
  ``torch.from_numpy``, ...) without a ``device=`` argument, or by ``.cpu()``; tensors the caller marks
  with :meth:`DeviceCheck.host` (e.g. the data, which a user hands over on the CPU); and every result
  computed from host tensors only;
- *device*: everything else -- the model's parameters and buffers, tensors made with ``device=``, results
  of ``.to(device)`` / ``.to(other_tensor)`` / ``.cuda()``, and results of ops with a device operand.
  ``.to(t.device)`` follows ``t``'s side (the ``torch.device`` objects that ``.device`` hands out are
  remembered).

An op whose operands mix host and device tensors (other than 0-dim host tensors, which torch accepts
beside device tensors as scalars; the indices of ``t[idx]``, and the source of ``copy_``) raises
:class:`DeviceMismatch` -- exactly the ops that fail on a GPU. Reads of a device tensor's values by the host
(``.item()``, ``.tolist()``, ``float()``, ``int()``, ``bool()``, ``.numpy()``, ``.cpu()``, ``nonzero``, boolean
indexing), and copies of host tensors to the device (``"h2d"``), are counted in :attr:`DeviceCheck.syncs`
(host synchronisations on a GPU), so a test can check that they do not grow with the number of levels.

A ``.to(device)`` of a host tensor (or ``.cpu()`` of a device tensor), which on the CPU returns the tensor
itself, returns a copy inside the check, as it would on a GPU, so the source keeps its side. Limits: code
that passes ``device="cpu"`` explicitly is taken at its word (the check cannot tell it from the model's
device); ops that torch runs without the torch-function protocol are not seen.

Example::

    with DeviceCheck() as dc:
        x, y = dc.host(x), dc.host(y)          # the data arrive on the host
        sd.ablation_curves(model, (x, y), layers, progress=False)
    print(dc.syncs)                            # host reads of device values
"""

from __future__ import annotations

import threading
import traceback
import weakref
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["DeviceCheck", "DeviceMismatch"]


class DeviceMismatch(RuntimeError):
    """An op mixed host and device tensors (it would fail on a GPU)."""


_FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.linspace, torch.logspace, torch.eye,
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.tensor, torch.as_tensor, torch.from_numpy,
    torch.empty_strided, torch.scalar_tensor, torch.range, torch.normal,
}
_SYNC_METHODS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu", "nonzero",
                 "masked_select", "__array__", "unique"}


_IGNORED = {"__get__", "__set__", "__len__", "__repr__", "__format__", "__hash__", "__iter__", "__contains__",
            "dim", "size", "stride", "numel", "element_size", "is_contiguous", "data_ptr", "storage_offset",
            "is_floating_point", "is_complex", "get_device", "nelement", "__reduce_ex__", "__deepcopy__"}


_DEVICE_PROP = torch.Tensor.device


def _name(func) -> str:
    return getattr(func, "__name__", str(func))


def _tensors(obj, out: list) -> list:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, out)
    return out


class DeviceCheck(TorchFunctionMode):
    """Plays host against device on the CPU (module docstring). ``syncs``: Counter of host reads by op name."""

    def __init__(self):
        super().__init__()
        self._host: dict = {}  # id -> weakref (tensors compare elementwise: no set / WeakSet of tensors)
        self._lock = threading.Lock()
        self._dev_side: dict = {}  # id(torch.device) -> (that object, came from a host tensor)
        self.syncs: Counter = Counter()
        #: where the host reads happened: Counter of (op name, file:line of the innermost singledir frame)
        self.sync_sites: Counter = Counter()

    def host(self, t: torch.Tensor) -> torch.Tensor:
        """Mark ``t`` as a host tensor (e.g. the data as a user hands them over); returns ``t``."""
        with self._lock:
            self._host[id(t)] = weakref.ref(t)
        return t

    def _device(self, t: torch.Tensor) -> None:
        with self._lock:
            self._host.pop(id(t), None)

    def _device_side(self, dev) -> bool:
        """Whether a ``device=`` argument means the device: the ``.device`` of a host tensor means the
        host; any other device (the model's, a literal) the device."""
        hit = self._dev_side.get(id(dev))
        return not (hit is not None and hit[0] is dev and hit[1])

    def is_host(self, t: torch.Tensor) -> bool:
        r = self._host.get(id(t))
        return r is not None and r() is t

    def _sync(self, name: str) -> None:
        self.syncs[name] += 1
        site = "?"
        for frame in reversed(traceback.extract_stack(limit=12)[:-2]):
            if "singledir" in frame.filename and "devicecheck" not in frame.filename:
                site = f"{frame.filename.rsplit('singledir/', 1)[-1]}:{frame.lineno}"
                break
        self.sync_sites[(name, site)] += 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        result = func(*args, **kwargs)
        if name == "__get__" and getattr(func, "__self__", None) is _DEVICE_PROP and args:
            # remember which side this torch.device object came from (``t.to(device=h.device)``)
            with self._lock:
                self._dev_side[id(result)] = (result, self.is_host(args[0]))
            return result
        if name == "__get__" and isinstance(result, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
            if self.is_host(args[0]):  # .T, .mT, .data, ...: a view on the same side
                self.host(result)
            elif result is not args[0]:
                self._device(result)
            return result
        if name in _IGNORED:
            return result
        if func in _FACTORIES:
            dev = kwargs.get("device")
            on_device = dev is not None and self._device_side(dev)
            for t in _tensors(result, []):
                if on_device:
                    self._device(t)
                else:
                    self.host(t)
            return result
        self_t = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name in _SYNC_METHODS:
            if self_t is not None and not self.is_host(self_t):
                self._sync(name)
            if name == "cpu" and isinstance(result, torch.Tensor):
                if result is self_t and not self.is_host(self_t):
                    result = result.clone()  # a copy, as on a GPU: the device tensor stays a device tensor
                self.host(result)
            elif self_t is not None:  # nonzero, unique, ...: results on self's side
                for t in _tensors(result, []):
                    if self.is_host(self_t):
                        self.host(t)
                    elif t is not self_t:
                        self._device(t)
            return result
        if name == "to" or name == "cuda":
            dev = kwargs.get("device")
            target = None
            for a in list(args[1:]) + [dev]:
                if isinstance(a, torch.Tensor):
                    target = not self.is_host(a)
                elif isinstance(a, (torch.device, str, int)) and not isinstance(a, bool):
                    target = self._device_side(a)
            if name == "cuda":
                target = True
            if target is None:  # a dtype change only: stays where it is
                target = self_t is not None and not self.is_host(self_t)
            if isinstance(result, torch.Tensor):
                if target and self_t is not None and self.is_host(self_t):
                    self._sync("h2d")  # a host-to-device copy (pageable memory: it waits on a GPU)
                if result is self_t and target == self.is_host(self_t):
                    result = result.clone()  # a copy, as on a GPU: the source keeps its side
                if target:
                    self._device(result)
                else:
                    self.host(result)
            return result
        if name in ("__getitem__", "__setitem__", "index_put_", "index_put"):
            operands = [self_t] + (_tensors(args[2:], []) if name == "__setitem__" else [])
            if name == "__getitem__" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in _tensors(args[1:2], [])
            ) and self_t is not None and not self.is_host(self_t):
                self._sync("bool-index")
        elif name == "copy_":
            operands = [self_t]
        else:
            operands = _tensors(args, []) + _tensors(kwargs, [])
        operands = [t for t in operands if t is not None]
        host = [t for t in operands if self.is_host(t)]
        device = [t for t in operands if not self.is_host(t)]
        if device and any(t.ndim > 0 for t in host):
            shapes = [tuple(t.shape) for t in host]
            raise DeviceMismatch(
                f"{name}: host tensors {shapes} meet device tensors {[tuple(t.shape) for t in device]} "
                f"(on a GPU: 'Expected all tensors to be on the same device')"
            )
        for t in _tensors(result, []):
            if host and not device:
                self.host(t)
            elif device and not any(t is o for o in operands):
                self._device(t)  # a new tensor (its id may be a dead host tensor's)
        return result
