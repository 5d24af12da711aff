"""The training loop: deterministic, resumable, writes a run directory (see :mod:`.rundir`).

:func:`train` trains one network. MLPs without batch norm (``TrainConfig.engine == "stacked"``) go
through :mod:`.grouped` as a group of one, so that a network's weights are the same alone or in a group;
every other model (and ``engine="reference"``) through the torch.optim loop here (``_Trainer``). Both
check their target directory and config with :func:`.target.resolve_target`.

Determinism: the initial weights come from ``build_model(seed=seed)``; each epoch's shuffling uses a
``torch.Generator`` seeded from ``(seed, epoch)``; dropout uses torch's global RNG, which is seeded from
``seed`` at the start, saved in ``state.pt`` every epoch and restored on resume -- and the caller's own
global RNG state is restored when training returns (``torch.random.fork_rng``). So the same config gives
bit-identical weights on the CPU, and an interrupted run resumed with ``resume=True`` ends with exactly
the weights of an uninterrupted one. (``torch.use_deterministic_algorithms`` is not switched on: it is
global state, and the CPU ops used here -- linear, conv, batch norm, ReLU, dropout, cross-entropy,
indexing -- are deterministic on the CPU anyway. CUDA runs are seeded the same way but cuDNN may still
differ in the last bits.)

Speed: the data are tensors on the device; batches are slices of a per-epoch index permutation (no
DataLoader); evaluation (:mod:`.evaluation`) runs under ``torch.inference_mode`` with large batches; the
training set is evaluated every epoch (the stopping rule reads it), the test set only where
``TrainConfig.test_epoch`` says (every ``history_every`` epochs, checkpoints, first and last epoch; NaN in
history.csv elsewhere).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from singledir.devices import resolve_device
from singledir.errors import RunDirError
from singledir.io import atomic_save_safetensors, atomic_torch_save, atomic_write_json, atomic_write_text
from singledir.training import rundir as rd
from singledir.training.config import RUNTIME_SETTINGS, TrainConfig
from singledir.training.data import load_data
from singledir.training.evaluation import _default_eval_batch, _eval_stats, evaluate
from singledir.training.target import _clear, resolve_target

__all__ = ["train", "evaluate", "resolve_target", "derive_seed"]

# tags for derived seeds
_SHUFFLE, _GLOBAL = 1, 2
_NAN2 = (float("nan"), float("nan"))


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (stable across platforms and versions)."""
    a, b = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(a) << 31) ^ int(b)


# ---------------------------------------------------------------------------- data
def _corrupt(cfg: TrainConfig, ds):
    """(dataset with the run's training labels, clean labels, changed mask)."""
    clean = ds.y_train.clone()
    if cfg.corrupt == 0:
        return ds, clean, torch.zeros(len(clean), dtype=torch.bool)
    from singledir.data import apply_corruption

    out, clean_labels, mask = apply_corruption(ds, cfg.corrupt, cfg.corrupt_method, cfg.effective_corrupt_seed)
    return out, clean_labels.clone(), mask.to(torch.bool)


def _build_model(cfg: TrainConfig, ds) -> nn.Module:
    from singledir.models import build_model

    return build_model(
        cfg.model,
        ds.input_shape,
        ds.num_classes,
        width=cfg.width,
        width_mult=cfg.width_mult,
        dropout=cfg.dropout,
        batchnorm=cfg.batchnorm,
        seed=cfg.seed,
        depth=cfg.depth,
    )


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


# ---------------------------------------------------------------------------- progress
def _set_postfix(bar, history: list[dict]) -> None:
    """The tqdm postfix: last training loss/accuracy and the last test accuracy measured."""
    last = history[-1]
    test = next((r["test_acc"] for r in reversed(history) if r["test_acc"] == r["test_acc"]), float("nan"))
    bar.set_postfix(loss=f"{last['train_loss']:.4f}", acc=f"{last['train_acc']:.4f}", test=f"{test:.4f}",
                    refresh=False)


# ---------------------------------------------------------------------------- train
def train(config, out_dir, *, overwrite: bool = False, resume: bool = False, progress: bool = True,
          callbacks=()) -> rd.Run:
    with rd.run_lock(out_dir) as lock:  # one writer per run directory (see _ONE_WRITER)
        return _train(config, out_dir, overwrite=overwrite, resume=resume, progress=progress,
                      callbacks=[*callbacks, lock.check])


