"""``singledir measures RUN_DIR``: every generalization measure of one trained network, as a table.

Prints one row per measure (raw value, the complexity it enters the zoo as, seconds, and why it is
missing when it is); ``--json FILE`` also writes the table.
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
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device (default cpu)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON records")
    p.set_defaults(func=run)


def run(args) -> int:
    import pandas as pd

    from singledir.io import atomic_write_json, jsonable
    from singledir.measures import measure_run

    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    df = measure_run(args.run_dir, names=names, device=args.device)
    with pd.option_context("display.width", 160, "display.max_colwidth", 70, "display.max_rows", 100):
        print(df[["name", "raw", "complexity", "seconds", "error"]].to_string(index=False))
    if args.json:
        atomic_write_json(args.json, jsonable(df.to_dict("records")))
    return 0
