"""``singledir train``: train one model into a run directory (resumable, deterministic on the CPU).

With ``--resume RUN_DIR`` every setting comes from ``RUN_DIR/config.json``; training flags may still be
given, but each must equal the run's setting (otherwise it is an error, so a resumed run never silently
differs from what its flags say) -- except ``--data-dir``, ``--device`` and ``--eval-batch-size``, which do
not change the weights and may point somewhere new (the data are checked against the run's fingerprint). ``--quiet``, ``--threads`` and ``--out`` (which must then name RUN_DIR)
are allowed. Identical weights are guaranteed for identical settings on the same machine with the same
number of threads (config.json records it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from singledir.errors import SingledirError

# (flag, TrainConfig field, type, help)
_SETTINGS = [
    ("--dataset", "dataset", str, "dataset name: fashion-mnist (default), digits, mnist1d, mnist, cifar10"),
    ("--data-dir", "data_dir", str, "folder holding the dataset files (default: the data module's search path)"),
    ("--train-subset", "train_subset", int, "train on a random subset of N training examples"),
    ("--test-subset", "test_subset", int, "evaluate on a subset of N test examples (if the data module supports it)"),
    ("--data-seed", "data_seed", int, "seed that picks the training subset (default 0, independent of --seed)"),
    ("--corrupt", "corrupt", float, "fraction p in [0, 1] of training labels to corrupt (default 0)"),
    ("--corrupt-method", "corrupt_method", str, "shuffle (permute a p-fraction among themselves; default) or uniform"),
    ("--corrupt-seed", "corrupt_seed", int, "seed of the label corruption (default: --seed)"),
    ("--seed", "seed", int, "run seed: initial weights, shuffling, dropout (default 0)"),
    ("--model", "model", str, "model: mlp (default), convnet, resnet"),
    ("--width", "width", int, "MLP hidden units per layer (default 128)"),
    ("--depth", "depth", int, "MLP hidden layers (default 2)"),
    ("--width-mult", "width_mult", float, "channel multiplier for convnet/resnet (default 1.0)"),
    ("--dropout", "dropout", float, "dropout probability after each hidden ReLU (MLP; default 0)"),
    ("--optimizer", "optimizer", str, "adam (default) or sgd"),
    ("--lr", "lr", float, "learning rate (default 1e-3)"),
    ("--momentum", "momentum", float, "SGD momentum (default 0.9)"),
    ("--weight-decay", "weight_decay", float, "L2 weight decay (default 0)"),
    ("--batch-size", "batch_size", int, "training batch size (default 128)"),
    ("--eval-batch-size", "eval_batch_size", int, "evaluation batch size (default 2048 for mlp, 500 otherwise)"),
    ("--epochs", "epochs", int, "train exactly N epochs (default 20 unless --until-train-acc)"),
    (
        "--until-train-acc",
        "until_train_acc",
        float,
        "stop at the first epoch whose accuracy on the training labels (corrupted ones included) is >= A",
    ),
    ("--max-epochs", "max_epochs", int, "epoch cap for --until-train-acc (default 1000)"),
    (
        "--checkpoints",
        "checkpoints",
        str,
        "save weights at these epochs: a comma list (1,5,10) or 'log' (1,2,3,5,8,13,...); epoch 0 is added",
    ),
    ("--device", "device", str, "cpu (default) or cuda"),
]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model into a run directory",
        description=(
            "Train a model (optionally on corrupted labels) and write a run directory: config.json, "
            "history.csv, checkpoints, model.safetensors, corruption record, resume state. Deterministic on "
            "the CPU; Ctrl-C leaves a run that --resume finishes with exactly the uninterrupted weights. "
            "With --resume, settings come from the run's config.json and any training flag given must match it "
            "(except --data-dir, --device, --eval-batch-size)."
        ),
    )
    for flag, dest, typ, help_ in _SETTINGS:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    p.add_argument(
        "--batchnorm",
        dest="batchnorm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="batch norm after each layer (default: the model's own, off for mlp, on for convnet/resnet)",
    )
    p.add_argument("--out", type=Path, default=None, help="run directory to create (required unless --resume)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory at --out")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own); 1 is fastest for small MLPs on a busy machine",
    )
    p.set_defaults(func=run)


def _given(args) -> dict:
    names = [dest for _, dest, _, _ in _SETTINGS] + ["batchnorm"]
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


# (flag, field, when it is ignored, why) -- a flag the training would ignore is an error, not a silent no-op
_IGNORED = [
    ("--width", "width", lambda c: c.model != "mlp", "applies only to --model mlp (use --width-mult)"),
    ("--width-mult", "width_mult", lambda c: c.model == "mlp", "applies only to convnet/resnet (use --width)"),
    ("--momentum", "momentum", lambda c: c.optimizer != "sgd", "applies only to --optimizer sgd"),
    ("--max-epochs", "max_epochs", lambda c: c.until_train_acc is None,
     "caps --until-train-acc only (use --epochs N for a fixed length)"),
    ("--corrupt-method", "corrupt_method", lambda c: c.corrupt == 0, "has no effect without --corrupt P > 0"),
    ("--corrupt-seed", "corrupt_seed", lambda c: c.corrupt == 0, "has no effect without --corrupt P > 0"),
]


def check_no_ignored_flags(given: dict, config) -> None:
    """One-line error for a flag that the run's other settings make meaningless (it would be ignored)."""
    for flag, field, ignored, why in _IGNORED:
        if field in given and ignored(config):
            raise SingledirError(f"{flag} {given[field]} {why}; drop it")


def run(args) -> int:
    from singledir.cli.outputs import check_out
    from singledir.training import TrainConfig, train
    from singledir.training.rundir import read_config

    given = _given(args)
    if args.threads is not None:
        if args.threads < 1:
            raise SingledirError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.resume is not None:  # train() refuses resume together with overwrite
        out = check_out(args.resume, "--resume")
        if args.out is not None and Path(args.out).resolve() != Path(out).resolve():
            raise SingledirError(f"--out {args.out} differs from --resume {out}; a run resumes in its own directory")
        config = None
        if given:
            stored = TrainConfig.from_dict(read_config(out), strict=False).to_dict()
            config = {**stored, **given}
        resume = True
    else:
        if args.out is None:
            raise SingledirError("pass --out RUN_DIR (or --resume RUN_DIR to continue an interrupted run)")
        out = check_out(args.out)
        config = TrainConfig.from_dict(given)
        check_no_ignored_flags(given, config)
        resume = False
    try:
        result = train(config, out, overwrite=args.overwrite, resume=resume, progress=not args.quiet)
    except KeyboardInterrupt:
        if (Path(out) / "config.json").is_file():
            print(f"singledir: continue this run with: singledir train --resume {out}", file=sys.stderr)
        raise
    f = result.final
    print(
        f"trained {f['epoch']} epochs (stopped: {f['stopped_reason']}); "
        f"train acc {f['train_acc']:.4f} (on the run's training labels), test acc {f['test_acc']:.4f}; "
        f"{time.perf_counter() - t0:.1f} s; run dir {result.run_dir}"
    )
    return 0
