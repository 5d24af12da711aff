"""The run directory a training writes into: the validated config of a fresh run or a resume, and the target's checks.

:func:`resolve_target` is shared by both engines (:mod:`.loop`, :mod:`.grouped`): it refuses a complete
run without ``overwrite``, an interrupted one without ``resume`` or ``overwrite``, a non-empty directory
that is not a run, and a resume whose settings differ from the stored ones (but for
:data:`~.config.RUNTIME_SETTINGS`).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from singledir.errors import RunDirError, SingledirError
from singledir.training import rundir as rd
from singledir.training.config import RUNTIME_SETTINGS, TrainConfig

__all__ = ["resolve_target"]


def _check_fresh_target(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise RunDirError(f"{out} exists and is not a directory; choose another out_dir")
    if (out / rd.CONFIG).is_file():
        if not overwrite:
            if rd.is_complete(out):
                raise RunDirError(f"{out} is a complete run; pass overwrite=True to replace it or choose another out_dir")
            raise RunDirError(
                f"{out} holds an incomplete (interrupted) run; continue it with resume=True "
                f"or pass overwrite=True to start again"
            )
        return
    if any(out.iterdir()):
        raise RunDirError(f"{out} is a non-empty directory that is not a run; choose another out_dir")


def _clear(out: Path) -> None:
    if out.exists() and (out / rd.CONFIG).is_file():
        shutil.rmtree(out)


def _config_mismatch(stored: TrainConfig, given: TrainConfig) -> list[str]:
    a, b = stored.to_dict(), given.to_dict()
    return [f"{k}={b[k]!r} (run has {a[k]!r})" for k in a if a[k] != b[k] and k not in RUNTIME_SETTINGS]


def resolve_target(config, out: Path, *, overwrite: bool, resume: bool) -> tuple[TrainConfig, dict | None]:
    """The validated config of a run to train into ``out``, and its stored config.json when resuming.

    Raises what :func:`.loop.train` documents (both flags, a complete run to resume, a config that differs
    from the stored one, a target that is not fresh).
    """
    if resume:
        if overwrite:
            raise SingledirError("pass either resume=True or overwrite=True, not both")
        stored = rd.read_config(out)
        if rd.is_complete(out):
            raise RunDirError(f"{out} is already a complete run; nothing to resume (load it with singledir.load_run)")
        # runs written before these settings existed: their engine was the reference loop, and they
        # evaluated the test set every epoch
        stored_cfg = {"engine": "reference", "history_every": 1, **stored}
        cfg = TrainConfig.from_dict(stored_cfg, strict=False)
        if config is not None:
            given = TrainConfig.coerce(config)
            diff = _config_mismatch(cfg, given)
            if diff:
                raise SingledirError(
                    f"settings differ from the run being resumed: {'; '.join(diff)}; drop them to resume"
                )
            cfg = dataclasses.replace(cfg, **{k: getattr(given, k) for k in RUNTIME_SETTINGS})
        return cfg, stored
    if config is None:
        raise SingledirError("a training config is required (None is only allowed with resume=True)")
    cfg = TrainConfig.coerce(config)
    _check_fresh_target(out, overwrite)
    return cfg, None
