"""Run directories: their layout, their one writer, reading and checking their files (written with :mod:`singledir.io`).

Layout of a run directory (``COMPLETE`` is written last; a run is complete only when it exists)::

    config.json                 every setting (flat TrainConfig fields) + versions, host, data, corruption
    history.csv                 one row per epoch (epoch 0 = the untrained model)
    checkpoints/epoch_NNNN.safetensors   requested checkpoints (+ epoch 0 when any are requested)
    model.safetensors           final weights
    corruption.safetensors      labels (trained on), clean_labels, changed_mask
    state.pt                    resume state (model, optimizer, epoch, RNG); torch.load(weights_only=True)
    final.json                  final metrics, stopped_reason, wall time
    COMPLETE

One writer per run directory: :func:`run_lock` (a lease beside the directory, ``.NAME.writer``) is held
by every training, resume and overwrite; a second writer gets a one-line :class:`~singledir.errors.LockedError`
naming the holder's host and pid.

The :class:`Run` object and :func:`load_run` (a complete run loaded back) are in :mod:`.run`, built on
this module; both are importable from here too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import platform
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from singledir.devices import resolve_device
from singledir.errors import RunDirError, SingledirError
from singledir.io import atomic_write_text, remove_temp_files

CONFIG = "config.json"
HISTORY = "history.csv"
CKPT_DIR = "checkpoints"
MODEL = "model.safetensors"
CORRUPTION = "corruption.safetensors"
STATE = "state.pt"
FINAL = "final.json"
COMPLETE = "COMPLETE"

HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "train_acc",
    "train_acc_clean",
    "test_loss",
    "test_acc",
    "running_loss",
    "lr",
    "seconds",
]


# ---------------------------------------------------------------------------- history
def atomic_write_history(path: Path, rows: list[dict]) -> None:
    """Write the epoch rows as history.csv, atomically (:func:`singledir.io.atomic_write_text`)."""
    atomic_write_text(path, history_frame(rows).to_csv(index=False))


def history_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"epoch_{epoch:04d}.safetensors"


# ---------------------------------------------------------------------------- environment
@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """``git rev-parse HEAD`` in the package's directory, or None when it is not in a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and rev else None


def environment() -> dict:
    """Versions, git revision and host of the running process (JSON-able)."""
    import numpy

    from singledir import __version__

    return {
        "versions": {
            "singledir": __version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "numpy": numpy.__version__,
        },
        "git_revision": git_revision(),
        "host": {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
        },
    }


def describe_error(err: BaseException) -> str:
    """``"Kind: first line of the message"`` (at most 160 characters), for one-line errors about a file."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# ---------------------------------------------------------------------------- one writer
@contextlib.contextmanager
def run_lock(run_dir, *, wait: bool = False):
    """Hold the run directory's writer lease while the block runs: one writer per run directory.

    Every writer of a run directory takes it -- :func:`singledir.training.train` (fresh, ``resume``,
    ``overwrite``) and any other trainer (grouped training) -- so a run's files always come from one
    training. A live holder makes this raise :class:`~singledir.errors.LockedError`, one line naming its
    host and pid (``wait=True``: wait for it instead); a dead holder's lease is taken over. Once held, the
    leftovers of writers that were killed are removed: temporary files (``.state.pt.tmp<pid>``, ...) and
    an empty ``checkpoints/`` without config.json. Yields the
    :class:`~singledir.experiments.leases.Lease`; its ``check`` (usable as a training callback) raises once
    the lease was lost to another worker. Works for a directory that does not exist yet (the lease
    lives beside it: ``.NAME.writer``).
    """
    from singledir.experiments.leases import writer_lock

    with writer_lock(run_dir, "run directory", wait=wait) as lease:
        remove_temp_files(run_dir)
        _remove_setup_leftovers(Path(run_dir))
        yield lease


def _remove_setup_leftovers(run_dir: Path) -> None:
    """A writer killed between creating ``checkpoints/`` and writing config.json left only that empty folder."""
    ckpt = run_dir / CKPT_DIR
    if not (run_dir / CONFIG).exists() and ckpt.is_dir() and not ckpt.is_symlink() and not any(ckpt.iterdir()):
        ckpt.rmdir()


# ---------------------------------------------------------------------------- reading run dirs
def read_config(run_dir: Path) -> dict:
    """The run's config.json; RunDirError when the directory is missing or not a run directory."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a run directory; pass a directory made by `singledir train`")
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist; train a run into it first")
    path = run_dir / CONFIG
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a run directory (no {CONFIG}); pass a directory made by `singledir train`")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunDirError(f"cannot read {path}: {err}; the run directory is damaged, train it again") from None
    if not isinstance(cfg, dict) or "model_config" not in cfg:
        raise RunDirError(f"{path} is not a singledir run config; pass a directory made by `singledir train`")
    return cfg


