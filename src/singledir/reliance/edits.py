"""Activation edits shared by every evaluation path: clamps, projections and Gaussian noise (tensor math only).

Every path (the reference hooks, the batched hooks, the fx fast path and :mod:`.plan`) calls these very
functions, so the paths can differ only by floating-point rounding inside the network. A *unit* is index
``i`` of dimension 1 of a layer's output (an MLP neuron, or a whole conv feature map).

Offers:

- :class:`ClampSpec`, :func:`clamp_factors`, :func:`clamp_with`, :func:`apply_clamp` -- set units to
  clamp values (``h * keep + fill``), optionally per *replica* (configurations stacked along the batch).
- :class:`ProjectSpec`, :func:`apply_projection` -- ``h - P (h - center)``: ablate a subspace of the unit
  space (random directions).
- :class:`NoiseSpec`, :func:`example_noise`, :func:`apply_noise` -- Gaussian noise ``scale * sigma_j * z``
  whose draw depends only on (key, example index, unit), never on batching, drawn where the activations
  are by a counter-based generator (the same numbers on every device up to float32 rounding).
- :func:`as_edit` -- a ClampSpec / ProjectSpec / list of unit indices as an edit function ``h -> h'``.
- :func:`unit_shape` -- the broadcast shape of a per-unit vector against an activation.

Example::

    from singledir.reliance.edits import apply_clamp
    h2 = apply_clamp(h, mask=torch.tensor([True, False, True]), values=0.0)   # units 0 and 2 set to 0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from singledir.errors import SingledirError

__all__ = [
    "ClampSpec",
    "NoiseSpec",
    "ProjectSpec",
    "apply_clamp",
    "apply_noise",
    "apply_projection",
    "as_edit",
    "clamp_factors",
    "clamp_with",
    "example_noise",
    "noise_keys",
    "unit_shape",
]


# --------------------------------------------------------------------------------------------------
# Clamps and projections
# --------------------------------------------------------------------------------------------------
def unit_shape(h: torch.Tensor) -> tuple[int, ...]:
    """Broadcast shape of a per-unit vector against ``h`` (N, C, *S): (1, C, 1, ...)."""
    return (1, h.shape[1]) + (1,) * (h.ndim - 2)


@dataclass
class ClampSpec:
    """Clamp units of a layer: ``mask`` (C,) bool, or (R, C) for R replicas stacked along the batch.

    ``values`` (C,) are the clamp values (zeros by default). With an (R, C) mask the batch of the layer's
    output must be R * n: replica r (examples ``r*n ... (r+1)*n - 1``) uses ``mask[r]``.
    """

    mask: torch.Tensor
    values: torch.Tensor | float = 0.0

    @classmethod
    def from_units(cls, units: Sequence[int], num_units: int, values=0.0) -> ClampSpec:
        """Clamp the listed unit indices of a layer with ``num_units`` units."""
        mask = torch.zeros(num_units, dtype=torch.bool)
        idx = torch.as_tensor(list(units), dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_units):
            raise SingledirError(f"unit indices must lie in [0, {num_units}), got {list(units)}")
        mask[idx] = True
        return cls(mask, values)


def clamp_factors(mask: torch.Tensor, values, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(keep, fill)`` for :func:`apply_clamp`: keep = 1 - mask, fill = values where masked (None if every
    clamp value is 0). Both are made on ``mask``'s device (``values`` may be on the CPU: they are moved);
    no value of a device tensor is read by the host."""
    keep = (~mask).to(dtype)
    if not isinstance(values, torch.Tensor):
        if float(values) == 0.0:
            return keep, None
        values = torch.full(mask.shape[-1:], float(values), dtype=dtype, device=mask.device)
    elif values.device.type == "cpu" and not bool(values.ne(0).any()):  # a host read of host values: free
        return keep, None
    fill = torch.where(mask, values.to(device=mask.device, dtype=dtype), torch.zeros((), dtype=dtype, device=mask.device))
    return keep, fill


