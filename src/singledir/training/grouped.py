"""Grouped training: K MLPs of one architecture trained as one stacked model, each into its own run directory.

The *stacked* engine (``TrainConfig.engine == "stacked"``; the default for MLPs without batch norm). Every
network keeps everything that makes it itself -- its seed (initial weights from the same
``build_model(seed=...)`` as :mod:`.loop`, data order from the same ``derive_seed(seed, SHUFFLE, epoch)``
permutation, its own dropout generator), its labels (corruption), learning rate, weight decay, dropout
rate, stopping rule, checkpoints -- while the arithmetic of all of them runs as one: the layers are
batched matrix products (``torch.baddbmm`` / ``torch.bmm``) over a leading network dimension, the
evaluation of the training set (every epoch, for the stopping rule) and of the test set (only where a
number is used: see ``TrainConfig.history_every``) is batched across the group too. On the CPU the
group is cut into as many stacks as torch has threads, trained side by side by Python threads, each on one
OpenMP / MKL thread (:mod:`.threads`: faster than multi-threaded ops, and the same numbers).

Exactness. ``bmm`` computes each slice of a stack of K >= 2 the same way whatever K is (checked on the
CPU at 1 and 2 threads; K = 1 takes another kernel, ``addmm``, whose last bits differ at 2 threads). So
the stack never has fewer than 2 slices: a network trained alone (``train()`` of an MLP is a group of
one) or the last one left in a group is computed next to a *ghost*, a copy of itself whose results are
thrown away. Bias gradients are also ``bmm`` products (with a row of ones), not reductions whose
threading could depend on K. A network's weights are therefore bit-identical alone and inside a group
of any size (tested), on the CPU. A network that reaches its stopping point is saved and dropped from
the stack; the others go on.

Each network writes exactly the run directory :func:`singledir.training.train` writes (config.json,
history.csv, checkpoints, corruption.safetensors, model.safetensors, final.json, COMPLETE, and state.pt
every epoch for resume), in the same ``nn.Linear`` weight layout, so :func:`singledir.load_run`, the
run cache, leases and resume see no difference. Its resume state (``state.pt``) is the engine's own
(weights, optimizer moments, step count, dropout generator); members of one group may resume from
different epochs.

Offers :func:`train_group` and :func:`group_key` (which configs may share a group).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from singledir.devices import resolve_device
from singledir.errors import RunDirError, SingledirError
from singledir.io import atomic_save_safetensors, atomic_torch_save, atomic_write_json, atomic_write_text
from singledir.training import rundir as rd
from singledir.training.config import RUNTIME_SETTINGS, TrainConfig
from singledir.training.data import load_data
from singledir.training.stack import Parts, Stack, eval_group
from singledir.training.threads import map_parts, stack_workers
from singledir.training.evaluation import _default_eval_batch
from singledir.training.loop import _GLOBAL, _SHUFFLE, _build_model, _corrupt, _set_postfix, derive_seed
from singledir.training.target import _clear, resolve_target

__all__ = ["train_group", "group_key", "PER_NETWORK", "GroupMemberError"]

#: TrainConfig fields that may differ between the networks of one group; every other field (dataset,
#: subset, width, depth, batch size, optimizer, momentum, device, ...) must be equal.
PER_NETWORK = ("seed", "corrupt", "corrupt_method", "corrupt_seed", "lr", "weight_decay", "dropout", "epochs",
               "until_train_acc", "max_epochs", "checkpoints", "history_every", "eval_batch_size")

class GroupMemberError(RunDirError):
    """A member of a group cannot be set up (e.g. its resume state is unreadable); ``index`` says which."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def group_key(config: TrainConfig | dict) -> str | None:
    """A key equal for configs that can train in one group; None for a config the stacked engine does not train."""
    cfg = TrainConfig.coerce(config)
    if cfg.engine != "stacked":
        return None
    d = {k: v for k, v in cfg.to_dict().items() if k not in PER_NETWORK}
    return json.dumps(d, sort_keys=True, default=str)


