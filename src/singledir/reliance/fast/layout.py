"""How the fx path lays out and updates 2-D activations: column-major tensors, walk-owned buffers, folded
clamps and float32 accumulators re-anchored to float64.

Offers :func:`is_colmajor`, :func:`colmajor_copy`, :func:`buffer`, :func:`linear_colmajor`,
:class:`AnchoredSum` (with :data:`ANCHOR_EVERY`), :func:`foldable` / :class:`Folded`, :func:`nbytes`.

Why (MLP-style rests: 2-D activations and ``nn.Linear`` / ``F.linear``). The level walk is
memory-bandwidth bound, so it is organised around bytes moved per level:

- *Column-major 2-D activations.* Cached (n, C) batch tensors are stored column-major (``v.t()``
  contiguous); elementwise ops keep that layout, a Linear on it runs as ``W h^T + b`` (one GEMM with a
  long inner dimension, ~3x faster than ``F.linear`` for a 128->10 readout), and the logits are scored by
  reductions along contiguous memory (:mod:`.scoring`). Chosen only when the probe batch run this way
  reproduces the model (an op such as ``.view`` that needs row-major input keeps row-major).
- *Buffers.* A walk writes each level's markers, ReLUs and Linears into the tensors of the previous level
  (``out=``, :func:`buffer`) instead of fresh ones: the old value of a recomputed node is never read again.
- *Fusions.* A consumer read only by a ReLU feeds the ReLU directly (its pre-activation is not stored); a
  marker read only by a Linear is folded into the Linear's weights (:class:`Folded`: ``W * keep``, bias
  ``+ W fill``; for a zero clamp the very same products and sums).
- *Float32 accumulators, re-anchored* (:class:`AnchoredSum`): a Linear consumer is kept as a float32
  tensor updated by rank-1 terms and reset to its float64 sum every :data:`ANCHOR_EVERY` = 16 updates: at
  most 15 float32 updates from the correctly rounded value, where the reference's matmul rounds a float32
  sum over all units (re-anchoring costs ~6% of the MLP curve at 16 updates, ~12% at 8).

Measured on the 784-128-128-10 MLP, full 257-level curve over 10k images, 1 thread: 1.09 s -> 0.47 s
(``benchmarks/bench_ablation.py``; each change's A/B in ``benchmarks/README.md``). Row-sparse steps are
not used in column-major walks (gathering rows of a column-major tensor is a strided copy).
"""

from __future__ import annotations

import torch

__all__ = ["ANCHOR_EVERY", "AnchoredSum", "Folded", "buffer", "colmajor_copy", "foldable", "is_colmajor",
           "linear_colmajor", "nbytes"]


def is_colmajor(v) -> bool:
    """True for a 2-D tensor laid out column-major (``v.t()`` is contiguous) with more than one row."""
    return isinstance(v, torch.Tensor) and v.ndim == 2 and v.shape[0] > 1 and v.shape[1] > 1 and v.t().is_contiguous()


def colmajor_copy(v):
    """``v`` (n, C) with the same values, stored column-major (module docstring)."""
    return v.t().contiguous().t()


def buffer(bufs: dict, key, like: torch.Tensor, dtype=None, shape=None, stride=None) -> torch.Tensor:
    """The walk's own tensor ``bufs[key]``: kept while it matches ``like``'s shape, strides, dtype and
    device (or the ``dtype`` / ``shape`` / ``stride`` given instead), else (re)allocated."""
    shape = like.shape if shape is None else torch.Size(shape)
    stride = like.stride() if stride is None else tuple(stride)
    dtype = like.dtype if dtype is None else dtype
    b = bufs.get(key)
    if b is None or b.shape != shape or b.stride() != stride or b.dtype != dtype or b.device != like.device:
        b = bufs[key] = torch.empty_strided(shape, stride, dtype=dtype, device=like.device)
    return b



#: Column-major walks re-anchor a Linear consumer's float32 output to its exact value every this many
#: rank-1 updates (see :class:`AnchoredSum`).
ANCHOR_EVERY = 16