_ONE_WRITER = """
    One writer per run directory: all of this happens under the directory's writer lease
    (:func:`.rundir.run_lock`); a second writer gets a one-line LockedError naming the holder (host,
    pid), and the lease is checked after every epoch (a writer whose lease was taken over stops,
    leaving a resumable run).
"""


def _train(
    config: TrainConfig | dict | None,
    out_dir,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    callbacks: Iterable[Callable[[int, dict, nn.Module], None]] = (),
) -> rd.Run:
    """Train a model as ``config`` says and write the run directory ``out_dir``; return the :class:`Run`.

    ``config``: a :class:`TrainConfig` or a dict of its fields (validated; bad values raise
    :class:`SingledirError` with one line). ``overwrite``: replace an existing run directory.
    ``resume``: continue the interrupted run in ``out_dir`` from its last completed epoch using its
    ``config.json`` (``config`` may then be None; if given it must match, except for
    :data:`RUNTIME_SETTINGS` -- data_dir, device, eval_batch_size -- whose given values are used and
    recorded under ``resumes`` in config.json). ``progress``: a tqdm bar on
    stderr. ``callbacks``: each is called as ``cb(epoch, metrics, model)`` after every completed epoch,
    once its state is saved (raising KeyboardInterrupt there leaves a resumable run). The config's
    ``engine`` picks the arithmetic: ``"stacked"`` (the default for MLPs without batch norm) trains the
    network as a group of one with :func:`singledir.training.grouped.train_group`, bit-identical to the
    same network trained inside a group.

    Refuses (RunDirError) to train into a complete run without ``overwrite``, into an interrupted one
    without ``resume`` or ``overwrite``, and into a non-empty directory that is not a run.
    """
    out = Path(out_dir)
    callbacks = list(callbacks)
    cfg, stored = resolve_target(config, out, overwrite=overwrite, resume=resume)
    if cfg.engine == "stacked":  # MLPs: the stacked engine, a group of one (see singledir.training.grouped)
        from singledir.training.grouped import _train_group  # the caller (train) holds the run lock

        return _train_group([cfg], [out], resume=resume, overwrite=overwrite, progress=progress,
                           callbacks=callbacks)[0]
    trainer = _Trainer(cfg, out, progress, callbacks)
    return trainer.resume(stored) if stored is not None else trainer.fresh(overwrite)


train.__doc__ = _train.__doc__ + _ONE_WRITER


