"""The fast evaluation paths: cached prefix + incremental linear consumers (fx), or batched hooks.

Offers:

- :class:`FastEvaluator` (``method="fast"``; ``"auto"`` when the model traces) -- torch.fx path.
- :class:`HookEvaluator` (``method="hooks"``; ``"auto"`` when tracing fails) -- stacks many ablation
  levels / noise scales / single-unit ablations along the batch dimension, one full pass per group.
- :func:`make_evaluator` -- pick the path for ``method`` ("auto", "fast", "hooks", "reference").
- :data:`DEFAULT_MEMORY_BUDGET` -- 1 GiB: the fast path sizes its example chunks (cache + state of the
  recomputed part) and the hook path its level groups so that the activations they hold stay below it.

Both implement the evaluator interface of :mod:`.reference` and return the same numbers (up to float
rounding inside the network: identical accuracies except at exact near-ties, losses within ~1e-6).

How the fx path works (and why it is exact)
-------------------------------------------
1. *Split.* The model is traced with a marker node after each analysed layer (:mod:`.graph`). Nodes that
   no marker reaches (the *prefix*: for the MLP's ``hidden.0`` the input flatten and the first Linear)
   compute the same value at every ablation level, so they run ONCE per example chunk; the prefix values
   the rest consumes are cached. Only the *rest* is recomputed per level, with the ablation applied at
   the markers by the very same edit function the reference installs as a hook.
2. *Incremental linear consumers.* If a marker feeds only channel-separable linear ops (average pools,
   flatten, identity) ending in one ``nn.Linear`` / ``nn.ConvNd``, the consumer's output is linear in the
   layer's units: ``out = b + sum_u W_u g_u(h_u)``. Clamping unit u to c_u changes it by exactly
   ``W_u g_u(c_u - h_u)``; so going from level k-1 to k we add the newly ablated units' deltas to a
   float64 accumulator instead of recomputing the consumer (and everything in between). Products of
   float32 numbers are exact in float64, so the accumulator carries the exact sum up to one rounding
   per addition (~1e-16 relative) -- far below the float32 rounding of the reference's own matmul
   (column-major walks keep a float32 copy re-anchored to it, item 4). When
   a layer becomes *fully* ablated the consumer is recomputed from the clamped tensor instead (exactly
   the reference's value: all-zero inputs give the bias bit for bit). A random-basis "unit" is a
   direction q: its coordinate is ``q . h`` and its weight ``W q``, the same update.
   The update is only used when nothing upstream of the marker changed in the same step; otherwise the
   marker and everything after it are recomputed and the accumulator restarts from the new value.
3. *Levels walk.* For each example chunk, each curve walks its levels in increasing k, recomputing only
   the nodes whose inputs changed (the recompute lists are cached per kind of step). Chunks are sized so
   that the recomputed state stays cache-sized (these CPUs are memory-bandwidth bound: stacking hundreds
   of levels along the batch made every elementwise op ~10x slower than walking levels on
   cache-resident chunks) and everything held stays within ``memory_budget``.
4. *Layout, buffers and fusions* (MLP-style rests: 2-D activations and ``nn.Linear`` / ``F.linear``).
   The walk is memory-bandwidth bound, so it is organised around bytes moved per level:

   - *Column-major 2-D activations.* Cached (n, C) batch tensors are stored column-major (``v.t()``
     contiguous); elementwise ops keep that layout, a Linear on it runs as ``W h^T + b`` (one GEMM with
     a long inner dimension, ~3x faster than ``F.linear`` for a 128->10 readout), and the logits are
     scored by reductions along contiguous memory (:class:`_ScoreQueue`). Chosen only when the probe batch run
     this way reproduces the model (an op such as ``.view`` that needs row-major input keeps row-major).
   - *Buffers.* A walk writes each level's markers, ReLUs and Linears into the tensors of the previous
     level (``out=``) instead of fresh ones: the old value of a recomputed node is never read again.
   - *Fusions.* A consumer read only by a ReLU feeds the ReLU directly (its pre-activation is not
     stored); a marker read only by a Linear is folded into the Linear's weights (``W * keep``, bias
     ``+ W fill``: for a zero clamp the very same products and sums).
   - *Float32 accumulators, re-anchored.* A Linear consumer is kept as a float32 tensor updated by
     rank-1 terms and reset to its float64 sum (one GEMM of the pending terms, rounded once) every
     ``_ANCHOR_EVERY`` = 16 updates (:class:`_AnchoredSum`): at most 15 float32 updates from the
     correctly rounded value, where the reference's matmul rounds a float32 sum over all units
     (re-anchoring costs ~6% of the MLP curve at 16 updates, ~12% at 8).
   - *Batched scoring.* Each level's logits are copied into a ring and scored several levels at a time
     (:class:`_ScoreQueue`): per level, a dozen small reductions cost as much dispatch as arithmetic.

   Measured on the 784-128-128-10 MLP, full 257-level curve over 10k images, 1 thread: 1.09 s -> 0.47 s
   (``benchmarks/bench_ablation.py``). Row-sparse steps (``_step``) are not used in column-major walks
   (gathering rows of a column-major tensor is a strided copy), and single-unit ablations (importance)
   stay row-major, where their row-sparse steps are faster; there a narrow readout (<= ``_NARROW_OUT``
   outputs) still runs as ``W h^T``, and the prefix values are kept from ``base`` for the ablations
   when all chunks' values fit a quarter of ``memory_budget`` (:meth:`FastEvaluator._prefix`).

Noise uses the same cached prefix (noise is added at every marker; the rest is recomputed per scale and
repeat); its draws depend only on (seed, repeat, layer, example index), as in the reference.

Assumptions of the fx path (checked where possible, else the hook path is used): one input tensor, a
logits tensor output, examples treated independently in eval mode (chunks and row subsets of a batch give
the same per-example results), no in-place op in the cached prefix on a value the rest read earlier, and
a traced graph that reproduces the model's output on a probe batch.

Threads: the level walk issues many mid-sized ops. On a shared 2-core machine under load, two intra-op
threads made both paths ~3-10x slower (OpenMP barriers wait for descheduled threads); with
``torch.set_num_threads(1)`` the fast path stayed fast. Measure speed-ups at one thread when the machine
is busy.
"""

from __future__ import annotations

import math
from collections import ChainMap

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from tqdm.auto import tqdm

