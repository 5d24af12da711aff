"""The dataset a training config names: :func:`load_data` (used by training and by loading a run back).

Kept apart from :mod:`.loop` and :mod:`.rundir` so that neither has to import the other for it.
"""

from __future__ import annotations

import inspect

from singledir.errors import SingledirError
from singledir.training.config import TrainConfig

__all__ = ["load_data"]


def load_data(cfg: TrainConfig):
    """The (clean) dataset a config names: ``load_dataset`` with the config's subset settings."""
    from singledir.data import load_dataset

    kwargs = {"data_dir": cfg.data_dir, "train_subset": cfg.train_subset, "seed": cfg.data_seed}
    if cfg.test_subset is not None:
        if "test_subset" not in inspect.signature(load_dataset).parameters:
            raise SingledirError("this version of singledir.data has no test subsets; leave test_subset unset")
        kwargs["test_subset"] = cfg.test_subset
    return load_dataset(cfg.dataset, **kwargs)
