"""TrainConfig: every setting of a training run, validated at the boundary with one-line errors.

A config is a flat dataclass so that ``config.json`` stores it as flat keys (``run.config["lr"]``) and a
``dict`` of the same fields is accepted everywhere a :class:`TrainConfig` is.

Decisions (documented here, recorded in every run's ``config.json``):

- ``epochs`` and ``until_train_acc`` are alternatives. With neither, ``epochs`` defaults to
  :data:`DEFAULT_EPOCHS`. With ``until_train_acc`` the run stops at the first epoch whose training
  accuracy (on the run's, possibly corrupted, labels) is ``>= until_train_acc``, or at ``max_epochs``.
- ``checkpoints``: ``None`` (none), ``"log"`` (Fibonacci-spaced epochs 1, 2, 3, 5, 8, 13, 21, ...) or a
  list of positive epochs (a comma string ``"1,5,10"`` is accepted too). When any are requested the
  untrained model is saved as epoch 0 as well. The final model is always in ``model.safetensors``.
- ``seed`` drives the weight init, the per-epoch shuffling, dropout, and (unless ``corrupt_seed`` is
  set) the label corruption. ``data_seed`` picks the training subset, so runs that differ only in
  ``seed`` see the same examples.
- ``history_every``: the training set (eval mode, the stopping rule's accuracy) is evaluated every
  epoch; the *test* set only every ``history_every`` epochs (default :data:`DEFAULT_HISTORY_EVERY`), at
  checkpoint epochs, at epoch 0 and at the final epoch. ``history.csv`` has NaN test columns on the
  other epochs. ``history_every=1`` evaluates the test set every epoch (the behaviour before it existed).
- ``engine``: how the weights are computed. ``"stacked"`` (:mod:`.grouped`: MLPs without batch norm,
  trained alone or together with others as one stacked model, bit-identical either way) or
  ``"reference"`` (:mod:`.loop`'s one-network torch.optim loop, every model). ``"auto"`` (default)
  resolves to ``"stacked"`` where it applies, else ``"reference"``; the resolved name is what is stored
  and hashed, so runs of the two engines are never mixed in a run cache.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from singledir.errors import SingledirError

DEFAULT_EPOCHS = 20
#: the test set is evaluated every this many epochs (plus epoch 0, checkpoints and the final epoch)
DEFAULT_HISTORY_EVERY = 10
ENGINES = ("auto", "stacked", "reference")
OPTIMIZERS = ("adam", "sgd")
CORRUPT_METHODS = ("shuffle", "uniform")
DEVICES = ("cpu", "cuda", "cuda:N")
#: Settings that do not change the weights a run computes (where the data live, which device, the
#: evaluation batch size): a resumed run may use new values for them (the data are checked by
#: fingerprint), and they are not part of a run's identity (e.g. a run cache key). Everything else
#: must match the run's config.json.
RUNTIME_SETTINGS = ("data_dir", "device", "eval_batch_size")


@dataclass
class TrainConfig:
    """All settings of one training run (see the module docstring for the semantics)."""

    dataset: str = "fashion-mnist"
    model: str = "mlp"
    data_dir: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    data_seed: int = 0
    corrupt: float = 0.0
    corrupt_method: str = "shuffle"
    corrupt_seed: int | None = None
    seed: int = 0
    width: int = 128
    depth: int | None = None
    width_mult: float = 1.0
    dropout: float = 0.0
    batchnorm: bool | None = None
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 128
    eval_batch_size: int | None = None
    epochs: int | None = None
    until_train_acc: float | None = None
    max_epochs: int = 1000
    checkpoints: Any = field(default=None)  # None | "log" | list[int]
    history_every: int = DEFAULT_HISTORY_EVERY
    engine: str = "auto"
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_dict(cls, d: dict, *, strict: bool = True) -> TrainConfig:
        """Build from a dict of fields; unknown keys are an error when ``strict`` (else ignored)."""
        if not isinstance(d, dict):
            raise SingledirError(f"a training config must be a TrainConfig or a dict, not {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown and strict:
            raise SingledirError(
                f"unknown training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def coerce(cls, config: TrainConfig | dict) -> TrainConfig:
        if isinstance(config, TrainConfig):
            return dataclasses.replace(config)  # re-validates, and a copy the caller cannot mutate
        return cls.from_dict(config)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if isinstance(d["checkpoints"], tuple):
            d["checkpoints"] = list(d["checkpoints"])
        return d

    # ------------------------------------------------------------------ derived settings
    @property
    def epoch_cap(self) -> int:
        """The most epochs this run can train."""
        if self.until_train_acc is not None:
            return self.max_epochs
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS

    @property
    def effective_corrupt_seed(self) -> int:
        return self.seed if self.corrupt_seed is None else self.corrupt_seed

    def checkpoint_epochs(self, last_epoch: int) -> list[int]:
        """Epochs (<= last_epoch) whose weights are saved under ``checkpoints/``; includes 0 when any."""
        if self.checkpoints is None:
            return []
        if self.checkpoints == "log":
            eps = log_epochs(last_epoch)
        else:
            eps = [e for e in self.checkpoints if e <= last_epoch]
        return [0] + eps

    def test_epoch(self, epoch: int, last_epoch: int | None = None) -> bool:
        """Whether the test set is evaluated at ``epoch`` (0, every ``history_every``, checkpoints, the last)."""
        if epoch == 0 or epoch % self.history_every == 0 or epoch == last_epoch:
            return True
        if self.checkpoints is None:
            return False
        return epoch in (log_epochs(epoch) if self.checkpoints == "log" else self.checkpoints)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        _str(self, "dataset")
        _str(self, "model")
        if self.data_dir is not None:  # recorded absolute: the run can be used from any working directory
            self.data_dir = os.path.abspath(os.path.expanduser(str(self.data_dir)))
        _opt_int(self, "train_subset", 1)
        _opt_int(self, "test_subset", 1)
        _int(self, "data_seed", 0)
        _float(self, "corrupt", 0.0, 1.0, "a fraction in [0, 1]")
        _choice(self, "corrupt_method", CORRUPT_METHODS)
        _opt_int(self, "corrupt_seed", 0)
        _int(self, "seed", 0)
        _int(self, "width", 1)
        _opt_int(self, "depth", 1)
        _float(self, "width_mult", 0.0, None, "a number > 0", open_low=True)
        _float(self, "dropout", 0.0, 1.0, "a fraction in [0, 1)", open_high=True)
        if self.batchnorm is not None and not isinstance(self.batchnorm, bool):
            raise SingledirError(f"batchnorm must be true, false or unset, got {self.batchnorm!r}")
        _choice(self, "optimizer", OPTIMIZERS)
        _float(self, "lr", 0.0, None, "a learning rate > 0", open_low=True)
        _float(self, "momentum", 0.0, 1.0, "in [0, 1)", open_high=True)
        _float(self, "weight_decay", 0.0, None, "a number >= 0")
        _int(self, "batch_size", 1)
        _opt_int(self, "eval_batch_size", 1)
        _opt_int(self, "epochs", 1)
        if self.until_train_acc is not None:
            _float(self, "until_train_acc", 0.0, 1.0, "an accuracy in (0, 1]", open_low=True)
        _int(self, "max_epochs", 1)
        if self.epochs is not None and self.until_train_acc is not None:
            raise SingledirError(
                "pass either epochs or until_train_acc, not both (max_epochs caps until_train_acc)"
            )
        self.checkpoints = _checkpoints(self.checkpoints)
        _int(self, "history_every", 1)
        _choice(self, "engine", ENGINES)
        self._resolve_engine()
        if isinstance(self.checkpoints, list) and self.checkpoints[-1] > self.epoch_cap:
            late = [e for e in self.checkpoints if e > self.epoch_cap]
            cap = "max_epochs" if self.until_train_acc is not None else "epochs"
            raise SingledirError(
                f"checkpoints {', '.join(map(str, late))} lie after the last epoch ({cap} = {self.epoch_cap}); "
                f"drop them or train longer"
            )
        from singledir.devices import check_device_name

        self.device = check_device_name(self.device)
        self._check_names()

    def _resolve_engine(self) -> None:
        stackable = self.model == "mlp" and not self.batchnorm
        if self.engine == "auto":
            self.engine = "stacked" if stackable else "reference"
        elif self.engine == "stacked" and not stackable:
            raise SingledirError(
                f"engine 'stacked' trains MLPs without batch norm only (got model={self.model!r}, "
                f"batchnorm={self.batchnorm!r}); use engine 'reference' or 'auto'"
            )

    def _check_names(self) -> None:
        """Unknown dataset/model names fail here, before any work, when those modules are present."""
        try:
            from singledir.data import DATASETS
        except ImportError:  # pragma: no cover - data module not in this checkout
            DATASETS = None
        if DATASETS is not None and self.dataset not in DATASETS:
            raise SingledirError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        try:
            from singledir.models import MODELS
        except ImportError:  # pragma: no cover
            MODELS = None
        if MODELS is not None and self.model not in MODELS:
            raise SingledirError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")


def log_epochs(last_epoch: int) -> list[int]:
    """Fibonacci-spaced epochs 1, 2, 3, 5, 8, 13, 21, ... up to ``last_epoch`` (growth ~1.6x)."""
    out, a, b = [], 1, 2
    while a <= last_epoch:
        out.append(a)
        a, b = b, a + b
    return out


# ---------------------------------------------------------------------- field checkers
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(cfg, name, lo) -> None:
    v = getattr(cfg, name)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
        setattr(cfg, name, v)
    if not _is_int(v) or v < lo:
        raise SingledirError(f"{name} must be an integer >= {lo}, got {v!r}")


def _opt_int(cfg, name, lo) -> None:
    if getattr(cfg, name) is not None:
        _int(cfg, name, lo)


def _float(cfg, name, lo, hi, what, *, open_low=False, open_high=False) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise SingledirError(f"{name} must be {what}, got {v!r}")
    v = float(v)
    bad = (v <= lo if open_low else v < lo) or (
        hi is not None and (v >= hi if open_high else v > hi)
    )
    if bad or v == float("inf"):
        raise SingledirError(f"{name} must be {what}, got {v:g}")
    setattr(cfg, name, v)


def _str(cfg, name) -> None:
    v = getattr(cfg, name)
    if not isinstance(v, str) or not v:
        raise SingledirError(f"{name} must be a non-empty string, got {v!r}")


def _choice(cfg, name, choices) -> None:
    v = getattr(cfg, name)
    if isinstance(v, str):
        v = v.lower()
        setattr(cfg, name, v)
    if v not in choices:
        raise SingledirError(f"unknown {name} {v!r}; choose one of {', '.join(choices)}")


def _checkpoints(v):
    """Normalize checkpoints to None, "log", or a sorted list of distinct positive ints."""
    if v is None or v == "" or v == []:
        return None
    if isinstance(v, str):
        s = v.strip().lower()
        if s == "log":
            return "log"
        if s in ("none", "no"):
            return None
        parts = [p.strip() for p in s.split(",") if p.strip()]
        try:
            v = [int(p) for p in parts]
        except ValueError:
            raise SingledirError(
                f"checkpoints must be 'log' or a comma list of positive epochs like 1,5,10, got {s!r}"
            ) from None
    if not isinstance(v, (list, tuple)) or not all(_is_int(e) and e >= 1 for e in v):
        raise SingledirError(
            f"checkpoints must be 'log' or a list of positive epochs like 1,5,10, got {v!r}"
        )
    return sorted(set(v))
