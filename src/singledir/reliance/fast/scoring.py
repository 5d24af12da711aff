"""Scoring the fx path's logits: per-example and batched (number correct, summed cross-entropy), equal to
:func:`~singledir.reliance.plan.score`.

Offers :func:`example_scores` (per example), :func:`score_logits` (totals) and :class:`ScoreQueue`
(a column-major walk's levels scored :data:`SCORE_RING` bytes at a time).

Why batched: each level's logits are copied into a ring and scored several levels at a time -- per
level, a dozen small reductions cost as much dispatch as arithmetic (1.26x on the MLP curve in an A/B).
Column-major logits are scored by reductions along contiguous memory (``amax``/``logsumexp``, ~10x faster
there than ``argmax``/``cross_entropy`` over a dimension of 10), with argmax's first-maximum rule kept
exactly for tied maxima.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from singledir.errors import SingledirError
from singledir.reliance.fast.layout import is_colmajor
from singledir.reliance.fast.pool import host_reads_free
from singledir.reliance.plan import score

__all__ = ["SCORE_RING", "ScoreQueue", "check_total", "example_scores", "score_logits"]

#: Bytes of logits a column-major walk queues before scoring them (:class:`ScoreQueue`; at most 32 levels).
#: 4 MB: the MLP curve's 2500-example chunks score 32 levels at once (0.582 -> 0.537 s of CPU for the
#: whole 10k-image curve against 1 MB = 7 levels, interleaved A/B, load ~2.9).
SCORE_RING = 4 << 20


class ScoreQueue:
    """The scores of a column-major walk's levels, computed ``size`` levels at a time.

    Scoring one level is a dozen small reductions over (classes x examples); each costs a few
    microseconds of dispatch, as much as the arithmetic on a cache-sized chunk. So each level's logits
    are copied into a ring of ``size`` slots and a full ring is scored in one go.

    With ``m`` the maximum over classes and ``D = logits - m``: an example's loss is
    ``log(sum(exp(D))) - D_y`` (log-softmax's own formula). It is correct when its label's logit exceeds
    the largest logit of the OTHER classes (``mo``, an ``amax`` with the label entries masked to -inf):
    exact unless the two are equal, the one case where argmax's first-maximum rule decides (a tie among
    other classes cannot make a wrong prediction right). Such levels (and levels with non-finite
    logits) are rescored by :func:`example_scores` (the one-line error). Four passes over the ring
    (``amax``, the shift, ``exp``, the class sum); the label gathers and masks touch one entry per
    example.
    """

    def __init__(self, y: torch.Tensor, classes: int, dtype, size: int):
        n = y.shape[0]
        self.y, self.n = y, n
        self.ring = torch.empty(size, classes, n, dtype=dtype, device=y.device)
        #: flat index of each example's label logit in a (classes, n) slot
        self.flat = y * n + torch.arange(n, device=y.device)
        self.pending: list = []
        self.done: list = []  # (key, correct, loss)

    def push(self, logits: torch.Tensor, key) -> None:
        """Queue the (n, classes) logits of one level (copied: the walk overwrites them)."""
        self.ring[len(self.pending)].copy_(logits.t())
        self.pending.append(key)
        if len(self.pending) == self.ring.shape[0]:
            self._score_pending()

    def slot(self) -> torch.Tensor:
        """The (classes, n) slot the next :meth:`push` would copy into: a walk may compute the logits there
        and :meth:`commit` them instead (no copy)."""
        return self.ring[len(self.pending)]

    def commit(self, key) -> None:
        """Queue the logits written into :meth:`slot`."""
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
            rv = r.view(k, -1)
            ly = rv.index_select(1, self.flat)  # (k, n) the label's logit
            rv.index_fill_(1, self.flat, -math.inf)
            mo = r.amax(1)  # the largest logit of the other classes
            rv.index_copy_(1, self.flat, ly)
            m = torch.maximum(mo, ly)
            d = r - m.unsqueeze(1)
            log_s = d.exp_().sum(1).log_()
            loss = (log_s.sum(1, dtype=torch.float64) + (m - ly).sum(1, dtype=torch.float64)).tolist()
            # correct (ly > mo) and tied (ly == mo) examples counted from the signs of ly - mo (-1 / 0 / +1;
            # exact: a difference of finite floats is 0 only when they are equal): with P, N of them
            # positive / negative, sum = P - N and sum of |sign| = P + N. Float sums of signs are exact
            # integers below 2**24 examples; comparisons to a bool tensor and its reductions cost ~5x more.
            sign = torch.sign(ly - mo)
            wide = torch.float64 if self.n >= 1 << 24 else None
            diff, both = sign.sum(1, dtype=wide).tolist(), sign.abs_().sum(1, dtype=wide).tolist()
            n = self.n
            for j, key in enumerate(self.pending):
                lo = loss[j]
                if both[j] != n or not math.isfinite(lo):  # a tie (or a NaN: sign 0 or NaN): argmax decides
                    cv, lv = example_scores(self.ring[j].t(), self.y, check=True)
                    c, lo = int(cv.sum()), float(lv.sum())
                else:
                    c = int(diff[j] + both[j]) // 2
                self.done.append((key, c, lo))
            self.pending.clear()


def example_scores(logits, y, check: bool | None = None):
    """Per-example (correct: bool, cross-entropy: float64) -- summed, the same numbers as ``score``.

    Column-major logits are scored with reductions that run along contiguous memory (``amax``,
    ``logsumexp``: ~10x faster there than ``argmax`` / ``cross_entropy``). ``correct`` keeps argmax's
    rule exactly: the prediction is the *first* class reaching the maximum, so rows where several classes
    tie at the maximum are decided by ``argmax`` itself. The loss ``logsumexp(l) - l_y`` is the
    cross-entropy up to float rounding (~1e-7 relative).

    ``check`` (default: where host reads are free, :func:`~.pool.host_reads_free`): raise the one-line
    error on a non-finite loss here; else the caller checks its totals (:func:`check_total`) -- on a GPU
    without a host read per call.
    """
    free = host_reads_free(logits.device)
    if is_colmajor(logits) and logits.is_floating_point():
        m = logits.amax(1)
        ly = logits.gather(1, y.unsqueeze(1)).squeeze(1)
        loss = (torch.logsumexp(logits, 1) - ly).to(torch.float64)
        correct = ly == m
        ties = (logits == m.unsqueeze(1)).sum(1) > 1
        if not free:  # no data-dependent branch: argmax decides every row that has tied maxima
            correct = torch.where(ties, logits.argmax(1) == y, correct)
        elif bool(ties.any()):
            rows = ties.nonzero().squeeze(1)
            correct[rows] = logits.index_select(0, rows).argmax(1) == y.index_select(0, rows)
    else:
        loss = F.cross_entropy(logits, y, reduction="none").to(torch.float64)
        correct = None
    if (free if check is None else check) and not math.isfinite(float(loss.sum())):
        score(logits.contiguous(), y)  # raises the one-line error
    return (logits.argmax(1) == y if correct is None else correct), loss


def check_total(loss: float) -> float:
    """``loss`` (a summed loss read by the host) if finite, else the one-line error of ``score``."""
    if not math.isfinite(loss):
        raise SingledirError("non-finite loss (NaN or inf); check the inputs and the model's weights")
    return loss


def score_logits(logits, y) -> tuple[int, float]:
    """``score`` (number correct, summed cross-entropy): the totals of :func:`example_scores`;
    column-major logits through a one-level :class:`ScoreQueue` (no per-example vectors)."""
    if not (is_colmajor(logits) and logits.is_floating_point()):
        c, lo = example_scores(logits, y, check=True)
        return int(c.sum()), float(lo.sum())
    queue = ScoreQueue(y, logits.shape[1], logits.dtype, 1)
    queue.push(logits, None)
    (_key, c, lo), = queue.flush()
    return c, lo
