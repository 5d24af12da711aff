"""``singledir measures RUN_DIR``: every generalization measure of one trained network, as a table.

Prints one row per measure (raw value, the complexity it enters the zoo as, seconds, and why it is
missing when it is); ``--json FILE`` also writes the table (atomically, under FILE's writer lock).
``--data-dir`` points the run at its data when they moved (the fingerprint is still checked).
"""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "measures",
        help="compute the generalization measures of one run directory",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by `singledir train`")
    p.add_argument("--only", default=None, help="comma list of measures (default: all)")
    p.add_argument("--device", default="cpu", help="device: cpu (default), cuda or cuda:N")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where the run's dataset files are now, if they moved (default: the run's data_dir)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON records")
    p.set_defaults(func=run)


def run(args) -> int:
    import contextlib
    from pathlib import Path

    import pandas as pd

    from singledir.cli.outputs import check_out
    from singledir.devices import resolve_device
    from singledir.experiments.leases import writer_lock
    from singledir.io import atomic_write_json, jsonable
    from singledir.measures import initial_model, measure_all
    from singledir.training import load_run

    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    dev = resolve_device(args.device)
    path = check_out(args.json, "--json", folder=False) if args.json else None
    with writer_lock(path, "file") if path else contextlib.nullcontext():  # before the work: one writer
        run = load_run(Path(args.run_dir).absolute(), device=dev, data_dir=args.data_dir)
        ds = run.data
        df = measure_all(run.model, (ds.x_train, ds.y_train), init_model=initial_model(run.run_dir), names=names)
        with pd.option_context("display.width", 160, "display.max_colwidth", 70, "display.max_rows", 100):
            print(df[["name", "raw", "complexity", "seconds", "error"]].to_string(index=False))
        if path:
            atomic_write_json(path, jsonable(df.to_dict("records")))
    return 0
