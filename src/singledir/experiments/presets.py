"""Presets: every setting of every claim for ``smoke`` (tests), ``quick`` (20 min on 2 CPU cores), ``paper``.

A preset maps each claim to a plain dict of settings. ``train`` holds TrainConfig fields shared by the
claim's networks; the other keys say which networks vary how and how they are analysed. The report
prints these dicts verbatim, so what you read here is exactly what ran.

Analysis keys (used by several claims):

- ``examples``: how many examples the ablation / noise curves are evaluated on (a fixed random subset
  of the split, seed 0; ``None`` = all). ``levels``: points of the cumulative-ablation grid, evenly
  spaced in the fraction of units ablated, 0 and 1 included. ``orders``: random ablation orders.
- ``layers``: ``"all"`` (every unit layer, pooled into one random order -- the MLP's two hidden layers,
  as in the paper) or ``"lastN"`` (the last N unit layers, pooled -- the paper's choice for ConvNets).

How ``quick`` fits ~20 minutes on 2 cores (see :data:`NOTES`): MLPs of one architecture train as stacked
groups (:mod:`singledir.training.grouped`, several times the networks per minute of one-by-one training;
``benchmarks/bench_training.py``), which pays for the numbers of networks the claims' rules need. MLPs train
on Fashion-MNIST subsets (w128 ~0.15-0.4 s/epoch on 10k images, w512 ~0.6-2 s/epoch depending on load);
the label-corruption MLPs are the paper's 512 wide but on 5k images (on 10k, reaching 99% on every p took
~390 epochs in all, ~11 minutes on a shared machine), the dropout ones 512 wide on 2k images, the
over-training ones 256 wide for 40 epochs, 28 seeds (paper: 2048, 640 epochs; 28 seeds give the
early-stopping comparison's paired interval the width its -0.01 margin needs), dropout 3 seeds per cell.
The ensemble (160 networks: with rho near 0.1 the interval's upper end then falls below the 0.3 bound)
and the lr x batch-size grid (3 x 3 x 16 seeds = 144) are 128 wide and trained to a common fit, 99% training accuracy,
on 2k images (~33 epochs, ~5-8 s each with its ablation; slow grid cells take longer).
ConvNets are the paper's 11-layer network with ``width_mult=0.125`` (8...64 channels) trained on 1,000
images until 99% training accuracy (at most 80 epochs, so that the ones without batch norm, which need
~52-56, reach it too; ~1.8 s/epoch without and ~2.4 s with batch norm, measured under load), tested on
1,000 test images and analysed on 500 examples with 5 orders. Sizes follow the power each claim's rule
needs (see the claim modules and :mod:`singledir.stats.power`).
"""

from __future__ import annotations

import copy

from singledir.errors import SingledirError
from singledir.reliance.noise import DEFAULT_SCALES

PRESETS = ("smoke", "quick", "paper")

P_GRID = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
NOISE_SCALES = [round(float(v), 6) for v in DEFAULT_SCALES]  # the one default grid: 11 points, 10^-1.5 ... 10^1


def _smoke() -> dict:
    # digits (8x8 images, always available), tiny networks, a few epochs: every code path in seconds
    mlp = dict(dataset="digits", model="mlp", width=32, optimizer="adam", lr=3e-3, batch_size=64, train_subset=500)
    conv = dict(dataset="digits", model="convnet", width_mult=0.0625, optimizer="adam", lr=3e-3,
                batch_size=64, train_subset=300, test_subset=200)
    ablation = dict(examples=300, orders=3, levels=9)
    return {
        "label-corruption": dict(
            train=dict(mlp, width=64, train_subset=300, until_train_acc=0.95, max_epochs=150),
            corrupt=[0.0, 0.5, 1.0], seeds=[0], convnet=None, ablation=dict(ablation, layers="all"),
            noise=dict(examples=300, scales=[0.1, 0.56, 3.16], repeats=2),
        ),
        "ensemble": dict(train=dict(mlp, until_train_acc=0.9, max_epochs=40), seeds=list(range(6)), best_worst=2,
                         ablation=dict(ablation, layers="all")),
        "hyperparameters": dict(train=dict(mlp, until_train_acc=0.9, max_epochs=20), lr=[1e-3, 1e-2],
                                batch_size=[64, 128], seeds=[0, 1],
                                ablation=dict(ablation, layers="all")),
        "training-dynamics": dict(train=dict(mlp, epochs=12, history_every=1), checkpoints=6, seeds=[0, 1],
                                  ablation=dict(ablation, layers="all", split="train")),
        "dropout": dict(train=dict(mlp, width=64, train_subset=300, until_train_acc=0.9, max_epochs=150),
                        dropout=[0.0, 0.2], corrupt=[0.0, 1.0], seeds=[0], levels=11,
                        ablation=dict(examples=300, orders=5, layers="all")),
        "batchnorm": dict(train=dict(conv, epochs=3), seeds=[0, 1],
                          ablation=dict(examples=200, orders=2, levels=5, layers="last3"),
                          selectivity=dict(examples=200, layers="all")),
        "selectivity": dict(mlp=dict(mlp, epochs=5, seed=0), convnet=dict(conv, epochs=3, seed=0, batchnorm=True),
                            importance=dict(examples=200, layers="all", min_units=8)),
    }


