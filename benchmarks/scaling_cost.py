"""Per-network cost of the paper preset and the paper-sized zoo on this machine (for docs/scaling.md).

Times a few training steps of each network kind the paper preset and the paper zoo train (synthetic
data of the real shapes: the cost does not depend on the pixel values) and scales them to a full epoch,
then times the per-run analyses at the paper's settings on a share of the examples or orders and scales
them up. Prints one JSON line per item and the load average before and after: on a shared machine the
numbers are upper bounds.

Usage::

    python benchmarks/scaling_cost.py [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import singledir as sd  # noqa: E402
from gpu_check import epoch_seconds, timed  # noqa: E402
from singledir.models import build_model, unit_counts  # noqa: E402

# (name, model kwargs, input shape, training examples, test examples, batch, steps timed)
TRAINING = [
    ("paper label-corruption MLP 784-512-512-10, MNIST 60k", dict(name="mlp", width=512), (1, 28, 28), 60000, 10000, 128, 60),
    ("paper training-dynamics/dropout MLP 784-2048-2048-10, MNIST 60k", dict(name="mlp", width=2048), (1, 28, 28), 60000, 10000, 128, 10),
    ("paper ConvNet (11 layers, width_mult 1), CIFAR-10 50k", dict(name="convnet", width_mult=1.0), (3, 32, 32), 50000, 10000, 128, 3),
    ("paper zoo MLP width 512 depth 3 (largest cell), 10k", dict(name="mlp", width=512, depth=3), (1, 28, 28), 10000, 10000, 32, 60),
    ("paper zoo MLP width 128 depth 1 (smallest cell), 10k", dict(name="mlp", width=128, depth=1), (1, 28, 28), 10000, 10000, 128, 79),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(json.dumps({"load_before": os.getloadavg(), "threads": args.threads, "device": str(device)}))
    for name, kw, shape, n_train, n_test, batch, steps in TRAINING:
        kw = dict(kw)
        model = build_model(kw.pop("name"), shape, 10, seed=0, **kw).to(device)
        s = epoch_seconds(model, shape, n_train, n_test, device, batch=batch, max_steps=steps)
        print(json.dumps({"training": name, "seconds_per_epoch": round(s, 2), "steps_timed": steps}), flush=True)

    g = torch.Generator().manual_seed(0)
    mlp = build_model("mlp", (1, 28, 28), 10, width=512, seed=0).to(device).eval()
    x = torch.randn(10000, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (10000,), generator=g).to(device)
    total = sum(unit_counts(mlp).values())
    levels = sorted({round(f * total / 64) for f in range(65)})
    one = timed(lambda: sd.ablation_curves(mlp, (x, y), mlp.unit_layers, repeats=1, levels=levels, progress=False),
                device)
    print(json.dumps({"analysis": "MLP-512 ablation, 10k examples, 65 levels, 10 orders (1 timed x 10)",
                      "seconds": round(10 * one, 1)}), flush=True)
    conv = build_model("convnet", (3, 32, 32), 10, width_mult=1.0, seed=0).to(device).eval()
    xc = torch.randn(250, 3, 32, 32, generator=g).to(device)
    yc = torch.randint(0, 10, (250,), generator=g).to(device)
    layers = conv.unit_layers[-3:]
    total = sum(unit_counts(conv)[n] for n in layers)
    levels = sorted({round(f * total / 32) for f in range(33)})
    one = timed(lambda: sd.ablation_curves(conv, (xc, yc), layers, repeats=1, levels=levels, progress=False), device)
    print(json.dumps({"analysis": "ConvNet last3 ablation, 5000 examples, 33 levels, 10 orders (250 ex x 1 order "
                      "timed, x 20 x 10)", "seconds": round(200 * one, 1)}), flush=True)
    print(json.dumps({"load_after": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