from singledir.errors import SingledirError
from singledir.reliance.graph import (
    Split,
    load_args,
    TraceFailed,
    find_linear_chain,
    is_inplace,
    run_node,
    trace_with_markers,
)
from singledir.reliance.hooks import (
    NoiseSpec,
    apply_clamp,
    apply_noise,
    apply_projection,
    edit_outputs,
    example_noise,
    noise,
)
from singledir.reliance.inputs import check_finite
from singledir.reliance.plan import check_logits, projection_matrix, score
from singledir.reliance.reference import ReferenceEvaluator

__all__ = ["DEFAULT_MEMORY_BUDGET", "METHODS", "FastEvaluator", "HookEvaluator", "make_evaluator"]

#: Default bound on the activations the fast paths hold at once (bytes).
DEFAULT_MEMORY_BUDGET = 1 << 30
#: Target size of the per-level recomputed state of one example chunk (stays in the CPU's cache).
_CACHE_TARGET = 16 << 20
_MIN_CHUNK = 512
#: Row-sparse steps when at most this fraction of the chunk's examples change: walks must write the
#: changed rows back (pays off only when few rows change), single-unit ablations need not.
_SPARSE_WALK = 0.3
_SPARSE_SINGLE = 0.7
#: Linear layers with at most this many outputs run as a transposed GEMM even on row-major input.
_NARROW_OUT = 16
#: Bytes of logits a column-major walk queues before scoring them (:class:`_ScoreQueue`).
_SCORE_RING = 1 << 20

METHODS = ("auto", "fast", "hooks", "reference")