def _quick() -> dict:
    base = dict(dataset="fashion-mnist", train_subset=10000, optimizer="adam", lr=1e-3, batch_size=128)
    mlp = dict(base, model="mlp", width=128)
    conv = dict(base, model="convnet", width_mult=0.125, train_subset=1000, test_subset=1000)
    # ConvNets are compared once they fit the data; without batch norm they need ~52-56 epochs (cap 80). One
    # definition for every claim, so the batch-norm ConvNets at p = 0 are shared by three claims (run cache).
    conv_fit = dict(conv, until_train_acc=0.99, max_epochs=80)
    # clean-label MLPs trained to a common fit on 2,000 images (~33 epochs), as networks "trained to convergence"
    mlp_fit = dict(mlp, train_subset=2000, until_train_acc=0.99, max_epochs=300)
    return {
        "label-corruption": dict(
            train=dict(mlp, width=512, train_subset=5000, until_train_acc=0.99, max_epochs=300), corrupt=P_GRID,
            seeds=[0],
            convnet=dict(train=dict(conv_fit, batchnorm=True), corrupt=P_GRID, seeds=[0, 1],  # n = 12
                         ablation=dict(examples=500, orders=5, levels=11, layers="last3")),
            ablation=dict(examples=2000, orders=10, levels=33, layers="all"),
            noise=dict(examples=2000, scales=NOISE_SCALES, repeats=3),
        ),
        "ensemble": dict(train=mlp_fit, seeds=list(range(160)), best_worst=5,
                         ablation=dict(examples=2000, orders=10, levels=33, layers="all")),
        "hyperparameters": dict(train=mlp_fit, lr=[3e-4, 1e-3, 3e-3], batch_size=[32, 128, 512],
                                seeds=list(range(16)), ablation=dict(examples=2000, orders=5, levels=17, layers="all")),
        # the test set every epoch here: the claim reads the lowest test loss over all epochs
        "training-dynamics": dict(train=dict(mlp, width=256, epochs=40, history_every=1), checkpoints=14,
                                  seeds=list(range(28)),
                                  ablation=dict(examples=1000, orders=5, levels=17, layers="all", split="train")),
        "dropout": dict(train=dict(mlp, width=512, train_subset=2000, until_train_acc=0.99, max_epochs=400),
                        dropout=[0.0, 0.1, 0.2, 0.3], corrupt=[0.0, 1.0], seeds=[0, 1, 2], levels=21,
                        ablation=dict(examples=2000, orders=10, layers="all")),
        "batchnorm": dict(train=conv_fit, seeds=[0, 1, 2, 3],
                          ablation=dict(examples=500, orders=5, levels=11, layers="last3"),
                          selectivity=dict(examples=1000, layers="all")),
        "selectivity": dict(mlp=dict(mlp, epochs=10, seed=0), convnet=dict(conv_fit, seed=0, batchnorm=True),
                            importance=dict(examples=1000, layers="all", min_units=20)),
    }


def _paper() -> dict:
    base = dict(dataset="mnist", optimizer="adam", lr=1e-3, batch_size=128)
    mlp = dict(base, model="mlp")
    conv = dict(base, dataset="cifar10", model="convnet", width_mult=1.0, batch_size=128)
    return {
        "label-corruption": dict(
            train=dict(mlp, width=512, until_train_acc=1.0, max_epochs=640), corrupt=P_GRID, seeds=[0, 1],
            convnet=dict(train=dict(conv, until_train_acc=1.0, max_epochs=200), corrupt=P_GRID, seeds=[0],
                         ablation=dict(examples=5000, orders=10, levels=33, layers="last3")),
            ablation=dict(examples=10000, orders=10, levels=65, layers="all"),
            noise=dict(examples=10000, scales=NOISE_SCALES, repeats=5),
        ),
        "ensemble": dict(train=dict(conv, epochs=100), seeds=list(range(200)), best_worst=5,
                         ablation=dict(examples=5000, orders=10, levels=33, layers="last3")),
        "hyperparameters": dict(train=dict(mlp, width=512, epochs=100), lr=[1e-4, 3e-4, 1e-3, 3e-3],
                                batch_size=[32, 64, 128, 256, 512], seeds=[0, 1, 2],
                                ablation=dict(examples=10000, orders=10, levels=33, layers="all")),
        "training-dynamics": dict(train=dict(mlp, width=2048, epochs=640), checkpoints=30, seeds=[0, 1, 2],
                                  ablation=dict(examples=10000, orders=10, levels=33, layers="all",
                                                split="train")),
        "dropout": dict(train=dict(mlp, width=2048, until_train_acc=1.0, max_epochs=5000),
                        dropout=[0.0, 0.1, 0.2, 0.3], corrupt=[0.0, 1.0], seeds=[0, 1], levels=41,
                        ablation=dict(examples=10000, orders=10, layers="all")),
        "batchnorm": dict(train=dict(conv, epochs=100), seeds=list(range(5)),
                          ablation=dict(examples=5000, orders=10, levels=33, layers="last3"),
                          selectivity=dict(examples=10000, layers="all")),
        "selectivity": dict(mlp=dict(mlp, width=128, epochs=640, seed=0), convnet=dict(conv, epochs=100, seed=0, batchnorm=True),
                            importance=dict(examples=10000, layers="all", min_units=20)),
    }