def is_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / COMPLETE).is_file()


def saved_checkpoint_epochs(run_dir: Path) -> list[int]:
    out = []
    d = Path(run_dir) / CKPT_DIR
    if d.is_dir():
        for p in d.glob("epoch_*.safetensors"):
            try:
                out.append(int(p.stem.split("_", 1)[1]))
            except ValueError:
                continue
    return sorted(out)


def build_from_config(config: dict) -> nn.Module:
    """The run's architecture (random weights), rebuilt with singledir.models.build_model."""
    from singledir.models import build_model

    mc = dict(config["model_config"])
    name = mc.pop("name")
    return build_model(name, mc.pop("input_shape"), mc.pop("num_classes"), **mc)


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types
        raise RunDirError(f"cannot read weights {path}: {err}; the run directory is damaged") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise RunDirError(f"weights {path} do not fit the run's model ({first})") from None
    return model


def _weight_shapes(path: Path) -> dict[str, tuple]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises several types
        raise RunDirError(f"cannot read weights {path}: {err}; the run directory is damaged") from None


def check_weights(run_dir, config: dict | None = None) -> None:
    """Raise :class:`RunDirError` unless config.json's architecture fits the run's saved weights.

    Compares the tensor names and shapes of the model that config.json describes with those of the
    final weights (or, for an interrupted run, the newest checkpoint) -- a config.json edited or copied
    from another run would otherwise describe weights it does not have. Nothing to compare (no weights
    yet) passes.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir) if config is None else config
    path = run_dir / MODEL
    if not path.is_file():
        eps = saved_checkpoint_epochs(run_dir)
        if not eps:
            return
        path = checkpoint_path(run_dir, eps[-1])
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation work
            want = {k: tuple(v.shape) for k, v in build_from_config(config).state_dict().items()}
    except (KeyError, TypeError, ValueError) as err:
        raise RunDirError(f"{run_dir / CONFIG} does not describe a model ({err}); the run directory is damaged") from None
    have = _weight_shapes(path)
    bad = [f"{k}: config {want.get(k)} vs weights {have.get(k)}" for k in sorted(set(want) | set(have))
           if want.get(k) != have.get(k)]
    if bad:
        raise RunDirError(
            f"{run_dir / CONFIG} does not match the weights in {path.name} ({'; '.join(bad[:3])}"
            f"{'; ...' if len(bad) > 3 else ''}); the run directory is damaged, train it again"
        )


def _epochs_available(run_dir: Path, final_epoch: int | None) -> list[int]:
    eps = set(saved_checkpoint_epochs(run_dir))
    if final_epoch is not None:
        eps.add(final_epoch)
    return sorted(eps)


def read_final(run_dir) -> dict:
    """A complete run's final.json (``epoch``, final metrics, ``stopped_reason``, timing).

    Raises :class:`RunDirError` (one line naming the file) when it is missing, unreadable, not a JSON
    object or has no integer ``epoch`` -- a complete run without them is damaged, not a run at epoch None.
    """
    path = Path(run_dir) / FINAL
    try:
        final = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunDirError(f"cannot read {path}: {err}; the run directory is damaged, train it again") from None
    epoch = final.get("epoch") if isinstance(final, dict) else None
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise RunDirError(f"{path} has no integer 'epoch' (got {epoch!r}); the run directory is damaged, train it again")
    return final


def _final_epoch(run_dir: Path) -> int | None:
    """The final epoch of a complete run (from final.json); None while the run is incomplete."""
    return read_final(run_dir)["epoch"] if is_complete(run_dir) else None


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What a complete run says about itself, from config.json and final.json (no weights, no data).

    ``config`` is the parsed config.json, ``final`` the parsed final.json. :func:`read_summary` reads one
    from a run directory; ``Run.summary`` gives the same for a loaded run.
    """

    run_dir: Path
    config: dict
    final: dict

    @property
    def name(self) -> str:
        """The run directory's name."""
        return Path(self.run_dir).name

    @property
    def epoch(self) -> int:
        """The epoch of the final weights."""
        return int(self.final["epoch"])

    @property
    def target_reached(self) -> bool:
        """False only when the run had a training-accuracy target (``until_train_acc``) and stopped without it."""
        if self.config.get("until_train_acc") is None:
            return True
        return self.final.get("stopped_reason") == "until_train_acc"

    def metric(self, key: str):
        """A final metric (``train_acc``, ``train_acc_clean``, ``test_acc``, ``test_loss``, ``train_loss``,
        ``train_seconds``, ...); None when final.json does not have it."""
        return self.final.get(key)


