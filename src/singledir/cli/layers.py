"""``singledir layers RUN_DIR``: list a run's unit layers (dotted name, units, output shape per example).

The shapes come from forward hooks on one all-zeros example through the run's architecture (rebuilt from
its config.json), so this works without the dataset and also for an interrupted run; config.json is
first checked against the saved weights (a config that does not describe them is a one-line error).
"""

from __future__ import annotations

import json

import torch


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "layers",
        help="list a run's unit layers",
        description=(
            "Print the unit layers of a run's model: the dotted module name to pass as a layer, the number "
            "of units (dim 1 of its output) and the output shape for one example."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by `singledir train`")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=run)


def layer_table(model, input_shape) -> list[dict]:
    """[{layer, units, shape}] for each of ``model.unit_layers`` from a forward pass on one zero example."""
    from singledir.models import unit_layers

    names = unit_layers(model)
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        model.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape[1:]))
        )
        for n in names
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros((1, *input_shape)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [{"layer": n, "units": shapes[n][0], "shape": list(shapes[n])} for n in names]


def run(args) -> int:
    from singledir.training.rundir import build_from_config, check_weights, read_config

    config = read_config(args.run_dir)
    check_weights(args.run_dir, config)
    model = build_from_config(config)
    rows = layer_table(model, tuple(config["model_config"]["input_shape"]))
    if args.json:
        print(json.dumps(rows))
        return 0
    w = max([len("layer")] + [len(r["layer"]) for r in rows])
    print(f"{'layer':<{w}}  {'units':>6}  shape")
    for r in rows:
        print(f"{r['layer']:<{w}}  {r['units']:>6}  ({', '.join(map(str, r['shape']))}{',' if len(r['shape']) == 1 else ''})")
    print(f"{sum(r['units'] for r in rows)} units in {len(rows)} layers ({config['model']}, {config['dataset']})")
    return 0