_BUILDERS = {"smoke": _smoke, "quick": _quick, "paper": _paper}

#: What each preset scales down, printed at the top of the report.
NOTES = {
    "smoke": "Smoke test only: the digits dataset (8x8 images), tiny networks, a few epochs and few networks "
             "per claim. Verdicts from this preset are not evidence about the paper.",
    "quick": "Scaled down to fit ~20 minutes on 2 CPU cores: Fashion-MNIST instead of MNIST/CIFAR-10; MLPs on "
             "training subsets of 5,000 (label corruption), 2,000 (dropout; ensemble and grid, trained to a "
             "common 99% training accuracy) or 10,000 images (over-training, selectivity) at width 512 (label "
             "corruption, dropout), 256 (over-training, 40 epochs) or 128 (ensemble, grid, "
             "selectivity); the paper uses 128-2048 units and 640 epochs; ConvNets are the paper's 11-layer "
             "network with 1/8 of its channels (8-64), trained on 1,000 images, tested on 1,000, until 99% "
             "training accuracy (at most 80 epochs); 160 networks in the ensemble instead of 200, 144 in the "
             "lr x batch-size grid (16 seeds per cell), 28 seeds over training, 3 per dropout setting, 2 ConvNets "
             "per corruption level, 4 per batch-norm condition; ablation curves on 2,000 examples (MLPs; "
             "1,000 over training) or 500 (ConvNets) with an even grid of levels and 10 (MLP) or 5 (ConvNet, "
             "over-training, grid) random orders.",
    "paper": "The paper's sizes: MNIST MLPs of width 512/2048 for up to 640 (5000 with dropout) epochs, 200 "
             "CIFAR-10 ConvNets at full width for 100 epochs. Meant for a GPU or a long CPU run.",
}

# datasets whose examples are images (ConvNets need them)
IMAGE_DATASETS = ("fashion-mnist", "mnist", "cifar10", "digits")


def get_preset(name: str, dataset: str | None = None) -> dict:
    """The settings of preset ``name`` per claim; ``dataset`` replaces every network's dataset.

    With a non-image ``dataset`` (mnist1d) the ConvNet parts are dropped and the batchnorm claim is
    skipped. Subsets larger than the dataset are capped by :func:`singledir.experiments.reproduce`.
    """
    if name not in _BUILDERS:
        raise SingledirError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    preset = copy.deepcopy(_BUILDERS[name]())
    if dataset is not None:
        from singledir.data import DATASETS

        if dataset not in DATASETS:
            raise SingledirError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        _set_dataset(preset, dataset)
        if dataset not in IMAGE_DATASETS:  # the ConvNets need images
            preset["label-corruption"]["convnet"] = None
            preset["selectivity"]["convnet"] = None
            preset["batchnorm"]["skip"] = f"the ConvNets of this claim need image inputs; {dataset} is not images"
    return preset


def shift_seeds(settings: dict, offset: int) -> dict:
    """A copy of ``settings`` with every network's seed shifted by ``offset``: each ``seeds`` list and each
    training dict's ``seed`` (a training dict without one gets ``offset``, its default seed 0 shifted).

    Only the seeds move (weight init, shuffling, dropout and the label corruption that follows the seed);
    the training subsets (``data_seed``) and the evaluation subsets stay the same.
    """
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise SingledirError(f"seed offset must be a non-negative integer, got {offset!r}")
    out = copy.deepcopy(settings)

    def walk(obj):
        if isinstance(obj, dict):
            if "seeds" in obj:
                obj["seeds"] = [int(s) + offset for s in obj["seeds"]]
            if "model" in obj and "dataset" in obj:
                obj["seed"] = int(obj.get("seed", 0)) + offset
            for k, v in obj.items():
                if k != "seeds":
                    walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    if offset:
        walk(out)
    return out


def training_dicts(obj) -> list[dict]:
    """Every training dict in a (part of a) preset -- a dict with both ``model`` and ``dataset``."""
    out = []
    if isinstance(obj, dict):
        if "model" in obj and "dataset" in obj:
            out.append(obj)
        for v in obj.values():
            out.extend(training_dicts(v))
    elif isinstance(obj, list):
        for v in obj:
            out.extend(training_dicts(v))
    return out


def _set_dataset(obj, dataset: str) -> None:
    """Replace ``dataset`` in every training dict (recursively); a dict with a ``model`` key is one."""
    if isinstance(obj, dict):
        if "model" in obj and "dataset" in obj:
            obj["dataset"] = dataset
        for v in obj.values():
            _set_dataset(v, dataset)
    elif isinstance(obj, list):
        for v in obj:
            _set_dataset(v, dataset)
