"""Training runs: train a model into a run directory, resume it, load it back.

- :func:`train` -- ``train(config, out_dir, *, overwrite=False, resume=False, progress=True)`` -> :class:`Run`
- :func:`train_group` -- ``train_group(configs, out_dirs, *, resume=False, ...)`` -> list of :class:`Run`:
  MLPs of one architecture trained as one stacked model (:mod:`singledir.training.grouped`), each into
  its own run directory, bit-identical to training each alone
- :func:`load_run` -- ``load_run(run_dir, epoch=None)`` -> :class:`Run` (model in eval mode)
- :func:`read_summary` -- ``read_summary(run_dir)`` -> :class:`RunSummary` (config + final metrics of a
  complete run, without loading weights or data; also ``run.summary``)
- :class:`TrainConfig` -- every setting (a dict of its fields is accepted wherever a config is)
- :func:`evaluate` -- ``evaluate(model, x, y, batch_size=4096)`` -> ``(loss, acc)``

The run directory layout is described in :mod:`singledir.training.rundir`; the determinism and resume
guarantees in :mod:`singledir.training.loop`.
"""

from __future__ import annotations

from singledir.training.config import DEFAULT_EPOCHS, RUNTIME_SETTINGS, TrainConfig, log_epochs
from singledir.training.evaluation import evaluate
from singledir.training.grouped import train_group
from singledir.training.loop import train
from singledir.training.run import Run, load_run
from singledir.training.rundir import RunSummary, load_model, read_summary

__all__ = ["train", "train_group", "load_run", "load_model", "read_summary", "Run", "RunSummary", "TrainConfig", "evaluate",
           "log_epochs", "DEFAULT_EPOCHS", "RUNTIME_SETTINGS"]