def read_summary(run_dir) -> RunSummary:
    """The :class:`RunSummary` of a complete run; :class:`RunDirError` for a missing, incomplete or damaged one."""
    run_dir = Path(run_dir)
    return RunSummary(run_dir, _require_complete(run_dir), read_final(run_dir))


def _require_complete(run_dir: Path) -> dict:
    config = read_config(run_dir)
    if not is_complete(run_dir):
        raise RunDirError(
            f"{run_dir} is an incomplete run (interrupted?); finish it with resume=True "
            f"or train it again with overwrite=True"
        )
    return config


def load_model(run_dir, epoch: int | None = None, *, config: dict | None = None, device=None) -> nn.Module:
    """The run's model in eval mode with the final weights (epoch=None) or those of ``epoch``.

    ``device``: where to put it (``"cpu"``, ``"cuda"``, a :class:`torch.device`; checked by
    :func:`singledir.devices.resolve_device`); default the CPU.
    """
    dev = resolve_device("cpu" if device is None else device)
    run_dir = Path(run_dir)
    if config is None:
        config = _require_complete(run_dir)
    final_epoch = _final_epoch(run_dir)
    if epoch is None or (final_epoch is not None and epoch == final_epoch):
        path = run_dir / MODEL
    else:
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise SingledirError(f"epoch must be an int or None, got {epoch!r}")
        path = checkpoint_path(run_dir, epoch)
        if not path.is_file():
            avail = _epochs_available(run_dir, final_epoch)
            raise RunDirError(
                f"no checkpoint for epoch {epoch} in {run_dir}; available epochs: "
                f"{', '.join(map(str, avail)) or 'none'}"
            )
    if not path.is_file():
        raise RunDirError(f"{path} is missing; the run directory is damaged, train it again")
    model = build_from_config(config)
    load_weights(model, path)
    return model.to(dev).eval()


def load_corruption(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(run_dir) / CORRUPTION
    try:
        t = load_file(str(path))
        return {"labels": t["labels"], "clean_labels": t["clean_labels"], "changed_mask": t["changed_mask"]}
    except Exception as err:  # noqa: BLE001
        raise RunDirError(f"cannot read {path}: {err}; the run directory is damaged") from None


# pandas 3 parses floats exactly by default and deprecates the option that asks for it on pandas 2
_EXACT_FLOATS = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


def read_history(run_dir: Path) -> pd.DataFrame:
    """history.csv as written: floats parsed to the exact values saved (pandas 2's default parser rounds some
    one ulp off, so a resumed run would rewrite its earlier rows changed)."""
    path = Path(run_dir) / HISTORY
    try:
        return pd.read_csv(path, **_EXACT_FLOATS)
    except Exception as err:  # noqa: BLE001
        raise RunDirError(f"cannot read {path}: {err}; the run directory is damaged") from None


# The Run object and load_run are built on this module (:mod:`.run`); importable from here too.
from singledir.training.run import Run, load_run, load_run_data  # noqa: E402  (run.py imports this module)
