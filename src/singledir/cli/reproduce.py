"""``singledir reproduce``: reproduce the paper's claims with one command and write a report.

Trains (or reuses from ``OUT/runs``) every network a claim needs, analyses them, computes each claim's
verdict from a pre-declared statistical rule and writes ``OUT/index.html``, ``OUT/report.md``,
``OUT/results.json`` and ``OUT/figures/``. Re-running with the same ``--out`` reuses finished runs and
analyses and redoes only what is missing or was interrupted. One ``reproduce`` writes a report folder at
a time: a second one started on the same ``--out`` waits for the first (printing whom it waits for) and
then finishes from the first one's cached runs and analyses.
"""

from __future__ import annotations

import os
import shlex
import sys

from singledir.cli.argtypes import int_at_least
from singledir.cli.backend import add_backend_arguments, check_backend


def add_parser(subparsers) -> None:
    from singledir.experiments import CLAIMS
    from singledir.experiments.presets import PRESETS

    p = subparsers.add_parser(
        "reproduce",
        help="reproduce the paper's claims and write a report (html, md, json)",
        description=__doc__.split("\n\n")[0] + " Claims: " + ", ".join(CLAIMS) + ".",
    )
    p.add_argument("claims", nargs="*", metavar="CLAIM",
                   help=f"claims to run (default: all): {', '.join(CLAIMS)}; opt-in: transformer")
    p.add_argument("--preset", default="quick",
                   help=f"settings preset: {', '.join(PRESETS)} (default quick: ~20 min on 2 CPU cores; "
                        f"smoke: seconds, for tests; paper: the paper's sizes, for a GPU or a long run)")
    p.add_argument("--dataset", default=None,
                   help="replace every network's dataset: fashion-mnist, mnist, cifar10, digits, mnist1d "
                        "(default: the preset's)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    p.add_argument("--device", default="cpu", help="device to train and analyse on: cpu (default), cuda or cuda:N")
    p.add_argument("--jobs", default=None, type=_jobs,
                   help="train/analyse N independent runs in parallel processes (default: the number of CPUs, "
                        "at most 8; 1 = everything in this process)")
    add_backend_arguments(p)
    p.add_argument("--seed-offset", default=0, type=int_at_least(0, "--seed-offset"),
                   help="add K to every network's seed (default 0), to check that verdicts survive another seed set")
    p.add_argument("--out", required=True, help="report folder (runs are cached in OUT/runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


_jobs = int_at_least(1, "--jobs")


def default_jobs(device: str) -> int:
    if device == "cuda":
        return 1
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def run(args) -> int:
    from singledir.cli.outputs import check_out
    from singledir.experiments.leases import writer_lock
    from singledir.io import remove_temp_files
    from singledir.experiments.reproduce import reproduce  # checks claims, preset and dataset names

    check_out(args.out)
    check_backend(args)
    jobs = args.jobs or default_jobs(args.device)
    command = "singledir reproduce " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 1 and sys.argv[1] == "reproduce" else \
        f"singledir reproduce {' '.join(args.claims)} --preset {args.preset} --out {args.out}".replace("  ", " ")
    with writer_lock(args.out, "report folder", wait=True):
        remove_temp_files(args.out)  # of killed writers: the one writer of this folder now is us
        doc = reproduce(args.out, args.claims, preset=args.preset, dataset=args.dataset, data_dir=args.data_dir,
                        device=args.device, jobs=jobs, progress=not args.quiet, command=command,
                        backend=args.backend, address=args.address, seed_offset=args.seed_offset)
    print(f"\nsingledir reproduce ({args.preset}): {doc['wall_seconds']:.0f} s wall, {doc['cpu_seconds']:.0f} s CPU")
    for s in doc["summary"]:
        print(f"  {s['claim']:<18} {s['verdict']:<15} {s['wall_seconds']:>6.0f} s wall {s['cpu_seconds']:>6.0f} s CPU  "
              f"{s['key_statistic']}")
    print(f"report: {os.path.join(args.out, 'index.html')}")
    return 1 if doc.get("errors") else 0