class AnchoredSum:
    """A walk's Linear-consumer output ``start + sum_i v_i w_i^T`` (one rank-1 term per newly ablated
    unit), kept as a float32 tensor ``work`` that the next nodes read directly.

    Float32 updates halve the memory traffic of a float64 accumulator and skip its conversion (the walk
    is memory-bandwidth bound), but each rounds twice. So every ``ANCHOR_EVERY`` updates the pending
    terms are added to a float64 copy ``exact`` in one GEMM (float32 products are exact in float64) and
    ``work`` is reset to ``exact`` rounded once to float32: ``work`` is never more than
    ``ANCHOR_EVERY - 1`` float32 updates away from the correctly rounded value, however many units
    are ablated (the reference's own float32 matmul sums all units' terms in float32).
    """

    #: False: ``work`` is (n, out) and a term is ``outer(v, w)``; True: the transposed layout (out, n) of
    #: :mod:`.chainwalk`, a term ``outer(w, v)`` (the same sums, the same rounding).
    transposed = False
    #: Transposed layout: ``work``'s rows are the outputs in this order (a LongTensor; None: as given); the
    #: float64 terms ``w64`` keep the outputs' own order, the float32 ones ``w32`` come in ``work``'s.
    order = None

    def __init__(self, start: torch.Tensor, bufs: dict, key):
        self._set(buffer(bufs, (key, "work"), start).copy_(start),
                  buffer(bufs, (key, "exact"), start, dtype=torch.float64))

    def _set(self, work: torch.Tensor, exact: torch.Tensor) -> None:
        self.work = work
        self.exact = exact.copy_(work)
        self.vs: list = []
        self.ws: list = []

    def narrow(self, rows: int) -> None:
        """Transposed layout: from now on keep only the first ``rows`` rows of ``work`` up to date (the
        others are no longer read); the float32 terms ``w32`` then have ``rows`` entries, the float64
        ones ``w64`` may keep all of theirs."""
        if rows != self.work.shape[0]:
            self.work, self.exact = self.work[:rows], self.exact[:rows]

    def add(self, v: torch.Tensor, w64: torch.Tensor, w32: torch.Tensor, out: torch.Tensor | None = None) -> None:
        """Add ``outer(v, w)`` (``v``: (n,) in the model's dtype; ``w`` in float64 and float32).

        ``out`` (transposed layout): write the new sum there and keep it as ``work`` from now on (the
        previous ``work`` is only read: the chain walk writes the logits of each level into a new slot of
        its score ring this way instead of updating a buffer and copying it there)."""
        self.vs.append(v)
        self.ws.append(w64)
        if out is not None and out is not self.work:
            if len(self.vs) < ANCHOR_EVERY:
                self.work = torch.addr(self.work, w32, v, out=out)
                return
            self.work = out
        if len(self.vs) < ANCHOR_EVERY:
            if self.transposed:
                self.work.addr_(w32, v)
            else:
                self.work.addr_(v, w32)
            return
        if self.transposed:
            w = torch.stack(self.ws, 1)  # (out, terms): the rows of ``exact`` still updated (:meth:`narrow`)
            if self.order is not None:  # the terms' entries in another order than ``work``'s rows
                w = w.index_select(0, self.order[: len(self.exact)])
            elif len(w) != len(self.exact):
                w = w[: len(self.exact)]
            self.exact.addmm_(w, torch.stack(self.vs).to(torch.float64))
        else:
            self.exact.addmm_(torch.stack(self.vs, 1).to(torch.float64), torch.stack(self.ws))
        self.work.copy_(self.exact)
        self.vs.clear()
        self.ws.clear()


def foldable(edit) -> bool:
    """A walk's unit clamp (``EditWalker`` without basis): foldable into the next Linear."""
    return edit is None or (getattr(edit, "supports_out", False) and hasattr(edit, "keep"))


class Folded:
    """A marker's value left unmaterialized: the layer output ``h`` and the walk's clamp ``edit``
    (None: nothing ablated). Its Linear computes ``W (h * keep + fill) + b`` as
    ``(W * keep) h + (b + W fill)``: with a zero clamp exactly the same products and sums (an ablated
    unit's term is ``0 * h`` either way), with a mean clamp the fill's terms are summed apart from h's.
    """

    __slots__ = ("h", "edit")

    def __init__(self, h, edit):
        self.h, self.edit = h, edit

    def fold(self, weight, bias):
        e = self.edit
        if e is None or not e.ablated:
            return weight, bias, self.h
        w = weight * e.keep.to(weight.dtype)
        if e.has_fill:
            fb = weight @ e.fill.to(weight.dtype)
            bias = fb if bias is None else bias + fb
        return w, bias, self.h


def linear_colmajor(h, weight, bias, out=None):
    """``F.linear(h, weight, bias)`` for a column-major ``h``, computed as ``(W h^T + b)^T`` (column-major).

    The same products and sums as ``F.linear``, in BLAS's own order for this shape (float rounding may
    differ in the last bit); for a 784-128-128-10 MLP's 128->10 readout on 3k examples ~3x faster than
    ``F.linear`` on the row-major tensor and ~15x faster than ``F.linear`` on the column-major one.
    """
    ht = h.t()
    if bias is None:
        return torch.mm(weight, ht, out=out).t()
    return torch.addmm(bias.unsqueeze(1), weight, ht, out=out).t()


def nbytes(v) -> int:
    """Bytes of the tensors in ``v``: a tensor, or a tuple / list / dict / output object (a Hugging Face
    ``ModelOutput`` is a dict) holding tensors, counted recursively; anything else is 0."""
    if isinstance(v, torch.Tensor):
        return v.numel() * v.element_size()
    if isinstance(v, dict):
        return sum(nbytes(t) for t in v.values())
    if isinstance(v, (tuple, list)):
        return sum(nbytes(t) for t in v)
    return 0

