#!/usr/bin/env python
"""Training throughput: networks per minute one by one (the reference loop, as on main) vs grouped, in ONE run.

For the quick preset's settings (taken from :func:`singledir.experiments.presets.get_preset`, so they
follow the preset):

- ``ensemble``   the ensemble MLPs (784-128-128-10, 2,000 images, batch 128, until 99% training accuracy)
- ``grid-b32``   the hyperparameter grid's batch-32 cell (the same MLPs, batch 32, lr 1e-3)
- ``corrupt-w512``  the label-corruption MLPs (width 512, 5,000 images, one per corruption level p =
                 0 ... 1); trained ``--corrupt-epochs`` epochs each (default 5): to 99% the p = 1 ones
                 need ~100-300 epochs, too long for a benchmark
- ``convnet``    the 1/8-width 11-layer ConvNet with batch norm (1,000 images), ``--conv-epochs`` epochs

One by one = ``singledir.training.train`` with ``engine="reference", history_every=1``: torch.optim,
training and test set evaluated after every epoch -- the path every run took before grouped training.
Grouped = :func:`singledir.training.grouped.train_group` on groups of ``--group`` networks (the runner's
groups are up to 32). The two are interleaved: ``--single`` rounds of one network one by one, then one
group, so that both see the same load, test set every ``history_every`` epochs (default 10). ConvNets are not stacked (see
benchmarks/README.md for the grouped-convolution measurement); their grouped column is the same
one-by-one path, so the ratio is ~1 by construction and printed for completeness.

Each setting prints ``SETTING: one-by-one X/min, grouped Y/min, ratio Zx`` and then checks that the
networks both ways trained to the same accuracies: for the seeds trained both ways, final test accuracy
within ``--tol`` (default 0.02) for each network, and the mean difference within ``--tol / 2`` (the two
engines share initial weights and data order; their arithmetic differs in the last bits, which grows to
~0.01 in accuracy over tens of epochs, and a until-99% network may stop an epoch earlier or later).
Exit status 1 if any check fails.

Usage::

    .venv/bin/python benchmarks/bench_training.py                  # ~5-8 min on 2 busy cores
    .venv/bin/python benchmarks/bench_training.py --quick          # ~2 min: fewer networks, no ConvNet
    .venv/bin/python benchmarks/bench_training.py --settings ensemble,grid-b32 --json out.json
    .venv/bin/python benchmarks/bench_training.py --single-threads 1   # the one-by-one path on 1 thread
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from singledir.experiments.presets import get_preset
from singledir.training import train
from singledir.training.grouped import train_group

SETTINGS = ("ensemble", "grid-b32", "corrupt-w512", "convnet")


def _configs(setting: str, n: int, args) -> list[dict]:
    """``n`` training configs of ``setting`` (seeds 0..n-1, or one per corruption level)."""
    p = get_preset("quick")
    if setting == "ensemble":
        return [dict(p["ensemble"]["train"], seed=s) for s in range(n)]
    if setting == "grid-b32":
        return [dict(p["hyperparameters"]["train"], batch_size=32, lr=1e-3, seed=s) for s in range(n)]
    if setting == "corrupt-w512":
        lc = p["label-corruption"]
        base = {k: v for k, v in lc["train"].items() if k not in ("until_train_acc", "max_epochs")}
        levels = lc["corrupt"]
        return [dict(base, epochs=args.corrupt_epochs, corrupt=levels[i % len(levels)], seed=i // len(levels))
                for i in range(n)]
    if setting == "convnet":
        conv = p["label-corruption"]["convnet"]["train"]
        base = {k: v for k, v in conv.items() if k not in ("until_train_acc", "max_epochs")}
        return [dict(base, epochs=args.conv_epochs, seed=s) for s in range(n)]
    raise SystemExit(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")


def _one_by_one(config: dict, out: Path, threads: int | None = None) -> dict:
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return train(dict(config, engine="reference", history_every=1), out, progress=False).final
    finally:
        torch.set_num_threads(before)


def _grouped(configs: list[dict], root: Path, setting: str, first: int) -> list[dict]:
    outs = [root / f"grp{first + i}" for i in range(len(configs))]
    if setting == "convnet":  # ConvNets are not stacked: the runner trains them one by one
        return [train(c, o, progress=False).final for c, o in zip(configs, outs)]
    return [r.final for r in train_group(configs, outs, progress=False)]


def _interleaved(setting: str, configs: list[dict], n_single: int, n_group: int, root: Path, threads=None):
    """``n_single`` rounds, each one network one by one and then one group of ``n_group`` (load drifts on
    these shared machines: interleaving puts both paths under the same load). Network ``i`` one by one has
    the config of grouped network ``i`` (both in the first round), so their accuracies can be compared."""
    t_single = t_group = 0.0
    f_single, f_group = [], []
    for r in range(n_single):
        t0 = time.perf_counter()
        f_single.append(_one_by_one(configs[r], root / f"ref{r}", threads))
        t1 = time.perf_counter()
        f_group += _grouped(configs[r * n_group:(r + 1) * n_group], root, setting, r * n_group)
        t2 = time.perf_counter()
        t_single += t1 - t0
        t_group += t2 - t1
    return t_single, f_single, t_group, f_group


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma list of " + ", ".join(SETTINGS))
    ap.add_argument("--single", type=int, default=2,
                    help="rounds per setting, each one network one by one then one group (default 2)")
    ap.add_argument("--group", type=int, default=16, help="networks per group (default 16)")
    ap.add_argument("--corrupt-epochs", type=int, default=5)
    ap.add_argument("--conv-epochs", type=int, default=2)
    ap.add_argument("--single-threads", type=int, default=None,
                    help="torch threads for the one-by-one path only (default: torch's default, as the grouped path)")
    ap.add_argument("--tol", type=float, default=0.02, help="per-network test-accuracy tolerance (default 0.02)")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 1 one-by-one and 8 grouped networks, no ConvNet")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    if args.quick:
        args.single, args.group = 2, 8
        settings = [s for s in settings if s != "convnet"]
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (default), {os.cpu_count()} CPUs, "
          f"{platform.machine()}; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    results, ok = [], True
    with tempfile.TemporaryDirectory(prefix="bench_training-") as tmp:
        root = Path(tmp)
        # warm-up: the data files are read and cached once, outside the timings
        train(dict(_configs("ensemble", 1, args)[0], until_train_acc=None, max_epochs=1000, epochs=1),
              root / "warm", progress=False)
        for setting in settings:
            n_single = 1 if setting == "convnet" else args.single
            n_group = 2 if setting == "convnet" else args.group
            if setting == "corrupt-w512":
                n_group = max(6, n_group // 4)  # the claim's 6 levels (x seeds); 512 wide
            configs = _configs(setting, max(n_single, n_group) * n_single, args)
            t_single, f_single, t_group, f_group = _interleaved(setting, configs, n_single, n_group, root / setting,
                                                                args.single_threads)
            rate_s, rate_g = 60 * n_single / t_single, 60 * len(f_group) / t_group
            ratio = rate_g / rate_s
            print(f"{setting}: one-by-one {rate_s:.2f}/min, grouped {rate_g:.2f}/min, ratio {ratio:.2f}x "
                  f"({n_single} networks in {t_single:.1f} s, {len(f_group)} in {t_group:.1f} s; interleaved in "
                  f"{n_single} rounds)", flush=True)
            diffs = [g["test_acc"] - s["test_acc"] for s, g in zip(f_single, f_group)]
            epochs = [(s["epoch"], g["epoch"]) for s, g in zip(f_single, f_group)]
            worst = max(abs(x) for x in diffs)
            mean = sum(diffs) / len(diffs)
            good = worst <= args.tol and abs(mean) <= args.tol / 2
            ok &= good
            print(f"  check: final test accuracy grouped - one-by-one per network "
                  f"{', '.join(f'{x:+.4f}' for x in diffs)} (epochs {epochs}); max |diff| {worst:.4f} "
                  f"<= {args.tol}, mean {mean:+.4f}: {'OK' if good else 'FAILED'}", flush=True)
            results.append({"setting": setting, "single": n_single, "grouped": len(f_group), "single_s": t_single,
                            "grouped_s": t_group, "single_per_min": rate_s, "grouped_per_min": rate_g,
                            "ratio": ratio, "test_acc_diffs": diffs, "epochs": epochs, "check_ok": good})
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; checks {'passed' if ok else 'FAILED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
