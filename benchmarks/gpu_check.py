"""GPU check: fast path == hook path == reference on CUDA, engine vs reference timings, paper-preset cost.

At most ~3 minutes on one GPU. Three parts, printed as they finish and written as JSON (``--json``):

1. **Equality on the device** for the MLP, the 11-layer ConvNet and the ResNet (seeded random weights,
   seeded Gaussian inputs, labels from the model's own clean predictions so accuracies are not at
   chance): a cumulative random-order ablation curve, noise curves (3 scales x 2 repeats) and the
   single-unit importance of the last analysed layer (``--tiny``: the MLP's only), by ``method="fast"``, ``"hooks"`` and
   ``"reference"``. Per level, the number of examples whose prediction differs from the reference is
   counted (from the accuracies); different kernels round differently, so up to ``--max-flips`` (default
   1) examples per level may differ -- a near-tie of two logits, as seen once on the CPU -- and losses
   must agree within 1e-4 (relative). Anything more makes the script exit 1; the counts are printed.
2. **Timings**: the full curve (every level) of the benchmark's MLP (784-128-128-10, 10k examples) and of
   the ConvNet's last unit layer, engine (fast) vs reference, best of ``--repeats`` after a warm-up, with
   ``torch.cuda.synchronize``.
3. **Paper preset, label corruption, per MLP network** (784-512-512-10 on 60k MNIST-sized images, Adam,
   batch 128): seconds per training epoch (including the per-epoch evaluation of the train and test
   sets, as the training loop does) and for the per-run analyses (ablation: 10k examples, 10 orders, 65
   levels; noise: 11 scales x 5 repeats), extrapolated to the preset's epoch cap (640) and to the 12
   networks of the claim. Synthetic data of MNIST's shape: the cost does not depend on the pixel values.

``--device cpu --tiny`` runs the same code at toy sizes (~30 s on 2 CPU cores; ``tests/test_gpu_check.py``
runs it in the test suite), to check the script itself where there is no GPU; without ``--device cpu``, a machine without CUDA gets a one-line message and
exit status 2.

Usage::

    python benchmarks/gpu_check.py                      # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --tiny  # anywhere, to check the script
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import singledir as sd  # noqa: E402
from singledir.models import build_model, unit_counts  # noqa: E402

METHODS = ("fast", "hooks", "reference")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def make_data(model, shape, n: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded Gaussian inputs and labels = the model's clean predictions with 20% replaced at random."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g).to(device)
    with torch.no_grad():
        y = torch.cat([model(x[i:i + 512]).argmax(1) for i in range(0, n, 512)])
    flip = torch.rand(n, generator=g).to(device) < 0.2
    y = torch.where(flip, torch.randint(0, 10, (n,), generator=g).to(device), y)
    return x, y


# ---------------------------------------------------------------------------- 1. equality
def check_equality(name: str, model, x, y, layers, levels, args, device) -> dict:
    curves = {}
    for method in METHODS:
        res = sd.ablation_curves(model, (x, y), layers, repeats=1, levels=levels, seed=0, progress=False,
                                 method=method)
        curves[method] = res.curves.sort_values("k").reset_index(drop=True)
    ref = curves["reference"]
    n = len(y)
    out = {"model": name, "examples": n, "levels": len(ref), "layers": layers}
    ok = True
    for method in ("fast", "hooks"):
        c = curves[method]
        diff_examples = ((c["accuracy"] - ref["accuracy"]).abs() * n).round().astype(int)
        loss_rel = ((c["loss"] - ref["loss"]).abs() / ref["loss"].abs().clip(lower=1e-12)).max()
        out[method] = {"levels_differing": int((diff_examples > 0).sum()), "max_examples_differing":
                       int(diff_examples.max()), "max_loss_rel_diff": float(loss_rel)}
        ok &= bool(loss_rel < 1e-4)
    for method in ("fast", "hooks"):
        ok &= out[method]["max_examples_differing"] <= args.max_flips
    # noise curves and single-unit importance by every path, on the device
    kw = dict(scales=[0.3, 1.0, 3.0], repeats=2, seed=0, progress=False)
    noise = {m: sd.noise_curves(model, (x, y), layers, method=m, **kw).curves for m in METHODS}
    # importance: every model on a GPU; with --tiny the MLP only (the reference runs the net once per unit)
    with_imp = not args.tiny or name == "mlp"
    imp = {m: sd.unit_importance(model, (x, y), layers[-1:], progress=False, method=m) for m in METHODS} if with_imp else None
    for method in ("fast", "hooks"):
        nd = ((noise[method]["accuracy"] - noise["reference"]["accuracy"]).abs() * n).round().astype(int)
        nl = ((noise[method]["loss"] - noise["reference"]["loss"]).abs()
              / noise["reference"]["loss"].abs().clip(lower=1e-12)).max()
        idd = ((imp[method]["accuracy_drop"] - imp["reference"]["accuracy_drop"]).abs() * n).round().astype(int) if imp \
            else np.zeros(1, dtype=int)
        out[method].update({"noise_max_examples_differing": int(nd.max()), "noise_max_loss_rel_diff": float(nl),
                            "importance_max_examples_differing": int(idd.max())})
        ok &= bool(nl < 1e-4) and int(nd.max()) <= args.max_flips and int(idd.max()) <= args.max_flips
    out["equal"] = ok
    return out


# ---------------------------------------------------------------------------- 2. timings
def time_curve(model, x, y, layers, levels, args, device) -> dict:
    times = {}
    for method in ("fast", "reference"):
        sd.ablation_curves(model, (x[:100], y[:100]), layers, repeats=1, levels=levels[:3], progress=False,
                           method=method)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            best = min(best, timed(lambda: sd.ablation_curves(model, (x, y), layers, repeats=1, levels=levels,
                                                              seed=0, progress=False, method=method), device))
        times[method] = best
    return {"fast_s": times["fast"], "reference_s": times["reference"],
            "speedup": times["reference"] / times["fast"] if times["fast"] > 0 else None}


# ---------------------------------------------------------------------------- 3. paper label corruption
def epoch_seconds(model, shape, n_train: int, n_test: int, device, *, batch: int = 128, epochs: int = 1,
                  max_steps: int | None = None, seed: int = 0) -> float:
    """Seconds per training epoch (Adam, ``batch``, then one evaluation pass over the train and test
    sets, as the training loop does) on seeded synthetic data of ``shape``; with ``max_steps``, only that
    many steps (and as large a share of the evaluation) are timed and scaled to the whole epoch."""
    g = torch.Generator().manual_seed(seed)
    steps_full = -(-n_train // batch)
    steps = min(steps_full, max_steps or steps_full)
    n = min(n_train, steps * batch)
    x = torch.randn(n, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    share = steps / steps_full

    def epoch():
        model.train()
        perm = torch.randperm(n, device=device)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():  # the loop's per-epoch evaluation of both sets (the same share of it)
            m = int(round((n_train + n_test) * share))
            for i in range(0, m, 1024):
                model(x[i % n:i % n + min(1024, m - i)])

    epoch() if max_steps is None else None  # warm-up (one step is enough when sampling steps)
    return timed(lambda: [epoch() for _ in range(epochs)], device) / epochs / share


def paper_mlp_cost(args, device) -> dict:
    n_train, n_test, width = (1000, 200, 64) if args.tiny else (60000, 10000, 512)
    cap, networks = 640, 12  # until 100% train accuracy, at most 640 epochs; 6 corruption levels x 2 seeds
    model = build_model("mlp", (1, 28, 28), 10, width=width, seed=0).to(device)
    per_epoch = epoch_seconds(model, (1, 28, 28), n_train, n_test, device, epochs=1 if args.tiny else 3,
                              max_steps=2 if args.tiny else None)
    model.eval()
    g = torch.Generator().manual_seed(0)
    ex = 100 if args.tiny else 10000
    x = torch.randn(ex, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (ex,), generator=g).to(device)
    layers = ["hidden.0", "hidden.1"]
    total = sum(unit_counts(model)[n] for n in layers)
    levels = sorted({round(f * total / 64) for f in range(65)})
    abl = timed(lambda: sd.ablation_curves(model, (x, y), layers, repeats=2 if args.tiny else 10,
                                           levels=levels, progress=False, method="fast"), device)
    scales = [0.1 * 10 ** (i / 5) for i in range(11)]
    noise = timed(lambda: sd.noise_curves(model, (x, y), layers, scales=scales,
                                          repeats=2 if args.tiny else 5, progress=False), device)
    per_net = per_epoch * cap + abl + noise
    return {"train_examples": n_train, "width": width, "seconds_per_epoch": per_epoch,
            "ablation_s": abl, "noise_s": noise, "epoch_cap": cap,
            "per_network_at_cap_s": per_net, "claim_mlps_at_cap_hours": networks * per_net / 3600}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="toy sizes (to check the script on a CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per path, best kept (default 3; 1 with --tiny)")
    p.add_argument("--max-flips", type=int, default=1,
                   help="examples per level whose prediction may differ from the reference (near-ties; default 1)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.tiny else 3
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine; run it on a GPU, or use --device cpu --tiny "
              "to check the script itself", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    t_start = time.perf_counter()
    info = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__, "platform": platform.platform(), "threads": torch.get_num_threads(),
            "tiny": args.tiny}
    print(json.dumps(info))
    n = 120 if args.tiny else 5000
    cases = {
        "mlp": (build_model("mlp", (1, 28, 28), 10, width=32 if args.tiny else 128, seed=0), (1, 28, 28), None),
        "convnet": (build_model("convnet", (3, 32, 32), 10, width_mult=0.125 if args.tiny else 0.5, seed=0),
                    (3, 32, 32), 3),
        "resnet": (build_model("resnet", (3, 32, 32), 10, width_mult=0.125 if args.tiny else 0.5, seed=0),
                   (3, 32, 32), 3),
    }
    equality, ok = [], True
    for name, (model, shape, last) in cases.items():
        model = model.to(device).eval()
        x, y = make_data(model, shape, n if name == "mlp" else n // 5, device, seed=1)
        layers = model.unit_layers[-last:] if last else model.unit_layers
        total = sum(unit_counts(model)[l] for l in layers)
        levels = sorted({round(f * total / 32) for f in range(33)})
        res = check_equality(name, model, x, y, layers, levels, args, device)
        ok &= res["equal"]
        equality.append(res)
        print(json.dumps(res))

    # 2. timings: the benchmark's MLP full curve, and the ConvNet's last layer
    timings = {}
    mlp = build_model("mlp", (1, 28, 28), 10, width=16 if args.tiny else 128, seed=0).to(device).eval()
    x, y = make_data(mlp, (1, 28, 28), 200 if args.tiny else 10000, device, seed=2)
    every = list(range(sum(unit_counts(mlp).values()) + 1))
    timings["mlp-curve"] = time_curve(mlp, x, y, mlp.unit_layers, every, args, device)
    print(json.dumps({"mlp-curve": timings["mlp-curve"]}))
    conv = build_model("convnet", (3, 32, 32), 10, width_mult=0.125, seed=0).to(device).eval()
    x, y = make_data(conv, (3, 32, 32), 20 if args.tiny else 1000, device, seed=3)
    last = conv.unit_layers[-1]
    every = list(range(0, unit_counts(conv)[last] + 1, 16 if args.tiny else 1))
    timings["conv-last"] = time_curve(conv, x, y, [last], every, args, device)
    print(json.dumps({"conv-last": timings["conv-last"]}))

    # 3. the paper preset's label-corruption MLPs
    cost = paper_mlp_cost(args, device)
    print(json.dumps({"paper-label-corruption-mlp": cost}))

    doc = {"info": info, "equality": equality, "timings": timings, "paper_label_corruption_mlp": cost,
           "all_equal": ok, "wall_s": time.perf_counter() - t_start}
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"gpu_check: {'all paths equal' if ok else 'PATHS DIFFER'} on {device}; {doc['wall_s']:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
