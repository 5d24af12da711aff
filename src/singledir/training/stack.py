"""The stacked model of a group: K MLPs as batched matrix products, their optimizer steps, their evaluation.

Used by :mod:`.grouped` (which owns the networks, their run directories and the training loop). Every
operation computes each network's slice the same way whatever the number of networks in the stack, so a
network's numbers do not depend on its group (see :mod:`.grouped`'s docstring for why).

Offers :class:`Stack` (the stacked weights and optimizer state of the active networks: forward pass,
dropout masks, Adam / SGD steps, writing the state back), :class:`Parts` (the active networks cut into
stacks trained side by side, see :mod:`.threads`) and :func:`eval_group` (loss and accuracy of every
network of a stack on one input set).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["Stack", "Parts", "eval_group"]

# torch.optim.Adam's defaults (the reference engine uses them too)
_BETAS, _EPS = (0.9, 0.999), 1e-8


# ---------------------------------------------------------------------------- the stacked layer
class _StackedLinear(torch.autograd.Function):
    """``x @ w + b`` over a leading network dimension, with every gradient a ``bmm`` (K-independent bits).

    Hand-written backward: autograd's own backward of ``baddbmm`` sums the bias gradient with a
    reduction over the batch, whose threading (and so its last bits) may depend on K.
    """

    @staticmethod
    def forward(ctx, x, w, b):  # x (K, B, I), w (K, I, O), b (K, 1, O)
        ctx.save_for_backward(x, w)
        return torch.baddbmm(b, x, w)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = torch.bmm(g, w.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(x.transpose(1, 2), g)
        gb = torch.bmm(g.new_ones(g.shape[0], 1, g.shape[1]), g)
        return gx, gw, gb



# ---------------------------------------------------------------------------- the stack
class Stack:
    """The training state of the active networks as stacked tensors (slot i is ``rows[i]``; >= 2 slots).

    A group with one active network holds it twice: the second slot is a ghost whose results are never
    written back (see the module docstring).
    """

    def __init__(self, members: list, device: torch.device) -> None:
        self.members = members
        self.rows = members if len(members) >= 2 else members * 2
        self.real = len(members)  # slots [0, real) are written back
        dev = device
        rows = self.rows
        st = lambda ts: torch.stack(ts).to(dev)  # noqa: E731
        self.w = [st([m.w[i] for m in rows]).requires_grad_() for i in range(len(rows[0].w))]
        self.b = [st([m.b[i] for m in rows]).requires_grad_() for i in range(len(rows[0].b))]
        n = len(self.w) + len(self.b)
        self.m = [st([r.m[i] for r in rows]) for i in range(n)]
        self.v = [st([r.v[i] for r in rows]) for i in range(n)]
        col = lambda vals: torch.tensor(vals, dtype=torch.float32, device=dev).reshape(-1, 1, 1)  # noqa: E731
        self.lr = [r.cfg.lr for r in rows]
        self.wd = col([r.cfg.weight_decay for r in rows])
        self.any_wd = any(r.cfg.weight_decay for r in rows)
        self.dropout = [r.cfg.dropout for r in rows]
        self.y = torch.stack([r.ds.y_train for r in rows]).to(dev)  # (K, N) each network's labels
        self.y_clean = torch.stack([r.clean_labels for r in rows]).to(dev)

    def unstack(self) -> None:
        """Write the stacked state back into the (real) members."""
        for k, mem in enumerate(self.rows[: self.real]):
            mem.w = [t[k].detach().cpu().clone() for t in self.w]
            mem.b = [t[k].detach().cpu().clone() for t in self.b]
            mem.m = [t[k].cpu().clone() for t in self.m]
            mem.v = [t[k].cpu().clone() for t in self.v]

    def params(self) -> list[torch.Tensor]:
        return self.w + self.b

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        mem = self.rows[k]
        sd = {}
        for n, w, b in zip(mem.names, self.w, self.b):
            sd[f"{n}.weight"] = w[k].detach().t().contiguous().cpu()
            sd[f"{n}.bias"] = b[k].detach().reshape(-1).clone().cpu()
        return sd

    # -------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, masks: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Logits (K, B, C) of every slot for inputs ``x`` (K, B, D); ``masks``: dropout per hidden layer."""
        h = x
        last = len(self.w) - 1
        for i, (w, b) in enumerate(zip(self.w, self.b)):
            h = _StackedLinear.apply(h, w, b)
            if i < last:
                h = torch.relu(h)
                if masks is not None and masks[i] is not None:
                    h = h * masks[i]
        return h

    def dropout_masks(self, batch: int, device) -> list[torch.Tensor | None] | None:
        """Per hidden layer a (K, B, W) mask (inverted dropout, as F.dropout); each network's own generator."""
        if not any(self.dropout):
            return None
        out = []
        for w in self.w[:-1]:
            width = w.shape[2]
            slabs, made = [], {}
            for mem, p in zip(self.rows, self.dropout):
                if id(mem) in made:  # the ghost reuses its original's mask (and leaves its generator alone)
                    slabs.append(made[id(mem)])
                    continue
                if p > 0:
                    mask = torch.empty(batch, width).bernoulli_(1.0 - p, generator=mem.gen).div_(1.0 - p)
                else:
                    mask = torch.ones(batch, width)
                made[id(mem)] = mask
                slabs.append(mask)
            out.append(torch.stack(slabs).to(device))
        return out

    # -------------------------------------------------------------- optimizer
    @torch.no_grad()
    def update(self, optimizer: str, momentum: float) -> None:
        """One optimizer step for every slot, with each network's own learning rate and weight decay.

        ``torch.optim`` takes one learning rate per parameter group, and a group here is one stacked tensor
        holding K networks: Adam calls torch's fused Adam kernel on each slot's slices (:meth:`_adam_step`);
        SGD is hand-written over the stacked tensors with ``torch.optim.SGD``'s arithmetic (no nesterov), in
        the same order of operations (the last bit may still differ where torch's kernels fuse a
        multiply-add). Default betas and eps, no amsgrad. SGD's momentum buffer starts at zero, so its first step ``0 * momentum + d`` is
        torch's ``buf = d.clone()`` exactly, and networks at different steps can share a stack.
        """
        if optimizer == "adam":
            self._adam_step()
        else:
            lr = torch.tensor(self.lr, dtype=torch.float32, device=self.wd.device).reshape(-1, 1, 1)
            for p, buf in zip(self.params(), self.m):
                d = p.grad
                if self.any_wd:
                    d = d.add(p * self.wd)
                if momentum:
                    buf.mul_(momentum).add_(d)
                    d = buf
                p.sub_(lr * d)
        for r in self.rows[: self.real]:  # a ghost is its original object: counted once
            r.step += 1
        for p in self.params():
            p.grad = None

    def _adam_step(self) -> None:
        """Adam with torch's own fused kernel (``torch.optim.Adam(fused=True)``'s), one call per (lr, weight
        decay) among the slots, each slot's slice of every stacked tensor its own parameter with its own step.

        The kernel works tensor by tensor and element by element, so a network's numbers do not depend on
        which slots share its stack. (A hand-written update over the stacked tensors cost ~5x more: eight
        passes over the weights per step dominated training at batch size 32.) On the CPU, consecutive slots
        with one (lr, weight decay, step) are passed as one *slab* (``t[a:b]``) wherever a slot's slice is a
        whole number of :data:`_SLAB` elements (see there): the same arithmetic per element, and one
        parallel region per tensor instead of one per slot and tensor (each a thread barrier, which costs
        milliseconds when the cores are shared with other processes: 16 networks of 6 tensors were 80 of
        them per step).
        """
        groups: dict[tuple[float, float], tuple[list, list, list, list, list]] = {}
        slab_ok = self.wd.device.type == "cpu"
        params = self.params()
        for a, b in _runs([(r.cfg.lr, r.cfg.weight_decay, r.step) for r in self.rows]):
            r = self.rows[a]
            ps, gs, ms, vs, steps = groups.setdefault((r.cfg.lr, r.cfg.weight_decay), ([], [], [], [], []))
            step = torch.tensor(float(r.step + 1), device=self.wd.device)
            for p, m, v in zip(params, self.m, self.v):
                if slab_ok and p[0].numel() % _SLAB == 0:
                    parts = [slice(a, b)]
                else:
                    parts = range(a, b)
                for k in parts:
                    ps.append(p.data[k])
                    gs.append(p.grad[k])
                    ms.append(m[k])
                    vs.append(v[k])
                    steps.append(step)
        b1, b2 = _BETAS
        for (lr, wd), (ps, gs, ms, vs, steps) in groups.items():
            torch._fused_adam_(ps, gs, ms, vs, [], steps, lr=lr, beta1=b1, beta2=b2, weight_decay=wd, eps=_EPS,
                               amsgrad=False, maximize=False)


