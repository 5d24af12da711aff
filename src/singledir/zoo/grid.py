"""The zoo's grids: presets smoke / quick / paper, and the training configs of a complete grid.

Offers:

- :class:`ZooPreset` -- dataset, the base training config (common stopping criterion: training accuracy
  >= 99% on the run's labels, with an epoch cap, as in Jiang et al. 2020), the hyperparameter axes
  (TrainConfig field -> values), the seeds, and the measure settings.
- :data:`PRESETS` -- ``smoke`` (16 MLPs on digits, seconds, for tests), ``quick`` (128 MLPs on a
  500-example Fashion-MNIST training subset tested on all 10,000 test images: <= 20 minutes on 2 CPU
  cores), ``paper`` (2,916 MLPs over 6 axes x 3 values x 4 seeds: for a GPU or a cluster).
- :func:`grid_configs` -- one training config per (grid cell, seed), in a stable order.

Why label corruption is a quick axis: without it every quick model's gap lies within ~0.04 of the others
(std 0.007 measured on a 32 x 4 grid over width, depth, lr, batch size and dropout), below the ~0.02
test noise that the sign-error weights discard, so no environment survived; 20% corrupted labels move
the gap by ~0.05.

Why 4 seeds in quick: Dziugaite et al.'s robust sign-error keeps an environment (two settings that
differ in one axis) only when its effective sample size reaches 12, and with s seeds an environment has
at most s^2 = 16 model pairs.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

from singledir.errors import SingledirError

__all__ = ["AXES", "PRESETS", "ZooPreset", "grid_configs", "get_preset"]

#: hyperparameter axes a zoo may vary (TrainConfig fields)
AXES = ("width", "depth", "lr", "batch_size", "weight_decay", "dropout", "corrupt")


@dataclass(frozen=True)
class ZooPreset:
    """A zoo: ``base`` training settings + a complete grid over ``axes`` x ``seeds``."""

    name: str
    dataset: str
    base: dict
    axes: dict
    seeds: tuple
    measures: dict = field(default_factory=dict)  # MeasureSettings fields
    description: str = ""

    def __post_init__(self) -> None:
        bad = [a for a in self.axes if a not in AXES]
        if bad:
            raise SingledirError(f"unknown zoo axis {bad[0]!r}; choose from {', '.join(AXES)}")
        flat = [a for a, v in self.axes.items() if len(set(v)) < 2]
        if flat:
            raise SingledirError(f"zoo axis {flat[0]!r} has fewer than 2 values ({list(self.axes[flat[0]])}); give it 2 or more")
        if not self.seeds:
            raise SingledirError("a zoo needs at least one seed")

    @property
    def n_models(self) -> int:
        n = len(self.seeds)
        for v in self.axes.values():
            n *= len(v)
        return n


_STOP = {"until_train_acc": 0.99, "model": "mlp", "optimizer": "adam"}

PRESETS: dict[str, ZooPreset] = {
    "smoke": ZooPreset(
        name="smoke",
        dataset="digits",
        base={**_STOP, "train_subset": 300, "max_epochs": 60},
        axes={"width": [64, 128], "depth": [1, 2], "lr": [1e-3, 3e-3], "batch_size": [32, 64]},
        seeds=(0,),
        measures={"n_reliance": 100, "reliance_repeats": 1, "n_flatness": 150, "mc_samples": 2, "search_depth": 6,
                  "sharpness_depth": 4, "sharpness_steps": 1, "n_jacobian": 32, "n_db": 150},
        description="16 MLPs on a 300-example digits subset (seconds; for tests)",
    ),
    "quick": ZooPreset(
        name="quick",
        dataset="fashion-mnist",
        base={**_STOP, "train_subset": 500, "max_epochs": 200},
        axes={"width": [32, 128], "depth": [1, 2], "lr": [1e-3, 3e-3], "batch_size": [32, 128],
              "corrupt": [0.0, 0.2]},
        seeds=(0, 1, 2, 3),
        measures={"n_reliance": 500, "reliance_repeats": 2, "n_flatness": 500, "mc_samples": 5, "search_depth": 10,
                  "sharpness_depth": 8, "sharpness_steps": 3, "n_jacobian": 128, "n_db": 500},
        description="128 MLPs (5 axes x 2 values x 4 seeds) on 500 Fashion-MNIST training images, "
                    "tested on all 10,000 test images",
    ),
    "paper": ZooPreset(
        name="paper",
        dataset="fashion-mnist",
        base={**_STOP, "train_subset": 10000, "max_epochs": 300},
        axes={"width": [128, 256, 512], "depth": [1, 2, 3], "lr": [3e-4, 1e-3, 3e-3],
              "batch_size": [32, 64, 128], "dropout": [0.0, 0.25, 0.5], "weight_decay": [0.0, 1e-5, 1e-4]},
        seeds=(0, 1, 2, 3),
        measures={},
        description="2,916 MLPs (6 axes x 3 values x 4 seeds) on 10,000 Fashion-MNIST training images "
                    "(a Fantastic-sized grid: for a GPU or a cluster)",
    ),
}


def get_preset(name: str) -> ZooPreset:
    if name not in PRESETS:
        raise SingledirError(f"unknown zoo preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def grid_configs(preset: ZooPreset, *, dataset: str | None = None) -> list[dict]:
    """Every (cell, seed) of the grid as a flat training config (axis order, then seed)."""
    names = list(preset.axes)
    out = []
    for values in itertools.product(*(preset.axes[a] for a in names)):
        for seed in preset.seeds:
            c = {**preset.base, "dataset": dataset or preset.dataset, **dict(zip(names, values)), "seed": int(seed)}
            out.append(c)
    return out


def with_dataset(preset: ZooPreset, dataset: str | None) -> ZooPreset:
    """The preset with another dataset (its training subset is kept)."""
    return preset if dataset is None else dataclasses.replace(preset, dataset=dataset)