class _Trainer:
    def __init__(self, cfg: TrainConfig, out: Path, progress: bool, callbacks: list) -> None:
        self.cfg = cfg
        self.out = out
        self.progress = progress
        self.callbacks = callbacks
        self.device = resolve_device(cfg.device)
        self.eval_bs = cfg.eval_batch_size or _default_eval_batch(cfg.model)

    # ------------------------------------------------------------------ setup
    def _prepare(self):
        cfg = self.cfg
        clean_ds = load_data(cfg)
        ds, clean_labels, mask = _corrupt(cfg, clean_ds)
        self.clean_ds = clean_ds
        self.ds = ds
        self.clean_labels = clean_labels
        self.mask = mask
        self.model = _build_model(cfg, ds).to(self.device)
        self.opt = _optimizer(cfg, self.model)
        dev = self.device
        self.x_train = ds.x_train.to(dev)
        self.y_train = ds.y_train.to(dev)
        self.y_clean = clean_labels.to(dev)
        self.x_test = ds.x_test.to(dev)
        self.y_test = ds.y_test.to(dev)

    def fresh(self, overwrite: bool) -> rd.Run:
        cfg = self.cfg
        self._prepare()  # fails (bad data, bad model settings) before anything on disk is touched
        if overwrite:
            _clear(self.out)
        out = self.out
        (out / rd.CKPT_DIR).mkdir(parents=True, exist_ok=True)
        n_changed = int(self.mask.sum())
        self.run_config = {
            **cfg.to_dict(),
            **rd.environment(),
            "data": self.clean_ds.info(),
            "corruption": {
                "p": cfg.corrupt,
                "method": cfg.corrupt_method,
                "seed": cfg.effective_corrupt_seed,
                "n_changed": n_changed,
                "fraction_changed": n_changed / max(1, len(self.mask)),
            },
            "model_config": self.model.config,
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "eval_batch_size_used": self.eval_bs,
            "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(out / rd.CONFIG, self.run_config)
        self._save_corruption()
        if cfg.checkpoints is not None:
            self._save_checkpoint(0)
        t0 = time.perf_counter()
        tr, tr_clean, te = self._evaluate()
        self.history = [self._row(0, tr, tr_clean, te, float("nan"), time.perf_counter() - t0)]
        rd.atomic_write_history(out / rd.HISTORY, self.history)
        self.epoch = 0
        self.elapsed = 0.0
        self.rng_state = None  # seeded in _loop
        return self._loop()

    def resume(self, stored: dict) -> rd.Run:
        out = self.out
        self._prepare()
        self.run_config = stored
        (out / rd.CKPT_DIR).mkdir(exist_ok=True)
        want = stored.get("data", {}).get("fingerprint")
        if want is not None and self.clean_ds.fingerprint != want:
            raise RunDirError(
                f"the data found now (fingerprint {self.clean_ds.fingerprint[:12]}) differ from the data this run "
                f"started with ({want[:12]}); resume with the original data_dir"
            )
        if (out / rd.CORRUPTION).is_file():
            corr = rd.load_corruption(out)
            if not torch.equal(corr["labels"], self.ds.y_train.cpu()):
                raise RunDirError(
                    f"the corrupted labels recomputed for {out} differ from the saved ones; start again with overwrite=True"
                )
        else:  # interrupted while the run directory was being set up
            self._save_corruption()
        state_path = out / rd.STATE
        if state_path.is_file():
            try:
                state = torch.load(state_path, map_location=self.device, weights_only=True)
                self.model.load_state_dict(state["model"])
                self.opt.load_state_dict(state["optimizer"])
            except Exception as err:  # noqa: BLE001
                raise RunDirError(f"cannot read {state_path} ({rd.describe_error(err)}); start again with overwrite=True") from None
            self.epoch = int(state["epoch"])
            self.elapsed = float(state.get("elapsed", 0.0))
            self.rng_state = state
        else:  # interrupted before the first epoch ended: start from the (seeded) initial weights
            self.epoch = 0
            self.elapsed = 0.0
            self.rng_state = None
            if self.cfg.checkpoints is not None:
                self._save_checkpoint(0)
        hist = rd.read_history(out) if (out / rd.HISTORY).is_file() else None
        if hist is None or 0 not in set(hist["epoch"]):
            t0 = time.perf_counter()
            tr, tr_clean, te = self._evaluate()
            self.history = [self._row(0, tr, tr_clean, te, float("nan"), time.perf_counter() - t0)]
        else:
            hist = hist[hist["epoch"] <= self.epoch]
            self.history = hist.to_dict("records")
        if len(self.history) != self.epoch + 1:
            raise RunDirError(f"{out / rd.HISTORY} does not match {rd.STATE} (epoch {self.epoch}); start again with overwrite=True")
        stored.setdefault("resumes", []).append(
            {
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "from_epoch": self.epoch,
                **{k: getattr(self.cfg, k) for k in RUNTIME_SETTINGS},
                "torch_threads": torch.get_num_threads(),
            }
        )
        atomic_write_json(out / rd.CONFIG, stored)
        return self._loop()

    # ------------------------------------------------------------------ pieces
    def _evaluate(self):
        return (*self._evaluate_train(), self._evaluate_test())

    def _evaluate_train(self):
        return _eval_stats(self.model, self.x_train, [self.y_train, self.y_clean], self.eval_bs)

    def _evaluate_test(self):
        return _eval_stats(self.model, self.x_test, [self.y_test], self.eval_bs)[0]

    def _row(self, epoch, tr, tr_clean, te, running, seconds) -> dict:
        return {
            "epoch": epoch,
            "train_loss": tr[0],
            "train_acc": tr[1],
            "train_acc_clean": tr_clean[1],
            "test_loss": te[0],
            "test_acc": te[1],
            "running_loss": running,
            "lr": self.opt.param_groups[0]["lr"],
            "seconds": seconds,
        }

    def _save_corruption(self) -> None:
        atomic_save_safetensors(
            self.out / rd.CORRUPTION,
            {"labels": self.ds.y_train, "clean_labels": self.clean_labels, "changed_mask": self.mask},
        )

    def _save_checkpoint(self, epoch: int) -> None:
        atomic_save_safetensors(
            rd.checkpoint_path(self.out, epoch), self.model.state_dict(), metadata={"epoch": epoch}
        )

    def _save_state(self) -> None:
        state = {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "elapsed": self.elapsed,
        }
        atomic_torch_save(self.out / rd.STATE, state)

    def _stop_reason(self, last: dict | None = None) -> str | None:
        cfg = self.cfg
        last = self.history[-1] if last is None else last
        if cfg.until_train_acc is not None and self.epoch >= 1 and last["train_acc"] >= cfg.until_train_acc:
            return "until_train_acc"
        if self.epoch >= cfg.epoch_cap:
            return "max_epochs" if cfg.until_train_acc is not None else "epochs"
        return None

    def _train_epoch(self, epoch: int) -> float:
        cfg, model, opt = self.cfg, self.model, self.opt
        n = len(self.x_train)
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, _SHUFFLE, epoch))
        perm = torch.randperm(n, generator=gen).to(self.device)
        x, y = self.x_train, self.y_train
        bs = cfg.batch_size
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().double() * len(idx)
        model.eval()
        return total.item() / max(1, n)

    # ------------------------------------------------------------------ main loop
    def _loop(self) -> rd.Run:
        from tqdm.auto import tqdm

        cfg, out = self.cfg, self.out
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self.rng_state is None:
                torch.manual_seed(derive_seed(cfg.seed, _GLOBAL))
            else:
                torch.set_rng_state(self.rng_state["rng_cpu"].cpu())
                if self.rng_state.get("rng_cuda") is not None and self.device.type == "cuda":
                    torch.cuda.set_rng_state(self.rng_state["rng_cuda"].cpu(), self.device)
            ckpts = set(cfg.checkpoint_epochs(cfg.epoch_cap))
            reason = self._stop_reason()
            target = f" until acc>={cfg.until_train_acc:g}" if cfg.until_train_acc is not None else ""
            with tqdm(
                total=cfg.epoch_cap,
                initial=self.epoch,
                desc=f"train {cfg.model} {cfg.dataset} p={cfg.corrupt:g}{target}",
                unit="ep",
                disable=not self.progress,
                leave=False,
                dynamic_ncols=True,
            ) as bar:
                self._postfix(bar)
                while reason is None:
                    t0 = time.perf_counter()
                    epoch = self.epoch + 1
                    running = self._train_epoch(epoch)
                    tr, tr_clean = self._evaluate_train()
                    self.epoch = epoch
                    row = self._row(epoch, tr, tr_clean, _NAN2, running, 0.0)
                    if self._stop_reason(row) is not None or cfg.test_epoch(epoch):
                        row["test_loss"], row["test_acc"] = self._evaluate_test()
                    if epoch in ckpts:
                        self._save_checkpoint(epoch)
                    row["seconds"] = time.perf_counter() - t0
                    self.history.append(row)
                    self.elapsed += row["seconds"]
                    rd.atomic_write_history(out / rd.HISTORY, self.history)
                    self._save_state()
                    self._postfix(bar)
                    bar.update(1)
                    reason = self._stop_reason()
                    for cb in self.callbacks:
                        cb(epoch, dict(row), self.model)
        return self._finish(reason)

    def _postfix(self, bar) -> None:
        _set_postfix(bar, self.history)

    def _finish(self, reason: str) -> rd.Run:
        out = self.out
        self.model.eval()
        atomic_save_safetensors(out / rd.MODEL, self.model.state_dict(), metadata={"epoch": self.epoch})
        last = self.history[-1]
        final = {
            "epoch": self.epoch,
            "stopped_reason": reason,
            "train_loss": last["train_loss"],
            "train_acc": last["train_acc"],
            "train_acc_clean": last["train_acc_clean"],
            "test_loss": last["test_loss"],
            "test_acc": last["test_acc"],
            "train_seconds": self.elapsed,
            "end_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(out / rd.FINAL, final)
        atomic_write_text(out / rd.COMPLETE, final["end_time"] + "\n")
        model = self.model.to("cpu").eval()
        ds = self.ds  # its tensors are the CPU originals (only copies were moved to the device)
        return rd.Run(
            out,
            rd.read_config(out),
            model,
            clean_train_labels=self.clean_labels.cpu(),
            corrupted_mask=self.mask.cpu(),
            train_labels=ds.y_train.cpu(),
            history=rd.history_frame(self.history),
            epoch=self.epoch,
            checkpoint_epochs=sorted(set(rd.saved_checkpoint_epochs(out)) | {self.epoch}),
            final=final,
            data=ds,
        )