def _device_of(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _chunks(batches, n: int):
    """Yield ``(start, x, y)`` chunks of ``n`` consecutive examples across the batches, in order."""
    buf_x, buf_y, have, start = [], [], 0, 0
    for x, y in batches:
        i = 0
        while i < x.shape[0]:
            take = min(n - have, x.shape[0] - i)
            buf_x.append(x[i : i + take])
            buf_y.append(y[i : i + take])
            have += take
            i += take
            if have == n:
                yield start, torch.cat(buf_x) if len(buf_x) > 1 else buf_x[0], torch.cat(buf_y) if len(
                    buf_y
                ) > 1 else buf_y[0]
                start += have
                buf_x, buf_y, have = [], [], 0
    if have:
        yield start, torch.cat(buf_x) if len(buf_x) > 1 else buf_x[0], torch.cat(buf_y) if len(buf_y) > 1 else buf_y[
            0
        ]


def _is_colmajor(v) -> bool:
    """True for a 2-D tensor laid out column-major (``v.t()`` is contiguous) with more than one row."""
    return isinstance(v, torch.Tensor) and v.ndim == 2 and v.shape[0] > 1 and v.shape[1] > 1 and v.t().is_contiguous()


def _colmajor(v):
    """``v`` (n, C) with the same values, stored column-major (module docstring, item 4)."""
    return v.t().contiguous().t()


def _buffer(bufs: dict, key, like: torch.Tensor, dtype=None, shape=None, stride=None) -> torch.Tensor:
    """The walk's own tensor ``bufs[key]``: kept while it matches ``like``'s shape, strides, dtype and
    device (or the ``dtype`` / ``shape`` / ``stride`` given instead), else (re)allocated."""
    shape = like.shape if shape is None else torch.Size(shape)
    stride = like.stride() if stride is None else tuple(stride)
    dtype = like.dtype if dtype is None else dtype
    b = bufs.get(key)
    if b is None or b.shape != shape or b.stride() != stride or b.dtype != dtype or b.device != like.device:
        b = bufs[key] = torch.empty_strided(shape, stride, dtype=dtype, device=like.device)
    return b


class _ScoreQueue:
    """The scores of a column-major walk's levels, computed ``size`` levels at a time.

    Scoring one level is a dozen small reductions over (classes x examples); each costs a few
    microseconds of dispatch, as much as the arithmetic on a cache-sized chunk. So each level's logits
    are copied into a ring of ``size`` slots and a full ring is scored in one go.

    With ``m`` the maximum over classes and ``D = logits - m``: an example's loss is
    ``log(sum(exp(D))) - D_y`` (log-softmax's own formula) and it is correct when ``D_y == 0`` -- exact
    unless it has tied maxima, which the number of zeros of ``D`` (== examples otherwise) detects: such
    levels (and levels with non-finite logits) are rescored by :func:`_example_scores` (argmax's
    first-maximum rule; the one-line error).
    """

    def __init__(self, y: torch.Tensor, classes: int, dtype, size: int):
        n = y.shape[0]
        self.y, self.n = y, n
        self.ring = torch.empty(size, classes, n, dtype=dtype, device=y.device)
        self.yi = y.view(1, 1, n).expand(size, 1, n)
        self.pending: list = []
        self.done: list = []  # (key, correct, loss)

    def push(self, logits: torch.Tensor, key) -> None:
        """Queue the (n, classes) logits of one level (copied: the walk overwrites them)."""
        self.ring[len(self.pending)].copy_(logits.t())
        self.pending.append(key)
        if len(self.pending) == self.ring.shape[0]:
            self._score_pending()

    def flush(self) -> list:
        """Score the queued levels; returns (and clears) every ``(key, correct, loss)`` scored so far."""
        self._score_pending()
        out, self.done = self.done, []
        return out

    def _score_pending(self) -> None:
        k = len(self.pending)
        if k:
            r = self.ring[:k]
            d = r - r.amax(1, keepdim=True)
            dy = d.gather(1, self.yi[:k])
            log_s = d.exp().sum(1).log_()
            loss = (log_s.sum(1, dtype=torch.float64) - dy.sum((1, 2), dtype=torch.float64)).tolist()
            zeros = d.eq_(0).sum((1, 2)).tolist()
            correct = (dy == 0).sum((1, 2)).tolist()
            for j, key in enumerate(self.pending):
                c, lo = correct[j], loss[j]
                if zeros[j] != self.n or not math.isfinite(lo):
                    cv, lv = _example_scores(self.ring[j].t(), self.y)
                    c, lo = int(cv.sum()), float(lv.sum())
                self.done.append((key, c, lo))
            self.pending.clear()


#: Column-major walks re-anchor a Linear consumer's float32 output to its exact value every this many
#: rank-1 updates (see :class:`_AnchoredSum`).
_ANCHOR_EVERY = 16


class _AnchoredSum:
    """A walk's Linear-consumer output ``start + sum_i v_i w_i^T`` (one rank-1 term per newly ablated
    unit), kept as a float32 tensor ``work`` that the next nodes read directly.

    Float32 updates halve the memory traffic of a float64 accumulator and skip its conversion (the walk
    is memory-bandwidth bound), but each rounds twice. So every ``_ANCHOR_EVERY`` updates the pending
    terms are added to a float64 copy ``exact`` in one GEMM (float32 products are exact in float64) and
    ``work`` is reset to ``exact`` rounded once to float32: ``work`` is never more than
    ``_ANCHOR_EVERY - 1`` float32 updates away from the correctly rounded value, however many units
    are ablated (the reference's own float32 matmul sums all units' terms in float32).
    """

    def __init__(self, start: torch.Tensor, bufs: dict, key):
        self.exact = _buffer(bufs, (key, "exact"), start, dtype=torch.float64).copy_(start)
        self.work = _buffer(bufs, (key, "work"), start).copy_(start)
        self.vs: list = []
        self.ws: list = []

    def add(self, v: torch.Tensor, w64: torch.Tensor, w32: torch.Tensor) -> None:
        """Add ``outer(v, w)`` (``v``: (n,) in the model's dtype; ``w`` in float64 and float32)."""
        self.vs.append(v)
        self.ws.append(w64)
        if len(self.vs) < _ANCHOR_EVERY:
            self.work.addr_(v, w32)
            return
        d = torch.stack(self.vs, 1).to(torch.float64)
        self.exact.addmm_(d, torch.stack(self.ws))
        self.work.copy_(self.exact)
        self.vs.clear()
        self.ws.clear()


def _foldable(edit) -> bool:
    """A walk's unit clamp (``EditWalker`` without basis): foldable into the next Linear."""
    return edit is None or (getattr(edit, "supports_out", False) and hasattr(edit, "keep"))


class _Folded:
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


def _linear_colmajor(h, weight, bias, out=None):
    """``F.linear(h, weight, bias)`` for a column-major ``h``, computed as ``(W h^T + b)^T`` (column-major).

    The same products and sums as ``F.linear``, in BLAS's own order for this shape (float rounding may
    differ in the last bit); for a 784-128-128-10 MLP's 128->10 readout on 3k examples ~3x faster than
    ``F.linear`` on the row-major tensor and ~15x faster than ``F.linear`` on the column-major one.
    """
    ht = h.t()
    if bias is None:
        return torch.mm(weight, ht, out=out).t()
    return torch.addmm(bias.unsqueeze(1), weight, ht, out=out).t()


def _example_scores(logits, y):
    """Per-example (correct: bool, cross-entropy: float64) -- summed, the same numbers as ``score``.

    Column-major logits are scored with reductions that run along contiguous memory (``amax``,
    ``logsumexp``: ~10x faster there than ``argmax`` / ``cross_entropy``). ``correct`` keeps argmax's
    rule exactly: the prediction is the *first* class reaching the maximum, so rows where several classes
    tie at the maximum are decided by ``argmax`` itself. The loss ``logsumexp(l) - l_y`` is the
    cross-entropy up to float rounding (~1e-7 relative).
    """
    if _is_colmajor(logits) and logits.is_floating_point():
        m = logits.amax(1)
        ly = logits.gather(1, y.unsqueeze(1)).squeeze(1)
        loss = (torch.logsumexp(logits, 1) - ly).to(torch.float64)
        correct = ly == m
        ties = (logits == m.unsqueeze(1)).sum(1) > 1
        if bool(ties.any()):
            rows = ties.nonzero().squeeze(1)
            correct[rows] = logits.index_select(0, rows).argmax(1) == y.index_select(0, rows)
    else:
        loss = F.cross_entropy(logits, y, reduction="none").to(torch.float64)
        correct = None
    if not math.isfinite(float(loss.sum())):
        score(logits.contiguous(), y)  # raises the one-line error
    return (logits.argmax(1) == y if correct is None else correct), loss


def _score(logits, y) -> tuple[int, float]:
    """``score`` (number correct, summed cross-entropy): the totals of :func:`_example_scores`;
    column-major logits through a one-level :class:`_ScoreQueue` (no per-example vectors)."""
    if not (_is_colmajor(logits) and logits.is_floating_point()):
        c, lo = _example_scores(logits, y)
        return int(c.sum()), float(lo.sum())
    queue = _ScoreQueue(y, logits.shape[1], logits.dtype, 1)
    queue.push(logits, None)
    (_key, c, lo), = queue.flush()
    return c, lo


class _RowView:
    """Env for recomputing nodes on a subset of rows: new values go to ``sub``; inputs from outside are
    gathered from ``env`` (batch tensors) or passed as they are (parameters, constants)."""

    def __init__(self, env, rows, batch_nodes):
        self.env, self.rows, self.batch_nodes = env, rows, batch_nodes
        self.sub: dict = {}

    def __getitem__(self, node):
        v = self.sub.get(node)
        if v is None:
            v = self.env[node]
            if node in self.batch_nodes and isinstance(v, torch.Tensor):
                v = self.sub[node] = v.index_select(0, self.rows)
        return v

    def __setitem__(self, node, value):
        self.sub[node] = value

    def get(self, node, default=None):
        return self.sub.get(node, default)


def _nbytes(v) -> int:
    return v.numel() * v.element_size() if isinstance(v, torch.Tensor) else 0


# ==================================================================================================
# fx path
# ==================================================================================================
class FastEvaluator:
    """Cached prefix, incremental linear consumers, level walk on cache-sized chunks (module docstring)."""

    name = "fast"

    def __init__(self, model, batches, plans, memory_budget: int | None = None, progress: bool = False):
        self.model = model
        self.batches = batches
        self.plans = plans
        self.progress = progress
        self.budget = int(memory_budget or DEFAULT_MEMORY_BUDGET)
        self.device = _device_of(model)
        self.names = [p.name for p in plans]
        self.layer_index = {n: i for i, n in enumerate(self.names)}
        self.traced = trace_with_markers(model, self.names)
        out = self.traced.output.args[0]
        if not isinstance(out, fx.Node):
            raise TraceFailed("the traced forward does not return a single tensor")
        self.out_node = out
        self.split = Split.build(self.traced, self.names)
        self.inplace = {n for n in self.split.rest if is_inplace(n, self.traced)}
        self.linear_nodes = self._find_linear_nodes()
        self.relu_nodes = self._find_relu_nodes()
        self.out_features = {n: wb[0].shape[0] for n, wb in self.linear_nodes.items() if wb is not None}
        self.colmajor = False
        self._probe()
        self.chains = {}
        for m in self.split.markers:
            ch = find_linear_chain(m, self.traced)
            if ch is not None and self._chain_ok(ch):
                self.chains[m] = ch
        self.chain_consumers = {ch.consumer: ch for ch in self.chains.values()}
        # Fusions of column-major walks (module docstring, item 4):
        # consumer -> its only user, an out-of-place ReLU: the ReLU is computed from the accumulator;
        # marker -> its only user, a Linear: the clamp is folded into the Linear's weights and bias.
        self.relu_of_consumer = {}
        for c in self.chain_consumers:
            users = list(c.users)
            if len(users) == 1 and users[0] in self.relu_nodes:
                self.relu_of_consumer[c] = users[0]
        self.folded_markers = {}
        for m in self.split.markers:
            users = list(m.users)
            if len(users) == 1 and users[0] in self.linear_nodes and users[0].args[0] is m:
                self.folded_markers[m] = users[0]
        self._todo_cache: dict = {}
        self._weights: dict = {}
        self._prefix_cache: dict = {}
        self._prefix_bytes = 0

    # ---------------------------------------------------------------- set-up
    def _run_rest(self, env, nodes, edits=None, noise_fn=None, bufs=None):
        """Compute ``nodes`` (graph order) into ``env``. Walks pass ``bufs``, their own output tensors:
        markers, ReLUs and column-major Linears then write into the node's buffer from the previous
        level instead of a new tensor, and column-major walks fold clamps into Linears (module
        docstring, item 4)."""
        fuse = bufs is not None and self.colmajor
        for n in nodes:
            if n in self.split.marker_layer:
                h = env[n.args[0]]
                li = self.layer_index[self.split.marker_layer[n]]
                if noise_fn is not None:
                    env[n] = noise_fn(li, h)
                else:
                    e = edits.get(li) if edits else None
                    if fuse and n in self.folded_markers and _is_colmajor(h) and _foldable(e):
                        env[n] = _Folded(h, e)  # applied by its Linear (the next branch)
                    elif e is None:
                        env[n] = h
                    elif bufs is not None and getattr(e, "supports_out", False) and e.ablated:
                        env[n] = e(h, out=_buffer(bufs, n, h))
                    else:
                        env[n] = e(h)
            elif n in self.inplace:
                env[n] = run_node(n, env, self.traced, first_arg=env[n.args[0]].clone())
            elif n in self.linear_nodes and self._transposed_gemm(n, env[n.args[0]]):
                w, b = self.linear_nodes[n] or (*load_args(n.args[1:], env), None)[:2]
                h = env[n.args[0]]
                if isinstance(h, _Folded):
                    w, b, h = h.fold(w, b)
                out = None
                if bufs is not None:  # (out_features, n) row-major == the (n, out_features) result column-major
                    out = _buffer(bufs, n, h, shape=(w.shape[0], h.shape[0]), stride=(h.shape[0], 1))
                env[n] = _linear_colmajor(h, w, b, out=out)
            elif bufs is not None and n in self.relu_nodes:
                h = env[n.args[0]]
                env[n] = torch.clamp_min(h, 0, out=_buffer(bufs, n, h))  # what torch.relu computes
            else:
                env[n] = run_node(n, env, self.traced)

    def _transposed_gemm(self, n, h) -> bool:
        """Whether Linear node ``n`` runs as ``W h^T + b`` on input ``h``: always for a column-major or
        folded input; for a row-major 2-D input when the layer is a narrow readout (at most
        ``_NARROW_OUT`` outputs: there the long-inner-dimension GEMM is ~2x faster than ``F.linear``
        on these CPUs, e.g. 181 vs 427 us for 2000 x 128 -> 10; equal for 128 -> 128)."""
        if isinstance(h, _Folded) or _is_colmajor(h):
            return True
        return (
            isinstance(h, torch.Tensor)
            and h.ndim == 2
            and h.shape[0] > 1
            and h.is_contiguous()
            and self.out_features.get(n, _NARROW_OUT + 1) <= _NARROW_OUT
        )

    def _plain_module(self, n, cls):
        """The module node ``n`` calls on one argument if it is exactly a ``cls`` and no hook (its own or
        global) would run around it -- then the engine may compute it its own way -- else None."""
        if n.op != "call_module" or len(n.args) != 1 or n.kwargs:
            return None
        if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
            return None
        m = self.traced.module(n.target)
        if type(m) is not cls or m._forward_hooks or m._forward_pre_hooks:
            return None
        return m

    def _find_linear_nodes(self) -> dict:
        """Rest nodes that are plain ``nn.Linear`` calls (-> (weight, bias)) or ``F.linear`` (-> None)."""
        found = {}
        for n in self.split.rest:
            m = self._plain_module(n, nn.Linear)
            if m is not None:
                found[n] = (m.weight, m.bias)
            elif n.op == "call_function" and n.target in (F.linear, torch._C._nn.linear) and len(n.args) in (2, 3) and not n.kwargs:
                found[n] = None
        return found

    def _find_relu_nodes(self) -> set:
        """Rest nodes that are out-of-place ReLUs (``nn.ReLU()``, ``F.relu``, ``torch.relu``, ``.relu()``)."""
        found = set()
        for n in self.split.rest:
            if len(n.args) != 1 or n in self.inplace:
                continue
            m = self._plain_module(n, nn.ReLU)
            if (
                (m is not None and not m.inplace)
                or (n.op == "call_function" and n.target in (F.relu, torch.relu) and not n.kwargs.get("inplace", False))
                or (n.op == "call_method" and n.target == "relu" and not n.kwargs)
            ):
                found.add(n)
        return found

    def _matches_model(self, got, ref) -> bool:
        return isinstance(got, torch.Tensor) and got.shape == ref.shape and torch.allclose(
            got, ref, rtol=1e-4, atol=1e-5 * (1 + float(ref.abs().max()))
        )

    def _probe(self):
        """Run the traced graph on a few examples: check it matches the model, measure sizes, and decide
        whether 2-D activations are kept column-major (module docstring, item 4)."""
        x = self.batches[0][0][:3].to(self.device)
        n = self.probe_n = x.shape[0]
        try:
            env = self.split.run_prefix(x)
            cache = dict(env)
            self._run_rest(env, self.split.rest)
        except SingledirError:
            raise
        except Exception as exc:  # an op the node-by-node execution cannot run: use the hook path
            raise TraceFailed(f"running the traced graph failed: {type(exc).__name__}: {exc}") from exc
        ref = check_logits(self.model(x))
        got = env[self.out_node]
        if not self._matches_model(got, ref):
            raise TraceFailed("the traced graph does not reproduce the model's output")
        if self.linear_nodes and any(self._colmajor_ok(k, v) for k, v in cache.items()):
            self.colmajor = True
            try:
                cenv = self._to_colmajor(cache)
                self._run_rest(cenv, self.split.rest)
                self.colmajor = self._matches_model(cenv[self.out_node], ref)
            except Exception:  # an op of the model needs row-major 2-D tensors (e.g. .view): keep row-major
                self.colmajor = False
        self.shapes = {k: tuple(v.shape) for k, v in env.items() if isinstance(v, torch.Tensor)}
        self.dtypes = {k: v.dtype for k, v in env.items() if isinstance(v, torch.Tensor)}
        for m in self.split.markers:
            h = env[m]
            if not isinstance(h, torch.Tensor) or h.ndim < 2 or h.shape[0] != n:
                raise TraceFailed(f"marker of {self.split.marker_layer[m]} has no batch/unit dimension")
        cache = sum(_nbytes(env[b]) for b in self.split.boundary) / n
        rest = sum(_nbytes(env.get(r)) for r in self.split.rest) / n
        acc = sum(2 * _nbytes(env.get(m)) for m in self.split.markers) / n
        peak = max((_nbytes(v) for v in env.values()), default=0) / n
        per_example = self.bytes_per_example = cache + 3 * rest + 2 * acc + 2 * peak + 1
        self.rest_bytes = rest + acc
        n_budget = max(1, int(self.budget // per_example))
        n_cache = max(_MIN_CHUNK, int(_CACHE_TARGET // max(1.0, self.rest_bytes)))
        self.chunk = min(n_budget, n_cache)

    def _chain_ok(self, ch) -> bool:
        c = self.shapes[ch.marker][1]
        inp = ch.ops[-1] if ch.ops else ch.marker
        shape = self.shapes.get(inp)
        if shape is None:
            return False
        if ch.kind == "linear":
            if len(shape) != 2 or shape[1] % c:
                return False
            r = shape[1] // c
            if not ch.flattened and r != 1:
                return False
            ch.r = r
        else:
            conv = ch.module
            if len(shape) != conv.weight.ndim or shape[1] != conv.in_channels:
                return False
            ch.r = 1
        ch.units = c
        return True

    def _nchunks(self) -> int:
        n = sum(int(b[1].shape[0]) for b in self.batches)
        return max(1, math.ceil(n / self.chunk))

    def _colmajor_ok(self, node, v) -> bool:
        """A cached batch tensor (n, C) that the column-major layout applies to."""
        return (
            node in self.split.input_dependent
            and isinstance(v, torch.Tensor)
            and v.ndim == 2
            and v.shape[0] > 1
            and v.shape[1] > 1
            and v.is_floating_point()
        )

    def _to_colmajor(self, cache: dict) -> dict:
        return {k: _colmajor(v) if self._colmajor_ok(k, v) else v for k, v in cache.items()}

    def _prefix(self, start: int, x) -> dict:
        """The prefix values (row-major) of the chunk starting at example ``start``.

        Kept across calls (``base`` then ``singles`` / ``noise`` / ``cumulative`` run the prefix once,
        not twice) while all chunks' prefix values fit in a quarter of ``memory_budget``.
        """
        hit = self._prefix_cache.get(start)
        if hit is not None and hit[0] == x.shape[0]:
            return dict(hit[1])
        cache = self.split.run_prefix(x.to(self.device))
        size = sum(_nbytes(v) for v in cache.values())
        if self._prefix_bytes + size <= self.budget // 4:
            self._prefix_cache[start] = (x.shape[0], cache)
            self._prefix_bytes += size
        return dict(cache)

    def _base_env(self, start, x, colmajor: bool | None = None):
        """Prefix cache plus the unablated rest for the chunk ``x`` starting at example ``start``
        (column-major if ``self.colmajor``, or as ``colmajor`` says)."""
        env = self._prefix(start, x)
        if self.colmajor if colmajor is None else colmajor:
            env = self._to_colmajor(env)
        self._run_rest(env, self.split.rest)
        for m in self.split.markers:
            check_finite(env[m], f"the output of layer {self.split.marker_layer[m]!r}")
        return env

    # ---------------------------------------------------------------- incremental updates
    def _weight(self, ch, plan):
        """Consumer weights per unit/direction: float64 (units, R, out) for Linear, float32 for conv."""
        key = (ch.consumer, id(plan))
        w = self._weights.get(key)
        if w is None:
            wt = ch.module.weight.detach()
            if ch.kind == "linear":
                w = wt.double().reshape(wt.shape[0], ch.units, ch.r)  # (out, C, R)
                if plan.basis is not None:
                    w = torch.einsum("ocr,cd->odr", w, plan.basis.to(w.device))
                w = w.permute(1, 2, 0).contiguous()  # (C, R, out)
            else:
                w = wt
                if plan.basis is not None:
                    w = torch.einsum("oc...,cd->od...", wt.double(), plan.basis.to(wt.device)).to(wt.dtype)
                w = w.transpose(0, 1).unsqueeze(2).contiguous()  # (C, out, 1, k...)
            self._weights[key] = (w, plan)  # keep plan alive so id() stays unique
            return w
        return w[0]

    def _weight32(self, ch, plan, w):
        """``w`` (float64 Linear weights per unit) in float32, cached."""
        key = (ch.consumer, id(plan), "f32")
        hit = self._weights.get(key)
        if hit is None:
            hit = self._weights[key] = (w.to(ch.module.weight.dtype), plan)
        return hit[0]

    def _coord(self, h, plan, u):
        """(value - clamp) of unit/direction ``u`` of ``h``, shape (n, 1, ...), before the chain ops."""
        if plan.basis is None:
            return plan.values[u].to(h.dtype) - h[:, u : u + 1]
        q = plan.basis[:, u].to(dtype=h.dtype, device=h.device)
        a = (h.movedim(1, -1) @ q).unsqueeze(1)
        return plan.direction_value(u) - a

    def _chain_inputs(self, ch, env, plan, units):
        """``[(u, d)]``: the chain ops applied to (clamp - value) of each unit, shape (n, ...)."""
        h = env[ch.marker.args[0]]
        out = []
        for u in units:
            d = self._coord(h, plan, u)
            for op in ch.ops:
                d = run_node(op, env, self.traced, first_arg=d)
            out.append((u, d))
        return out

    def _delta(self, ch, w, u, d):
        """The consumer-output change (float64 for Linear) caused by chain input ``d`` of unit ``u``."""
        if ch.kind == "linear":
            dd = d.reshape(d.shape[0], -1).to(torch.float64)
            return torch.outer(dd[:, 0], w[u, 0]) if ch.r == 1 else dd @ w[u]
        conv = ch.module
        fconv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[d.ndim]
        return fconv(d, w[u], None, conv.stride, conv.padding, conv.dilation)

    def _add_dense(self, acc, ch, w, ds, inplace: bool):
        """``acc`` plus the deltas of ``ds`` over all rows (in place if ``inplace``)."""
        for u, d in ds:
            if ch.kind == "linear" and ch.r == 1:
                v = d.reshape(-1).to(torch.float64)
                acc = acc.addr_(v, w[u, 0]) if inplace else torch.addr(acc, v, w[u, 0])
            else:
                delta = self._delta(ch, w, u, d)
                acc = acc.add_(delta) if inplace else acc + delta
            inplace = True  # acc is our own tensor from here on
        return acc

    # ---------------------------------------------------------------- one step of a walk
    def _todo(self, inc, dirty):
        """Nodes to recompute (graph order) after updating ``inc`` incrementally and ``dirty`` markers,
        and whether they can be recomputed on a subset of rows (all outside inputs are batch tensors)."""
        key = (inc, dirty)
        hit = self._todo_cache.get(key)
        if hit is None:
            changed = {self.chains[m].consumer for m in inc}
            set_by_acc = set(changed)
            todo = []
            for n in self.split.rest:
                if n in set_by_acc:
                    continue
                if n in dirty or any(a in changed for a in n.all_input_nodes):
                    todo.append(n)
                    changed.add(n)
            row_safe = True
            for n in todo:
                for a in n.all_input_nodes:
                    if a in changed or a not in self.split.input_dependent:
                        continue
                    shape = self.shapes.get(a)
                    if shape is None or not shape or shape[0] != self.probe_n:
                        row_safe = False
            hit = self._todo_cache[key] = (todo, row_safe)
        return hit

    def _step(self, env, accs, base_accs, edits, new, counts, plans, owned=None, bufs=None):
        """Apply newly ablated units ``new`` ({layer index: units}) to ``env``.

        Walks pass their own ``accs`` (updated in place) and ``owned`` (nodes whose tensors they may
        write into); single-unit ablations pass ``accs=None`` and the shared, never modified
        ``base_accs``. Returns None after a dense step (``env`` holds the new values), or
        ``(rows, output_rows)`` after a row-sparse step: only the examples ``rows`` changed, and for walks
        their new values were written into ``env``.

        Row-sparse steps: clamping unit u changes nothing for examples whose ``h_u`` already equals the
        clamp value (post-ReLU zeros under a zero clamp); examples are independent in eval mode, so the
        nodes downstream are recomputed for the changed rows only (bitwise the same per-row results).
        """
        changed_layers = {self.names[li] for li in new}
        inc, dirty = [], []
        for li, units in new.items():
            name = self.names[li]
            full = counts[li] >= plans[li].units
            for m in self.traced.markers[name]:
                ch = self.chains.get(m)
                if ch is not None and not full and not (self.split.upstream_layers[m] & changed_layers):
                    inc.append((m, ch, li, units))
                else:
                    dirty.append(m)
        todo, row_safe = self._todo(frozenset(m for m, *_ in inc), frozenset(dirty))
        inputs = {}
        if len(inc) == 1 and not dirty and row_safe and not (accs is not None and self.colmajor):
            m, ch, li, units = inc[0]
            ds = inputs[m] = self._chain_inputs(ch, env, plans[li], units)
            n = ds[0][1].shape[0]
            nz = None
            for _u, d in ds:
                z = d.reshape(n, -1).ne(0).any(1)
                nz = z if nz is None else nz | z
            rows = nz.nonzero().squeeze(1)
            if rows.numel() <= (_SPARSE_WALK if accs is not None else _SPARSE_SINGLE) * n:
                return self._sparse_step(env, accs, base_accs, edits, ch, plans[li], ds, rows, todo, owned)
        fused = set()
        for m, ch, li, units in inc:
            c = ch.consumer
            ds = inputs.get(m) or self._chain_inputs(ch, env, plans[li], units)
            w = self._weight(ch, plans[li])
            anchored = bufs is not None and self.colmajor and ch.kind == "linear" and ch.r == 1
            if accs is not None and anchored:
                acc = accs.get(c)
                if acc is None:
                    acc = accs[c] = _AnchoredSum(env[c], bufs, c)
                w32 = self._weight32(ch, plans[li], w)
                for u, d in ds:
                    acc.add(d.reshape(-1), w[u, 0], w32[u, 0])
                acc = acc.work
            elif accs is not None:
                acc = accs.get(c)
                if acc is None:
                    acc = env[c].to(torch.float64, copy=True)
                acc = accs[c] = self._add_dense(acc, ch, w, ds, inplace=True)
            elif ch.kind == "linear" and ch.r == 1 and len(ds) == 1:
                # One update from the base state (single-unit ablations): in the model's dtype it is
                # rounded once more, as exact as that dtype allows (as in _sparse_step); a float64
                # copy would cost a 2x larger fresh tensor per unit for no accuracy that matters.
                u, d = ds[0]
                acc = torch.addr(env[c], d.reshape(-1), self._weight32(ch, plans[li], w)[u, 0])
            else:
                acc0 = base_accs.get(c)
                if acc0 is None:
                    acc0 = base_accs[c] = env[c].to(torch.float64, copy=True)
                acc = self._add_dense(acc0, ch, w, ds, inplace=False)
            r = self.relu_of_consumer.get(c) if bufs is not None and self.colmajor else None
            if r is not None and r in todo:
                # The ReLU straight from the accumulator; the pre-activation (read by this ReLU only)
                # is not kept. Bitwise what the ReLU node computes on it.
                out = _buffer(bufs, r, acc, dtype=self.dtypes[c])
                env[r] = torch.clamp_min(acc, 0, out=out) if acc.dtype == out.dtype else out.copy_(acc).clamp_min_(0)
                env.pop(c, None)
                fused.add(r)
            elif anchored and accs is not None:
                env[c] = acc  # the accumulator's own float32 tensor, updated in place by later steps
            elif acc.dtype == env[c].dtype and accs is None:
                env[c] = acc  # the single-unit update above: a fresh tensor in the model's dtype
            elif bufs is None:
                env[c] = acc.to(env[c].dtype, copy=True)
            else:
                env[c] = _buffer(bufs, c, env[c]).copy_(acc)
            if owned is not None:
                owned.discard(c)
        self._run_rest(env, [n for n in todo if n not in fused] if fused else todo, edits=edits, bufs=bufs)
        if accs is not None:
            for n in todo:
                if n in self.chain_consumers:
                    accs.pop(n, None)
                owned.discard(n)
        return None

    def _sparse_step(self, env, accs, base_accs, edits, ch, plan, ds, rows, todo, owned):
        if rows.numel() == 0:  # every example already sits at the clamp value: nothing changes
            return rows, env[self.out_node][:0]
        c = ch.consumer
        w = self._weight(ch, plan)
        dtype = env[c].dtype
        if accs is not None:
            acc = accs.get(c)
            if acc is None:
                acc = accs[c] = env[c].to(torch.float64, copy=True)
            for u, d in ds:
                acc.index_add_(0, rows, self._delta(ch, w, u, d.index_select(0, rows)).to(acc.dtype))
            acc_rows = acc.index_select(0, rows)
        else:
            # One update from the base state: done in the model's dtype it is rounded once, as exact as
            # that dtype allows (float64 accumulation only matters for the many updates of a walk).
            acc_rows = env[c].index_select(0, rows)
            for u, d in ds:
                d_rows = d.index_select(0, rows)
                if ch.kind == "linear" and ch.r == 1:
                    acc_rows.addr_(d_rows.reshape(-1), self._weight32(ch, plan, w)[u, 0])
                else:
                    acc_rows += self._delta(ch, w, u, d_rows).to(dtype)
        view = _RowView(env, rows, self.split.input_dependent)
        view[c] = acc_rows.to(dtype)
        self._run_rest(view, todo, edits=edits)
        if accs is not None:  # write the changed rows back (into tensors this walk owns)
            for node in [c, *todo]:
                t = env[node]
                if node not in owned:
                    t = env[node] = t.clone()
                    owned.add(node)
                t.index_copy_(0, rows, view.sub[node])
            for n in todo:
                if n in self.chain_consumers:
                    accs.pop(n, None)
        out = view.sub.get(self.out_node)
        if out is None:  # the output does not depend on this layer
            return rows[:0], env[self.out_node][:0]
        return rows, out

    # ---------------------------------------------------------------- evaluator interface
    def base(self):
        correct, loss = 0, 0.0
        for start, x, y in _chunks(self.batches, self.chunk):
            env = self._base_env(start, x)
            c, lo = _score(env[self.out_node], y.to(self.device))
            correct += c
            loss += lo
        return correct, loss

    def cumulative(self, curves):
        res = [(np.zeros(len(c.levels), dtype=np.int64), np.zeros(len(c.levels))) for c in curves]
        total = self._nchunks() * sum(len(c.levels) for c in curves)
        with tqdm(total=total, desc="ablation", disable=not self.progress, leave=False) as bar:
            for start, x, y in _chunks(self.batches, self.chunk):
                y = y.to(self.device)
                base_env = self._base_env(start, x)
                base_cv, base_lv = _example_scores(base_env[self.out_node], y)
                bufs: dict = {}  # reused by each curve's walk (a walk starts from base_env, never from these)
                queue = None
                if self.colmajor:  # no row-sparse steps: level totals suffice, scored in batches
                    out = base_env[self.out_node]
                    size = max(1, min(32, _SCORE_RING // max(1, out.numel() * out.element_size())))
                    queue = _ScoreQueue(y, out.shape[1], out.dtype, size)
                for ci, curve in enumerate(curves):
                    env, accs, owned = dict(base_env), {}, set()
                    cv, lv = base_cv.clone(), base_lv.clone()
                    edits = {li: p.walker(self.device) for li, p in enumerate(curve.plans)}
                    counts = {li: 0 for li in range(len(self.names))}
                    k = 0
                    for i, level in enumerate(curve.levels):
                        if level > k:
                            new = curve.units_between(k, level)
                            for li, us in new.items():
                                edits[li].add(us)
                                counts[li] = len(edits[li].ablated)
                            r = self._step(env, accs, None, edits, new, counts, curve.plans, owned, bufs)
                            if queue is not None:  # scored below
                                pass
                            elif r is None:
                                cv, lv = _example_scores(env[self.out_node], y)
                            elif r[0].numel():
                                c_r, l_r = _example_scores(r[1], y.index_select(0, r[0]))
                                cv.index_copy_(0, r[0], c_r)
                                lv.index_copy_(0, r[0], l_r)
                            k = level
                        if queue is not None:
                            queue.push(env[self.out_node], i)
                        else:
                            res[ci][0][i] += int(cv.sum())
                            res[ci][1][i] += float(lv.sum())
                    if queue is not None:
                        for i, c, lo in queue.flush():
                            res[ci][0][i] += c
                            res[ci][1][i] += lo
                    bar.update(len(curve.levels))
        return res

    def singles(self, plans, units):
        correct = np.zeros(len(units), dtype=np.int64)
        loss = np.zeros(len(units))
        with tqdm(total=self._nchunks() * len(units), desc="importance", disable=not self.progress, leave=False) as bar:
            for start, x, y in _chunks(self.batches, self.chunk):
                y = y.to(self.device)
                # Row-major: single-unit ablations gain most from row-sparse steps (measured on the MLP's
                # 128 hidden.0 units, 10k images: 0.56 s row-major vs 0.98 s column-major dense)
                base_env = self._base_env(start, x, colmajor=False)
                base_cv, base_lv = _example_scores(base_env[self.out_node], y)
                base_c, base_l = int(base_cv.sum()), float(base_lv.sum())
                base_accs: dict = {}
                for i, (li, u) in enumerate(units):
                    env = ChainMap({}, base_env)
                    edits = {li: plans[li].edit([u])}
                    counts = {j: 0 for j in range(len(plans))}
                    counts[li] = 1
                    r = self._step(env, None, base_accs, edits, {li: [u]}, counts, plans)
                    if r is None:
                        c, lo = _score(env[self.out_node], y)
                    else:
                        rows, out = r
                        c_r, l_r = _example_scores(out, y.index_select(0, rows))
                        c = base_c - int(base_cv.index_select(0, rows).sum()) + int(c_r.sum())
                        lo = base_l - float(base_lv.index_select(0, rows).sum()) + float(l_r.sum())
                    correct[i] += c
                    loss[i] += lo
                    bar.update(1)
        return correct, loss

    def noise(self, plan):
        shape = (plan.repeats, len(plan.scales))
        correct = np.zeros(shape, dtype=np.int64)
        loss = np.zeros(shape)
        rest = self.split.rest
        with tqdm(total=self._nchunks() * shape[0] * shape[1], desc="noise", disable=not self.progress, leave=False) as bar:
            for start, x, y in _chunks(self.batches, self.chunk):
                y = y.to(self.device)
                cache = self._prefix(start, x)
                n = x.shape[0]
                for r in range(plan.repeats):
                    zs: dict = {}
                    for s, scale in enumerate(plan.scales):
                        specs = [NoiseSpec(plan.sigmas[i], float(scale), key=plan.key(r, i)) for i in range(len(self.names))]

                        def noise_fn(li, h, specs=specs, zs=zs, start=start, n=n):
                            # z depends on (seed, repeat, layer, example index) only; shared by all scales
                            key = (li, tuple(h.shape[1:]))
                            z = zs.get(key)
                            if z is None:
                                z = example_noise(h.shape[1:], start, start + n, specs[li].key, dtype=h.dtype)
                                z = zs[key] = z.to(h.device)
                            return apply_noise(h, z, specs[li].std)

                        env = dict(cache)
                        self._run_rest(env, rest, noise_fn=noise_fn)
                        c, lo = _score(env[self.out_node], y)
                        correct[r, s] += c
                        loss[r, s] += lo
                        bar.update(1)
        return correct, loss


# ==================================================================================================
# Batched hook path (fallback when the model cannot be traced)
# ==================================================================================================
class HookEvaluator(ReferenceEvaluator):
    """Full forward passes with R configurations stacked along the batch (per-replica masks)."""

    name = "hooks"

    def __init__(self, model, batches, plans, memory_budget: int | None = None, progress: bool = False):
        super().__init__(model, batches, plans, progress)
        self.budget = int(memory_budget or DEFAULT_MEMORY_BUDGET)
        self.replicas = self._replicas()

    def _replicas(self) -> int:
        """How many configurations fit in one pass: all module outputs of R copies of a batch <= budget."""
        x = self.batches[0][0][:2].to(self.device)
        sizes = []
        handles = [
            m.register_forward_hook(lambda _m, _i, o: sizes.append(_nbytes(o)))
            for m in self.model.modules()
            if not list(m.children())
        ]
        try:
            self.model(x)
        finally:
            for h in handles:
                h.remove()
        per_example = max(1, sum(sizes)) / x.shape[0] + _nbytes(x) / x.shape[0]
        batch = max(int(b[1].shape[0]) for b in self.batches)
        return int(max(1, min(64, self.budget // (per_example * batch * 2))))

    def _replica_edits(self, plans, ablated_per_replica):
        """Hook edits for R replicas: ``ablated_per_replica[r]`` = {layer index: units}."""
        edits = {}
        r = len(ablated_per_replica)
        for li, plan in enumerate(plans):
            lists = [a.get(li, []) for a in ablated_per_replica]
            if not any(lists):
                continue
            if plan.basis is None:
                mask = torch.zeros(r, plan.units, dtype=torch.bool)
                for i, units in enumerate(lists):
                    mask[i, units] = True
                edits[plan.name] = lambda h, mask=mask, v=plan.values: apply_clamp(h, mask, v)
            else:
                proj = torch.stack(
                    [projection_matrix(plan.basis, u) if u else torch.zeros(plan.units, plan.units) for u in lists]
                )
                edits[plan.name] = lambda h, p=proj, c=plan.center: apply_projection(h, p, c)
        return edits

    def _run_replicas(self, plans, configs):
        """(correct[R], loss[R]) of R configurations (each {layer index: units}) over all batches."""
        r = len(configs)
        correct = np.zeros(r, dtype=np.int64)
        loss = np.zeros(r)
        with edit_outputs(self.model, self._replica_edits(plans, configs)):
            for x, y in self.batches:
                x, y = x.to(self.device), y.to(self.device)
                xr = x.repeat(r, *([1] * (x.ndim - 1)))
                logits = check_logits(self.model(xr)).reshape(r, x.shape[0], -1)
                for i in range(r):
                    c, lo = score(logits[i], y)
                    correct[i] += c
                    loss[i] += lo
        return correct, loss

    def cumulative(self, curves):
        out = []
        total = sum(len(c.levels) for c in curves)
        with tqdm(total=total, desc="ablation (hooks)", disable=not self.progress, leave=False) as bar:
            for curve in curves:
                correct = np.zeros(len(curve.levels), dtype=np.int64)
                loss = np.zeros(len(curve.levels))
                for g in range(0, len(curve.levels), self.replicas):
                    ks = curve.levels[g : g + self.replicas]
                    configs = [curve.units_between(0, k) for k in ks]
                    correct[g : g + len(ks)], loss[g : g + len(ks)] = self._run_replicas(curve.plans, configs)
                    bar.update(len(ks))
                out.append((correct, loss))
        return out

    def singles(self, plans, units):
        correct = np.zeros(len(units), dtype=np.int64)
        loss = np.zeros(len(units))
        for g in tqdm(range(0, len(units), self.replicas), desc="importance (hooks)", disable=not self.progress, leave=False):
            group = units[g : g + self.replicas]
            configs = [{li: [u]} for li, u in group]
            correct[g : g + len(group)], loss[g : g + len(group)] = self._run_replicas(plans, configs)
        return correct, loss

    def noise(self, plan):
        shape = (plan.repeats, len(plan.scales))
        correct = np.zeros(shape, dtype=np.int64)
        loss = np.zeros(shape)
        for rep in range(plan.repeats):
            for g in range(0, len(plan.scales), self.replicas):
                scales = [float(s) for s in plan.scales[g : g + self.replicas]]
                r = len(scales)
                specs = {name: NoiseSpec(plan.sigmas[i], scales, key=plan.key(rep, i)) for i, name in enumerate(plan.names)}
                start = 0
                for x, y in self.batches:
                    x, y = x.to(self.device), y.to(self.device)
                    with noise(self.model, specs, start=start):
                        logits = check_logits(self.model(x.repeat(r, *([1] * (x.ndim - 1))))).reshape(r, x.shape[0], -1)
                    for i in range(r):
                        c, lo = score(logits[i], y)
                        correct[rep, g + i] += c
                        loss[rep, g + i] += lo
                    start += x.shape[0]
        return correct, loss


def make_evaluator(method: str, model, batches, plans, memory_budget=None, progress=False):
    """The evaluator for ``method``: "reference", "hooks", "fast" (fx; error if untraceable) or "auto"."""
    if method == "reference":
        return ReferenceEvaluator(model, batches, plans, progress)
    if method == "hooks":
        return HookEvaluator(model, batches, plans, memory_budget, progress)
    try:
        return FastEvaluator(model, batches, plans, memory_budget, progress)
    except TraceFailed as exc:
        if method == "fast":
            raise SingledirError(
                f"method='fast' needs a model torch.fx can trace ({exc}); use method='auto' or 'hooks'"
            ) from None
        return HookEvaluator(model, batches, plans, memory_budget, progress)
