"""``singledir zoo``: train a grid of models, compute every generalization measure, score and report them.

Writes ``OUT/models.parquet`` (one row per model: axes, seed, accuracies, gap, converged, each measure as
a complexity and its raw value), ``OUT/scores.json`` (Kendall tau + CI, granulated psi, PGDL CMI,
robust sign-error per measure), ``OUT/index.html`` and ``OUT/report.md``. Runs are cached in
``OUT/runs``: re-running with the same ``--out`` resumes a killed zoo. One ``zoo`` writes a folder at a
time: a second one on the same ``--out`` waits for the first, then finishes from its cached runs.
"""

from __future__ import annotations

import os

from singledir.cli.argtypes import int_at_least
from singledir.cli.backend import add_backend_arguments, check_backend


def add_parser(subparsers) -> None:
    from singledir.zoo.grid import PRESETS

    p = subparsers.add_parser(
        "zoo",
        help="benchmark generalization measures (reliance and the published ones) on a model zoo",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--preset", default="quick",
                   help=f"zoo preset: {', '.join(PRESETS)} (default quick: 128 MLPs, <= 20 min on 2 CPU cores; "
                        f"smoke: seconds; paper: thousands of models, for a GPU or a cluster)")
    p.add_argument("--dataset", default=None, help="replace the preset's dataset (fashion-mnist, mnist, digits, mnist1d)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    p.add_argument("--jobs", default=None, type=int_at_least(1, "--jobs"),
                   help="models trained / measured in parallel processes (default: the number of CPUs, at most 8)")
    p.add_argument("--device", default="cpu", help="device: cpu (default), cuda or cuda:N")
    add_backend_arguments(p)
    p.add_argument("--out", required=True, help="zoo folder (runs cached in OUT/runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from singledir.cli.outputs import check_out
    from singledir.cli.reproduce import default_jobs
    from singledir.experiments.leases import writer_lock
    from singledir.io import remove_temp_files
    from singledir.zoo.bench import run_zoo
    from singledir.zoo.grid import get_preset
    from singledir.zoo.report import leaderboard

    from singledir.data import load_dataset

    preset = get_preset(args.preset)  # an unknown preset fails before any work (an unknown dataset too, in TrainConfig)
    check_out(args.out)
    load_dataset(args.dataset or preset.dataset, data_dir=args.data_dir)  # missing data: an error before any file
    check_backend(args)
    jobs = args.jobs or default_jobs(args.device)
    with writer_lock(args.out, "zoo folder", wait=True):
        remove_temp_files(args.out)  # of killed writers: the one writer of this folder now is us
        doc = run_zoo(args.out, args.preset, dataset=args.dataset, data_dir=args.data_dir, jobs=jobs,
                      device=args.device, progress=not args.quiet, backend=args.backend,
                      address=args.address)
    print(f"\nsingledir zoo ({doc['preset']}): {doc['n_converged']}/{doc['n_models']} models converged, "
          f"{doc['wall_seconds']:.0f} s wall")
    board = leaderboard(doc)
    if board.empty:
        print(f"no scores: {doc.get('score_error')}")
    for r in board.itertuples():
        mark = " *" if r.reliance else ""
        cmi = "n/a" if r.cmi_x100 is None or r.cmi_x100 != r.cmi_x100 else f"{r.cmi_x100:.2f}"
        psi = "n/a" if r.psi is None else f"{r.psi:+.3f}"
        tau = "n/a" if r.kendall_tau is None else f"{r.kendall_tau:+.3f}"
        print(f"  {r.rank:>2}. {r.measure:<27} psi {psi}  tau {tau} {r.tau_ci:<14} CMI {cmi}{mark}")
    print(f"report: {os.path.join(args.out, 'index.html')}")
    return 0