#: torch's CPU fused Adam (aten/src/ATen/native/cpu/FusedAdamKernel.cpp) cuts a tensor into 64-byte units
#: (16 float32) shared out between threads, and runs each thread's part as a vector loop with a scalar tail
#: (different rounding) for the last ``numel % vector width`` elements of the tensor -- a width of at most
#: 16 floats (AVX-512) that divides 16. A slab of slots whose slices are a multiple of 16 elements long has
#: no tail inside any slice: every element gets the arithmetic it gets in its own slice.
_SLAB = 16


def _runs(keys: list) -> list[tuple[int, int]]:
    """``(start, end)`` of the maximal runs of equal consecutive ``keys``."""
    out, start = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            out.append((start, i))
            start = i
    return out


class Parts:
    """The active networks cut into up to ``workers`` stacks of consecutive networks (``parts``), which
    :func:`.threads.map_parts` trains side by side; each part has >= 2 networks but the last, which may
    have one (and its ghost). ``rows`` / ``real``: the networks in order, as for one :class:`Stack`."""

    def __init__(self, members: list, device: torch.device, workers: int = 1) -> None:
        n = len(members)
        k = max(1, min(workers, -(-n // 2)))
        sizes = [n // k + (i < n % k) for i in range(k)]
        self.parts, start = [], 0
        for size in sizes:
            self.parts.append(Stack(members[start: start + size], device))
            start += size
        self.rows, self.real = list(members), n
        self._where = [(part, i) for part in self.parts for i in range(part.real)]

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        part, i = self._where[k]
        return part.member_state_dict(i)

    def unstack(self) -> None:
        for part in self.parts:
            part.unstack()


# ---------------------------------------------------------------------------- evaluation
@torch.inference_mode()
def eval_group(stack: Stack, x: torch.Tensor, ys: list[torch.Tensor], batch: int) -> list[list[tuple[float, float]]]:
    """Per label set in ``ys`` (each (K, N)), per slot: (mean cross-entropy, accuracy) on inputs ``x`` (N, D).

    Sums per slot are taken one slot at a time (1-D sums), so a network's numbers do not depend on K.
    """
    n, k = len(x), len(stack.rows)
    if n == 0:
        return [[(float("nan"), float("nan"))] * k for _ in ys]
    loss = [torch.zeros(k, dtype=torch.float64) for _ in ys]
    hits = [torch.zeros(k, dtype=torch.int64) for _ in ys]
    for i in range(0, n, batch):
        xb = x[i: i + batch].flatten(1)
        logits = stack.forward(xb.unsqueeze(0).expand(k, *xb.shape))
        pred = logits.argmax(2)
        flat = logits.reshape(-1, logits.shape[2])
        for j, y in enumerate(ys):
            yb = y[:, i: i + batch]
            ce = F.cross_entropy(flat, yb.reshape(-1), reduction="none").reshape(k, -1).double()
            for s in range(k):
                loss[j][s] += ce[s].sum().cpu()
            hits[j] += (pred == yb).sum(1).cpu()
    return [[(float(lo[s]) / n, int(h[s]) / n) for s in range(k)] for lo, h in zip(loss, hits)]