def apply_clamp(h: torch.Tensor, mask: torch.Tensor, values: torch.Tensor | float = 0.0) -> torch.Tensor:
    """``h`` with units where ``mask`` is True set to ``values`` (per unit); out of place.

    ``mask`` is (C,) or (R, C): then ``h``'s batch is R replicas of n examples, each with its own mask
    (``values`` then (C,) or (R, C)). Conv maps are clamped to the constant value at every spatial
    position. Computed as ``h * keep + fill`` (keep = 0/1, fill = clamp value or 0): exact for finite
    activations and ~6x faster on CPU than ``torch.where``.
    """
    keep, fill = clamp_factors(mask.to(h.device), values, h.dtype)
    return clamp_with(h, keep.to(h.device), None if fill is None else fill.to(h.device))


def clamp_with(h: torch.Tensor, keep: torch.Tensor, fill: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``h * keep + fill`` with per-unit ``keep``/``fill`` of shape (C,) or (R, C) (replicas); written
    into ``out`` (same shape as ``h``, not overlapping it) if given."""
    c = h.shape[1]
    if keep.ndim == 1:
        shape = unit_shape(h)
        hv = h
    else:
        r = keep.shape[0]
        if h.shape[0] % r:
            raise ValueError(f"batch {h.shape[0]} is not a multiple of the {r} replicas of the mask")
        hv = h.reshape(r, h.shape[0] // r, *h.shape[1:])
        shape = (r, 1, c) + (1,) * (h.ndim - 2)
    if out is not None and keep.ndim == 1:
        if fill is None:
            return torch.mul(h, keep.view(shape), out=out)
        return torch.addcmul(fill.view(shape), h, keep.view(shape), out=out)
    if fill is None:
        res = hv * keep.view(shape)
    else:
        res = torch.addcmul(fill.view(shape) if fill.ndim == keep.ndim else fill.view((-1, 1, c) + (1,) * (h.ndim - 2)), hv, keep.view(shape))
    return res.reshape(h.shape)


@dataclass
class ProjectSpec:
    """Project out a subspace of a layer's unit space: ``h <- h - P h`` along dim 1.

    ``proj`` is a (C, C) projection matrix ``Q_k Q_k^T`` (float32), or (R, C, C) for R replicas stacked
    along the batch; with ``center`` (C,) the subspace is clamped to ``center``'s component instead
    (``h - P (h - center)``). Conv maps are projected at every spatial position.
    """

    proj: torch.Tensor
    center: torch.Tensor | None = None


def apply_projection(h: torch.Tensor, proj: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """``h - P (h - center)`` along the unit dim (P symmetric), per replica if ``proj`` is (R, C, C).

    With ``center`` None (zero clamp) the subspace is projected out; with the units' means it is
    clamped to the mean's component (the "mean" clamp for random directions).
    """
    proj = proj.to(dtype=h.dtype, device=h.device)
    hm = h.movedim(1, -1)  # (N, *S, C)
    d = hm if center is None else hm - center.to(dtype=h.dtype, device=h.device)
    if proj.ndim == 2:
        return (hm - d @ proj).movedim(-1, 1)
    r = proj.shape[0]
    n = h.shape[0] // r
    rows = n * int(np.prod(hm.shape[1:-1], dtype=np.int64))
    out = hm.reshape(r, rows, hm.shape[-1]) - torch.bmm(d.reshape(r, rows, hm.shape[-1]), proj)
    return out.reshape(hm.shape).movedim(-1, 1)



def as_edit(spec, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(spec, ClampSpec):
        return lambda h: apply_clamp(h, spec.mask, spec.values)
    if isinstance(spec, ProjectSpec):
        return lambda h: apply_projection(h, spec.proj, spec.center)
    if isinstance(spec, (Sequence, torch.Tensor, np.ndarray)) and not isinstance(spec, str):
        units = [int(u) for u in spec]

        def edit(h):
            c = h.shape[1]
            return apply_clamp(h, ClampSpec.from_units(units, c).mask, 0.0)

        return edit
    raise SingledirError(
        f"ablation spec for layer {name!r} must be a ClampSpec, a ProjectSpec or a list of unit indices, "
        f"got {type(spec).__name__}"
    )



# --------------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------------
_M32 = 0xFFFF_FFFF
_TWO_PI = 6.283185307179586


def _mix32_int(x: int) -> int:
    """:func:`_mix32_` on one Python int (the same arithmetic; used for the stream keys and in tests)."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def _i32(v: int) -> int:
    """The int32 with the bits of the 32-bit unsigned ``v``."""
    v &= _M32
    return v - (1 << 32) if v >= 1 << 31 else v


_MUL1, _MUL2 = _i32(0x7FEB352D), _i32(0x846CA68B)


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash ("lowbias32", C. Wellons), in place on an int32 tensor, bit for bit
    :func:`_mix32_int` on the unsigned values with the same bits.

    int32 arithmetic (3x the throughput of int64 on the CPU): ``>>`` of a negative int32 shifts in ones,
    so each shift is masked to a logical one; products wrap modulo 2^32 (two's complement, as torch's
    int32 multiplication does on the CPU and on CUDA), which is what the hash needs.
    """
    x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF))
    x.mul_(_MUL1)
    x.bitwise_xor_((x >> 15).bitwise_and_(0x1FFFF))
    x.mul_(_MUL2)
    x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF))
    return x


def noise_keys(key: Sequence[int]) -> tuple[int, int, int, int]:
    """Four 32-bit words derived from a noise stream's ``key`` (e.g. (seed, repeat, layer index))."""
    h = 0x9E3779B9
    for k in key:
        k = int(k)
        h = _mix32_int(h ^ _mix32_int((k & _M32) ^ _mix32_int((k >> 32) & _M32 ^ 0x632BE5AB)))
    out, w = [], h
    for salt in (0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F, 0x165667B1):
        w = _mix32_int(w ^ salt)
        out.append(w)
    return tuple(out)


def example_noise(
    shape: Sequence[int],
    start: int,
    stop: int,
    key: Sequence[int],
    dtype=torch.float32,
    device=None,
    colmajor: bool = False,
) -> torch.Tensor:
    """Standard normal noise for examples ``start .. stop-1``, each of per-example ``shape``, drawn on
    ``device`` (the CPU by default) by a counter-based generator: no generator state, no host work.

    Value ``j`` (flat index into ``shape``) of example ``i`` is a pure function of (``key``, ``i``, ``j``),
    so any batching of the data, any chunking and any device give the same noise for the same example:

    - integer part (bit for bit the same on every device): ``a_i = mix(mix(i ^ k0) ^ k1)``,
      ``b_p = mix(p ^ k2)``, ``x = mix(a_i ^ b_p)``, ``x' = mix(x ^ k3)`` with the 32-bit hash
      :func:`_mix32_` and the stream's words ``k0..k3`` (:func:`noise_keys`); pair ``p`` of ``P = ceil(D/2)``
      (``D`` values per example);
    - float part (float32, Box-Muller): ``u = (x >> 8) + 0.5) / 2^24``, ``u' = ((x' >> 8) + 0.5) / 2^24``,
      ``r = sqrt(-2 log u)``; value ``p`` is ``r cos(2 pi u')`` and value ``P + p`` is ``r sin(2 pi u')``.
      ``log``, ``sqrt``, ``cos`` and ``sin`` are correctly rounded to within a few float32 ulps on every
      device, not bit for bit: the same noise *up to float32 rounding* (relative ~1e-6) on CPU and GPU.

    The result is computed in float32 and returned in ``dtype``. ``colmajor=True`` (a 1-D per-example
    ``shape`` only) returns an (n, D) tensor stored column-major (``.t()`` of a contiguous (D, n)), the
    layout of the fx path's walks, without a copy. Tails: ``|z| <= sqrt(2 ln 2^25) ~ 5.9``.
    """
    shape = tuple(int(s) for s in shape)
    n = int(stop) - int(start)
    d = 1
    for s in shape:
        d *= s
    if int(stop) > 1 << 31:
        raise SingledirError(f"noise for example indices >= 2^31 is not supported (got stop={stop})")
    k0, k1, k2, k3 = (_i32(k) for k in noise_keys(key))
    pairs = (d + 1) // 2
    i = torch.arange(int(start), int(stop), dtype=torch.int32, device=device)
    a = _mix32_(_mix32_(i.bitwise_xor_(k0)).bitwise_xor_(k1))
    b = _mix32_(torch.arange(pairs, dtype=torch.int32, device=device).bitwise_xor_(k2))
    colmajor = colmajor and len(shape) == 1
    x = torch.bitwise_xor(b.unsqueeze(1), a) if colmajor else torch.bitwise_xor(a.unsqueeze(1), b)
    _mix32_(x)
    x2 = _mix32_(torch.bitwise_xor(x, k3))
    # u in (0, 1) from the top 24 bits (exact in float32); r = sqrt(-2 log u), theta = 2 pi u'
    r = (x >> 8).bitwise_and_(0xFFFFFF).to(torch.float32).add_(0.5).mul_(2.0**-24).log_().mul_(-2.0).sqrt_()
    theta = x2.bitwise_right_shift_(8).bitwise_and_(0xFFFFFF).to(torch.float32).add_(0.5).mul_(_TWO_PI * 2.0**-24)
    if colmajor:
        z = torch.empty((2 * pairs, n), dtype=torch.float32, device=device)
        torch.mul(torch.cos(theta), r, out=z[:pairs])
        torch.mul(theta.sin_(), r, out=z[pairs:])
        z = z[:d].t()
        return z if dtype == torch.float32 else z.t().to(dtype).t()
    z = torch.empty((n, 2 * pairs), dtype=torch.float32, device=device)
    torch.mul(torch.cos(theta), r, out=z[:, :pairs])
    torch.mul(theta.sin_(), r, out=z[:, pairs:])
    if 2 * pairs != d:
        z = z[:, :d].contiguous()
    return z.to(dtype).reshape(n, *shape)


def apply_noise(h: torch.Tensor, z: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``h + z * std``: ``z`` (n, C, *S) standard normal, ``std`` (C,) or (R, C) for R replicas of n."""
    std = std.to(dtype=h.dtype, device=h.device)
    if std.ndim == 1:
        return h + z * std.view(unit_shape(h))
    r = std.shape[0]
    hv = h.reshape(r, h.shape[0] // r, *h.shape[1:])
    out = hv + z.unsqueeze(0) * std.view((r, 1, h.shape[1]) + (1,) * (h.ndim - 2))
    return out.reshape(h.shape)


@dataclass
class NoiseSpec:
    """Gaussian noise for one layer: std ``scales[r] * sigma[j]`` for unit j in replica r.

    ``sigma`` (C,) float64 per-unit std; ``scales`` a float or a sequence of R floats (replicas stacked
    along the batch); ``key`` the noise stream (e.g. (seed, repeat, layer index)). The std is formed as
    ``(scale * sigma).float()`` so every path computes bitwise the same noise.
    """

    sigma: torch.Tensor
    scales: Sequence[float] | float
    key: Sequence[int] = (0,)
    std: torch.Tensor = field(init=False)

    def __post_init__(self):
        sig = torch.as_tensor(self.sigma, dtype=torch.float64)
        if isinstance(self.scales, (int, float)):
            self.std = (float(self.scales) * sig).float()
        else:
            sc = torch.as_tensor(list(self.scales), dtype=torch.float64)
            self.std = (sc[:, None] * sig[None, :]).float()

    @property
    def replicas(self) -> int:
        return 1 if self.std.ndim == 1 else int(self.std.shape[0])