# ---------------------------------------------------------------------------- one network
class _Member:
    """One network of a group: its config, run directory, data, labels and (unstacked) training state."""

    def __init__(self, index: int, cfg: TrainConfig, out: Path, stored: dict | None, data_cache: dict) -> None:
        self.index, self.cfg, self.out, self.stored = index, cfg, out, stored
        key = (cfg.dataset, cfg.data_dir, cfg.train_subset, cfg.test_subset, cfg.data_seed)
        if key not in data_cache:
            data_cache[key] = load_data(cfg)
        self.clean_ds = data_cache[key]
        self.ds, self.clean_labels, self.mask = _corrupt(cfg, self.clean_ds)
        model = _build_model(cfg, self.ds)
        self.model_config = model.config
        self.num_parameters = sum(p.numel() for p in model.parameters())
        self.names = _linear_names(model)
        sd = model.state_dict()
        # weights as (in, out) so that x @ w; biases as (1, out)
        self.w = [sd[f"{n}.weight"].t().contiguous() for n in self.names]
        self.b = [sd[f"{n}.bias"].reshape(1, -1).clone() for n in self.names]
        self.m = [torch.zeros_like(t) for t in self.w + self.b]  # Adam exp_avg or SGD momentum buffer
        self.v = [torch.zeros_like(t) for t in self.w + self.b]  # Adam exp_avg_sq
        self.step = 0
        self.epoch = 0
        self.elapsed = 0.0
        self.gen = torch.Generator().manual_seed(derive_seed(cfg.seed, _GLOBAL))  # dropout
        self.history: list[dict] = []
        self.reason: str | None = None
        self.check_lease: Callable[[], None] | None = None  # set by _train_group

    # -------------------------------------------------------------- weights in nn.Linear layout
    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = {}
        for n, w, b in zip(self.names, self.w, self.b):
            sd[f"{n}.weight"] = w.t().contiguous().cpu()
            sd[f"{n}.bias"] = b.reshape(-1).clone().cpu()
        return sd

    def module(self) -> nn.Module:
        model = rd.build_from_config({"model_config": self.model_config})
        model.load_state_dict(self.state_dict())
        return model.eval()

    # -------------------------------------------------------------- run directory
    def start(self, overwrite: bool) -> None:
        cfg, out = self.cfg, self.out
        if overwrite:
            _clear(out)
        (out / rd.CKPT_DIR).mkdir(parents=True, exist_ok=True)
        n_changed = int(self.mask.sum())
        self.run_config = {
            **cfg.to_dict(),
            **rd.environment(),
            "data": self.clean_ds.info(),
            "corruption": {"p": cfg.corrupt, "method": cfg.corrupt_method, "seed": cfg.effective_corrupt_seed,
                           "n_changed": n_changed, "fraction_changed": n_changed / max(1, len(self.mask))},
            "model_config": self.model_config,
            "num_parameters": self.num_parameters,
            "eval_batch_size_used": cfg.eval_batch_size or _default_eval_batch(cfg.model),
            "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(out / rd.CONFIG, self.run_config)
        self.save_corruption()
        if cfg.checkpoints is not None:
            self.save_checkpoint(0)
        self.fresh = True

    def save_corruption(self) -> None:
        atomic_save_safetensors(self.out / rd.CORRUPTION, {"labels": self.ds.y_train, "clean_labels": self.clean_labels,
                                                           "changed_mask": self.mask})

    def save_checkpoint(self, epoch: int) -> None:
        atomic_save_safetensors(rd.checkpoint_path(self.out, epoch), self.state_dict(), metadata={"epoch": epoch})

    def reopen(self) -> None:
        """Load an interrupted run's state (its config.json was checked by ``resolve_target``)."""
        out, stored = self.out, self.stored
        self.run_config = stored
        (out / rd.CKPT_DIR).mkdir(exist_ok=True)
        want = stored.get("data", {}).get("fingerprint")
        if want is not None and self.clean_ds.fingerprint != want:
            raise GroupMemberError(self.index, (
                f"the data found now (fingerprint {self.clean_ds.fingerprint[:12]}) differ from the data the run "
                f"{out} started with ({want[:12]}); resume with the original data_dir"))
        if (out / rd.CORRUPTION).is_file():
            corr = rd.load_corruption(out)
            if not torch.equal(corr["labels"], self.ds.y_train.cpu()):
                raise GroupMemberError(self.index, f"the corrupted labels recomputed for {out} differ from the saved "
                                                   f"ones; start again with overwrite=True")
        else:
            self.save_corruption()
        state_path = out / rd.STATE
        if state_path.is_file():
            try:
                state = torch.load(state_path, map_location="cpu", weights_only=True)
                if state.get("engine") != "stacked":
                    raise ValueError("it was not written by the stacked engine")
                sd = state["model"]
                self.w = [sd[f"{n}.weight"].t().contiguous() for n in self.names]
                self.b = [sd[f"{n}.bias"].reshape(1, -1).clone() for n in self.names]
                self.m, self.v = list(state["m"]), list(state["v"])
                self.step, self.epoch = int(state["step"]), int(state["epoch"])
                self.elapsed = float(state.get("elapsed", 0.0))
                self.gen.set_state(state["rng_dropout"])
            except Exception as err:  # noqa: BLE001
                raise GroupMemberError(self.index, f"cannot read {state_path} ({rd.describe_error(err)}); start again with "
                                                   f"overwrite=True") from None
        elif self.cfg.checkpoints is not None:
            self.save_checkpoint(0)
        hist = rd.read_history(out) if (out / rd.HISTORY).is_file() else None
        self.fresh = hist is None or 0 not in set(hist["epoch"])
        if not self.fresh:
            hist = hist[hist["epoch"] <= self.epoch]
            self.history = hist.to_dict("records")
            if len(self.history) != self.epoch + 1:
                raise GroupMemberError(self.index, f"{out / rd.HISTORY} does not match {rd.STATE} (epoch "
                                                   f"{self.epoch}); start again with overwrite=True")
        stored.setdefault("resumes", []).append({
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "from_epoch": self.epoch,
            **{k: getattr(self.cfg, k) for k in RUNTIME_SETTINGS}, "torch_threads": torch.get_num_threads()})
        atomic_write_json(out / rd.CONFIG, stored)

    def save_state(self) -> None:
        atomic_torch_save(self.out / rd.STATE, {
            "engine": "stacked", "epoch": self.epoch, "step": self.step, "model": self.state_dict(),
            "m": [t.cpu() for t in self.m], "v": [t.cpu() for t in self.v],
            "rng_dropout": self.gen.get_state(), "elapsed": self.elapsed})

    def stop_reason(self) -> str | None:
        cfg, last = self.cfg, self.history[-1]
        if cfg.until_train_acc is not None and self.epoch >= 1 and last["train_acc"] >= cfg.until_train_acc:
            return "until_train_acc"
        if self.epoch >= cfg.epoch_cap:
            return "max_epochs" if cfg.until_train_acc is not None else "epochs"
        return None

    def finish(self) -> rd.Run:
        out = self.out
        atomic_save_safetensors(out / rd.MODEL, self.state_dict(), metadata={"epoch": self.epoch})
        last = self.history[-1]
        final = {"epoch": self.epoch, "stopped_reason": self.reason,
                 **{k: last[k] for k in ("train_loss", "train_acc", "train_acc_clean", "test_loss", "test_acc")},
                 "train_seconds": self.elapsed,
                 "end_time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write_json(out / rd.FINAL, final)
        atomic_write_text(out / rd.COMPLETE, final["end_time"] + "\n")
        return rd.Run(out, rd.read_config(out), self.module(), clean_train_labels=self.clean_labels.cpu(),
                      corrupted_mask=self.mask.cpu(), train_labels=self.ds.y_train.cpu(),
                      history=rd.history_frame(self.history), epoch=self.epoch,
                      checkpoint_epochs=sorted(set(rd.saved_checkpoint_epochs(out)) | {self.epoch}),
                      final=final, data=self.ds)


def _linear_names(model: nn.Module) -> list[str]:
    """The dotted names of the MLP's Linear layers, input to output (hidden.0.0, hidden.1.0, ..., out)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if any(not isinstance(m, (nn.Linear, nn.ReLU, nn.Dropout, nn.Sequential, nn.ModuleList)) for m in model.modules()
           if m is not model):
        raise SingledirError("the stacked engine trains MLPs made of Linear, ReLU and Dropout only; use engine 'reference'")
    return names


# ---------------------------------------------------------------------------- train_group
def train_group(
    configs: Sequence[TrainConfig | dict],
    out_dirs: Sequence,
    *,
    resume: bool | Sequence[bool] = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Iterable[Callable[[int, dict, nn.Module], None]] = (),
) -> list[rd.Run]:
    """Train the networks ``configs`` (one group: equal :func:`group_key`) into ``out_dirs``; their Runs.

    ``resume``: one flag for all, or one per network (continue its interrupted run, as ``train(resume=True)``).
    ``overwrite``, ``progress``, ``callbacks``: as :func:`singledir.training.train` (``callbacks`` get
    ``cb(epoch, metrics, model)`` per network and epoch, with ``metrics["run_dir"]`` naming the network).
    A network that cannot be set up raises :class:`GroupMemberError` (its ``index``) before any training.
    Every network's run directory is written under its writer lease (:func:`.rundir.run_lock`), as with
    :func:`singledir.training.train`: a live writer of any of them makes this raise ``LockedError``.
    """
    if len(configs) != len(out_dirs):
        raise SingledirError(f"train_group needs one out_dir per config ({len(configs)} configs, {len(out_dirs)} dirs)")
    if len({str(Path(o).resolve()) for o in out_dirs}) != len(out_dirs):
        raise SingledirError("train_group got the same out_dir twice; give every network its own")
    with contextlib.ExitStack() as stack:
        locks = [stack.enter_context(rd.run_lock(o)) for o in out_dirs]
        return _train_group(configs, out_dirs, resume=resume, overwrite=overwrite, progress=progress,
                            callbacks=callbacks, lease_checks=[lock.check for lock in locks])


def _train_group(configs, out_dirs, *, resume=False, overwrite=False, progress=True, callbacks=(),
                 lease_checks=None) -> list[rd.Run]:
    """:func:`train_group` with the run directories' writer leases already held by the caller.

    ``lease_checks``: one callable per network, called after each of its epochs is saved (raises once the
    network's lease was lost); None when the caller checks its lease by a callback.
    """
    if not configs:
        return []
    flags = [bool(resume)] * len(configs) if isinstance(resume, bool) else [bool(r) for r in resume]
    if len(flags) != len(configs):
        raise SingledirError(f"resume needs one flag per config ({len(configs)}), got {len(flags)}")
    outs = [Path(o) for o in out_dirs]
    resolved = []
    for i, (c, o, r) in enumerate(zip(configs, outs, flags)):
        try:
            resolved.append(resolve_target(c, o, overwrite=overwrite, resume=r))
        except RunDirError as err:
            raise GroupMemberError(i, str(err)) from None
    keys = {group_key(cfg) for cfg, _ in resolved}
    if None in keys:
        raise SingledirError("train_group trains MLPs without batch norm (engine 'stacked') only; "
                             "train other models with singledir.training.train")
    if len(keys) > 1:
        raise SingledirError("train_group needs networks of one architecture, data and batch size; they differ in "
                             "a setting other than " + ", ".join(PER_NETWORK))
    cfg0 = resolved[0][0]
    device = resolve_device(cfg0.device)
    data_cache: dict = {}
    members = [_Member(i, cfg, o, stored, data_cache) for i, ((cfg, stored), o) in enumerate(zip(resolved, outs))]
    for mem, r in zip(members, flags):  # every check before anything on disk changes
        if r:
            mem.reopen()
    for mem, r in zip(members, flags):
        if not r:
            mem.start(overwrite)
    for mem, check in zip(members, lease_checks or [None] * len(members)):
        mem.check_lease = check
    return _Group(members, device, progress, list(callbacks)).run()


class _Group:
    def __init__(self, members: list[_Member], device, progress: bool, callbacks: list) -> None:
        self.members, self.device, self.progress, self.callbacks = members, device, progress, callbacks
        cfg = members[0].cfg
        ds = members[0].ds
        self.optimizer, self.momentum, self.batch_size = cfg.optimizer, cfg.momentum, cfg.batch_size
        self.eval_bs = cfg.eval_batch_size or _default_eval_batch(cfg.model)
        self.x_train = ds.x_train.flatten(1).to(device)
        self.x_test = ds.x_test.flatten(1).to(device)
        self.y_test = ds.y_test.to(device)
        self.workers, self.cpu = stack_workers(device), device.type == "cpu"  # see .threads

    def _row(self, epoch, tr, tr_clean, te, running, lr) -> dict:
        return {"epoch": epoch, "train_loss": tr[0], "train_acc": tr[1], "train_acc_clean": tr_clean[1],
                "test_loss": te[0], "test_acc": te[1], "running_loss": running, "lr": lr, "seconds": 0.0}

    def _evaluate(self, stack: Parts, epoch_of, tests_for: Callable[[_Member], bool], running: list[float]):
        """Rows for the real slots: the training set always, the test set where ``tests_for(member)``."""
        t0 = time.perf_counter()

        def evaluate(x, ys):  # per label set, per real slot of every part, in order
            per_part = map_parts(lambda s: [r[: s.real] for r in eval_group(s, x, ys(s), self.eval_bs)],
                                 stack.parts, self.cpu)
            return [[v for res in per_part for v in res[j]] for j in range(len(per_part[0]))]

        tr, tr_clean = evaluate(self.x_train, lambda s: [s.y, s.y_clean])
        rows = []
        for k, mem in enumerate(stack.rows):
            rows.append(self._row(epoch_of(mem), tr[k], tr_clean[k], (float("nan"), float("nan")), running[k],
                                  mem.cfg.lr))
        need = [k for k, mem in enumerate(stack.rows) if tests_for(mem, rows[k])]
        if need:
            (te,) = evaluate(self.x_test, lambda s: [self.y_test.unsqueeze(0).expand(len(s.rows), -1)])
            for k in need:
                rows[k]["test_loss"], rows[k]["test_acc"] = te[k]
        return rows, time.perf_counter() - t0

    def _train_epoch(self, stack: Parts) -> list[float]:
        """One epoch for every network, the parts side by side; mean training loss per network."""
        return [v for res in map_parts(self._train_part, stack.parts, self.cpu) for v in res]

    def _train_part(self, stack: Stack) -> list[float]:
        """One epoch for every slot, each network with its own permutation; mean training loss per real slot."""
        n, bs, dev = len(self.x_train), self.batch_size, self.device
        perms = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(
            derive_seed(mem.cfg.seed, _SHUFFLE, mem.epoch + 1))) for mem in stack.rows]).to(dev)
        total = torch.zeros(len(stack.rows), dtype=torch.float64, device=dev)
        for i in range(0, n, bs):
            idx = perms[:, i: i + bs]  # (K, B)
            xb = self.x_train[idx]  # (K, B, D)
            yb = torch.gather(stack.y, 1, idx)
            masks = stack.dropout_masks(idx.shape[1], dev)
            logits = stack.forward(xb, masks)
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[2]), yb.reshape(-1), reduction="none")
            per_net = ce.reshape(idx.shape).mean(1)  # (K,): each network's own mean loss, as alone
            per_net.sum().backward()
            stack.update(self.optimizer, self.momentum)
            total += per_net.detach().double() * idx.shape[1]
        return [float(t) / max(1, n) for t in total[: stack.real].cpu()]

    def run(self) -> list[rd.Run]:
        from tqdm.auto import tqdm

        members = self.members
        # epoch 0 rows (the untrained models) for fresh members
        fresh = [m for m in members if m.fresh]
        if fresh:
            stack = Parts(fresh, self.device, self.workers)
            rows, secs = self._evaluate(stack, lambda m: 0, lambda m, row: True, [float("nan")] * stack.real)
            for mem, row in zip(fresh, rows):
                row["seconds"] = secs / len(fresh)
                mem.history = [row]
                rd.atomic_write_history(mem.out / rd.HISTORY, mem.history)
        for mem in members:
            mem.reason = mem.stop_reason()
        active = [m for m in members if m.reason is None]
        total = sum(m.cfg.epoch_cap for m in members)
        cfg0 = members[0].cfg
        desc = f"train {len(members)} x {cfg0.model} {cfg0.dataset}"
        with tqdm(total=total, initial=sum(m.epoch for m in members), desc=desc, unit="ep", disable=not self.progress,
                  leave=False, dynamic_ncols=True) as bar:
            while active:
                stack = Parts(active, self.device, self.workers)
                while True:
                    t0 = time.perf_counter()
                    running = self._train_epoch(stack)
                    for mem in active:
                        mem.epoch += 1

                    def tests_for(mem, row):
                        mem.history.append(row)
                        stop = mem.stop_reason() is not None
                        mem.history.pop()
                        return stop or mem.cfg.test_epoch(mem.epoch)

                    rows, _ = self._evaluate(stack, lambda m: m.epoch, tests_for, running)
                    per = (time.perf_counter() - t0) / len(active)
                    done = []
                    for k, (mem, row) in enumerate(zip(active, rows)):
                        row["seconds"] = per
                        mem.history.append(row)
                        mem.elapsed += per
                        ckpts = mem.cfg.checkpoint_epochs(mem.cfg.epoch_cap)
                        if mem.epoch in ckpts:
                            atomic_save_safetensors(rd.checkpoint_path(mem.out, mem.epoch), stack.member_state_dict(k),
                                                    metadata={"epoch": mem.epoch})
                        rd.atomic_write_history(mem.out / rd.HISTORY, mem.history)
                        mem.reason = mem.stop_reason()
                        if mem.reason is not None:
                            done.append(mem)
                    stack.unstack()
                    for mem in active:
                        mem.save_state()
                        if mem.check_lease is not None:
                            mem.check_lease()
                    bar.update(len(active))
                    _set_postfix(bar, active[0].history)
                    for cb in self.callbacks:
                        for mem in active:
                            cb(mem.epoch, {**mem.history[-1], "run_dir": str(mem.out)}, mem.module())
                    if done:
                        break
                for mem in done:
                    mem.run = mem.finish()
                active = [m for m in active if m.reason is None]
        out = []
        for mem in members:
            if not hasattr(mem, "run"):  # stopped before training (resumed at its stopping point)
                mem.run = mem.finish()
            out.append(mem.run)
        return out
