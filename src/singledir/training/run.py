"""The Run object and load_run: a complete run loaded back from its directory (model, labels, history, data).

:func:`load_run` checks the run (complete, config.json agreeing with the weights) with :mod:`.rundir`,
on which this module is built; the run's data are loaded on first access (:func:`load_run_data`) and
checked against the fingerprint recorded when it trained.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from singledir.devices import model_device
from singledir.errors import RunDirError
from singledir.training.rundir import (
    RunSummary,
    _epochs_available,
    _require_complete,
    check_weights,
    load_corruption,
    load_model,
    read_final,
    read_history,
)

__all__ = ["Run", "load_run", "load_run_data"]


class Run:
    """A training run: its config, model (eval mode), data with the run's labels, history.

    Attributes: ``run_dir`` (Path), ``config`` (dict, the parsed config.json: flat TrainConfig fields plus
    ``versions``, ``git_revision``, ``host``, ``data``, ``corruption``, ``model_config``, ``start_time``),
    ``model`` (nn.Module in eval mode, on the device given to :func:`load_run`, default the CPU),
    ``data`` (Dataset whose ``y_train`` are the labels the run trained on -- corrupted if corruption was
    applied; loaded on first access), ``clean_train_labels``, ``train_labels``, ``corrupted_mask`` (bool,
    labels that changed), ``history`` (DataFrame, one row per epoch, epoch 0 = the
    untrained model), ``epoch`` (the epoch of ``model``'s weights), ``checkpoint_epochs`` (every epoch whose
    weights can be loaded with ``load_run(run_dir, epoch=...)``, including the final one), ``final``
    (final.json: final metrics and ``stopped_reason``), ``summary`` (a :class:`RunSummary` of both).
    """

    def __init__(
        self,
        run_dir,
        config: dict,
        model: nn.Module,
        *,
        clean_train_labels: torch.Tensor,
        corrupted_mask: torch.Tensor,
        train_labels: torch.Tensor,
        history: pd.DataFrame,
        epoch: int,
        checkpoint_epochs: list[int],
        final: dict | None = None,
        data=None,
        data_dir=None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.model = model
        self.clean_train_labels = clean_train_labels
        self.corrupted_mask = corrupted_mask
        self.train_labels = train_labels
        self.history = history
        self.epoch = epoch
        self.checkpoint_epochs = checkpoint_epochs
        self.final = final or {}
        self._data = data
        self.data_dir = data_dir

    @property
    def data(self):
        """The run's Dataset (same tensors, checked by fingerprint) with ``y_train`` = the run's labels."""
        if self._data is None:
            self._data = load_run_data(self.config, self.train_labels, data_dir=self.data_dir)
        return self._data

    @property
    def summary(self) -> RunSummary:
        """The run's :class:`RunSummary` (config + final metrics), as :func:`read_summary` gives it."""
        return RunSummary(self.run_dir, self.config, self.final)

    def model_at(self, epoch: int | None) -> nn.Module:
        """The model (eval mode, on the device of ``model``) with the weights of ``epoch`` (None = final)."""
        return load_model(self.run_dir, epoch, config=self.config, device=model_device(self.model))

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Run({str(self.run_dir)!r}, dataset={c.get('dataset')!r}, model={c.get('model')!r}, "
            f"corrupt={c.get('corrupt')}, seed={c.get('seed')}, epoch={self.epoch})"
        )


def load_run_data(config: dict, train_labels: torch.Tensor, *, data_dir=None):
    """Load the run's dataset again, check its fingerprint, and put the run's labels in ``y_train``.

    ``data_dir``: where the data are now, when they moved since the run trained (default: the run's own
    ``data_dir``, recorded as an absolute path, or the data module's search path).
    """
    from singledir.training.config import TrainConfig
    from singledir.training.data import load_data

    cfg = TrainConfig.from_dict(config, strict=False)
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data_dir=str(data_dir))
    ds = load_data(cfg)
    want = config.get("data", {}).get("fingerprint")
    if want is not None and ds.fingerprint != want:
        raise RunDirError(
            f"the {cfg.dataset} data found now (fingerprint {ds.fingerprint[:12]}) differs from the data this "
            f"run trained on ({want[:12]}); point data_dir at the original files"
        )
    if len(train_labels) != len(ds.y_train):
        raise RunDirError(
            f"the run saved {len(train_labels)} training labels but the dataset has {len(ds.y_train)}; "
            f"the run directory does not match its data"
        )
    return dataclasses.replace(ds, y_train=train_labels.clone())


def load_run(run_dir, epoch: int | None = None, *, device=None, data_dir=None) -> Run:
    """Load a complete run made by ``singledir train``: model (eval mode) at ``epoch`` (None = final).

    A missing epoch raises :class:`RunDirError` listing the available ones; a missing or incomplete run
    directory raises :class:`RunDirError`. ``run.data`` is loaded (and checked against the run's data
    fingerprint) on first access. ``device``: where the model goes (default the CPU); the data stay on
    the CPU (the measurements move each batch to the model's device). ``data_dir``: where the run's data
    are now, if they moved (still checked against the fingerprint). The config and the weights are
    checked to agree first (:func:`check_weights`).
    """
    run_dir = Path(run_dir)
    config = _require_complete(run_dir)
    check_weights(run_dir, config)
    final = read_final(run_dir)
    final_epoch = final["epoch"]
    model = load_model(run_dir, epoch, config=config, device=device)
    corr = load_corruption(run_dir)
    return Run(
        run_dir,
        config,
        model,
        clean_train_labels=corr["clean_labels"],
        corrupted_mask=corr["changed_mask"].bool(),
        train_labels=corr["labels"],
        history=read_history(run_dir),
        epoch=final_epoch if epoch is None else epoch,
        checkpoint_epochs=_epochs_available(run_dir, final_epoch),
        final=final,
        data_dir=data_dir,
    )
