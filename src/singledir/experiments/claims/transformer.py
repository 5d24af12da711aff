"""Claim 1 on a transformer: a small transformer that memorizes (corrupted labels) relies more on its MLP neurons.

The label-corruption claim (:mod:`.label_corruption`, Figs 1-2) tested on a model family the paper did
not use: a 2-block transformer encoder (:class:`singledir.models.transformer.SeqTransformer`) reading
each MNIST-1D example as a sequence of 40 scalar tokens. Networks are trained (in this process, seeded)
to a training-accuracy target on labels of which a fraction p is corrupted (the same
:func:`singledir.data.corrupt_labels` as the images); the MLP neurons of both blocks (the GELU outputs,
(N, 40 tokens, 4 x width), units on the last axis) are pooled and ablated cumulatively in random orders,
each neuron zeroed at every token, on the TRAINING data with the run's own labels; noise is added to
every neuron at every token. The verdict is :func:`.label_corruption.trend_rule` on the ablation AUC
across networks, the very rule of the image networks.

Opt-in (not in the default claim list, as its training is the slowest per network on a CPU):
``singledir reproduce --claims transformer``. Settings per preset: :data:`PRESETS`.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from singledir.experiments import verdicts
from singledir.experiments.claims.label_corruption import BOUND, trend_rule
from singledir.experiments.context import ClaimResult, Context, Part
from singledir.reporting.formatting import fmt_corr_power, fmt_p

NAME = "transformer"
TITLE = "A memorizing transformer relies more on single MLP neurons"
STATEMENT = (
    "The label-corruption claim (Morcos et al. 2018, Figs 1-2) on a transformer: small transformer "
    "encoders that fit MNIST-1D labels of which a larger fraction p is corrupted lose training accuracy "
    "faster when their MLP neurons are ablated cumulatively than those trained on clean labels."
)
RULE = (
    "Per network: AUC of the cumulative-ablation curve (training accuracy on the run's own labels vs "
    "fraction of the pooled MLP neurons of both blocks ablated -- each neuron zeroed at every token -- mean "
    "over random orders). Part 'transformer ablation' across networks (all p and seeds) with the rule of "
    "the label-corruption claim: reproduced when the isotonic non-increasing trend of AUC on p has a "
    "20000-permutation p < 0.05 and explains more than the non-decreasing one; not reproduced when the "
    "opposite holds, or when the 95% Fisher-z interval of Spearman rho(AUC, p) excludes every rho <= "
    f"-{BOUND}; otherwise inconclusive; inconclusive when a network misses its training-accuracy target. "
    "Part 'transformer noise' (noise AUC over log scale, training data) is reported, not counted. "
    "Declared with the module, before its first run."
)

PRESETS = {
    "smoke": dict(train_subset=128, corrupt=[0.0, 1.0], seeds=[0], width=32, depth=2, heads=2, lr=3e-3,
                  batch_size=64, max_epochs=20, target=0.0, orders=2, levels=9, noise_repeats=1,
                  noise_scales=[0.3, 1.0, 3.0]),
    "quick": dict(train_subset=256, corrupt=[0.0, 0.5, 1.0], seeds=[0, 1, 2, 3], width=32, depth=2, heads=2, lr=3e-3,
                  batch_size=64, max_epochs=400, target=0.99, orders=5, levels=33, noise_repeats=2,
                  noise_scales=[0.1, 0.3, 1.0, 3.0, 10.0]),
    "full": dict(train_subset=512, corrupt=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], seeds=[0, 1, 2], width=32, depth=2,
                 heads=2, lr=3e-3, batch_size=64, max_epochs=1000, target=0.99, orders=10, levels=65,
                 noise_repeats=3, noise_scales=[0.1, 0.18, 0.32, 0.56, 1.0, 1.8, 3.2, 5.6, 10.0]),
}


def preset_settings(preset: str) -> dict:
    """This claim's settings for ``preset`` ("paper" and unknown presets use "full")."""
    return dict(PRESETS.get(preset, PRESETS["full"]))


def train_network(x, y, s: dict, seed: int):
    """A :class:`SeqTransformer` trained with Adam on ``(x, y)`` until training accuracy >= ``s["target"]``
    (checked each epoch) or ``s["max_epochs"]``; returns ``(model in eval mode, epochs, train accuracy)``."""
    from singledir.training.threads import one_thread

    with one_thread():  # small steps: one thread is fastest on a CPU (thread-local; the process's count unchanged)
        return _train(x, y, s, seed)


def _train(x, y, s: dict, seed: int):
    from singledir.models.transformer import SeqTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SeqTransformer(x.shape[-1], int(y.max()) + 1 if s.get("num_classes") is None else s["num_classes"],
                               width=s["width"], depth=s["depth"], heads=s["heads"])
        opt = torch.optim.Adam(model.parameters(), lr=s["lr"])
        gen = torch.Generator().manual_seed(seed + 1)
        acc, epoch = 0.0, 0
        for epoch in range(1, s["max_epochs"] + 1):
            model.train()
            perm = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y), s["batch_size"]):
                idx = perm[i : i + s["batch_size"]]
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                acc = float((model(x).argmax(1) == y).float().mean())
            if acc >= s["target"] and s["target"] > 0:
                break
    return model.eval(), epoch, acc


def _networks(s: dict, progress: bool) -> tuple[pd.DataFrame, list]:
    """Train one network per (p, seed) on the same MNIST-1D subset; per-run table and (model, x, y)."""
    import singledir as sd
    from singledir.data import corrupt_labels, load_dataset

    ds = load_dataset("mnist1d", train_subset=s["train_subset"], seed=0)
    x, clean = ds.x_train, ds.y_train
    k = int(clean.max()) + 1
    rows, nets = [], []
    for p in s["corrupt"]:
        for seed in s["seeds"]:
            y, changed = corrupt_labels(clean, p, k, seed=seed)
            t = time.perf_counter()
            model, epochs, acc = train_network(x, y, dict(s, num_classes=k), seed)
            with torch.no_grad():
                test_acc = float((model(ds.x_test).argmax(1) == ds.y_test).float().mean())
            abl = sd.ablation_curves(model, (x, y), model.unit_layers, repeats=s["orders"], seed=seed,
                                     levels=_levels(model, s["levels"]))
            nz = sd.noise_curves(model, (x, y), model.unit_layers, scales=s["noise_scales"],
                                 repeats=s["noise_repeats"], seed=seed)
            auc = abl.auc_per_curve()
            rows.append({"run": f"transformer-p{p:g}-s{seed}", "corrupt": p, "seed": seed, "epochs": epochs,
                         "train_acc": acc, "test_acc": test_acc, "labels_changed": float(changed.float().mean()),
                         "target_reached": bool(acc >= s["target"]), "auc": float(auc["auc"].mean()),
                         "auc_std": float(auc["auc"].std(ddof=1)) if len(auc) > 1 else float("nan"),
                         "nauc": float(auc["normalized_auc"].mean()),
                         "noise_auc": float(nz.auc_per_curve()["normalized_auc"].mean()),
                         "units": abl.meta["total_units"], "seconds": time.perf_counter() - t})
            nets.append((abl.curves.assign(p=p, seed=seed), nz.curves.assign(p=p, seed=seed)))
            if progress:
                r = rows[-1]
                print(f"[transformer] p={p:g} seed={seed}: {epochs} epochs, train acc {acc:.3f}, "
                      f"AUC {r['auc']:.3f} ({r['seconds']:.0f} s)", flush=True)
    return pd.DataFrame(rows), nets


def _levels(model, points: int) -> list[int]:
    total = sum(blk.mlp.fc.out_features for blk in model.blocks)
    return sorted({int(round(v)) for v in np.linspace(0, total, points)})


def _part(name: str, runs: pd.DataFrame, col: str, in_verdict: bool = True) -> Part:
    verdict, reason, numbers = trend_rule(runs["corrupt"], runs[col], fit=bool(runs["target_reached"].all()))
    label = col.replace("_", " ")
    text = fmt_corr_power(numbers, f"({label}, corruption)",
                          between=f"isotonic trend p = {fmt_p(numbers['trend_down']['p'])}; ")
    return Part(name, verdict, reason, text, numbers, in_verdict)


def run(ctx: Context) -> ClaimResult:
    from singledir.reporting.figures import plot_curves, plot_scatter

    s = ctx.settings
    runs, nets = _networks(s, ctx.progress)
    parts = [_part("transformer ablation", runs, "auc"), _part("transformer noise", runs, "noise_auc", False)]
    curves = pd.concat([a for a, _ in nets])
    noise = pd.concat([n for _, n in nets])
    ctx.figure(plot_curves(curves, "fraction", "accuracy", group="p", ylabel="training accuracy (run's labels)",
                           title=f"Transformer ({s['depth']} blocks, width {s['width']}): MLP neuron ablation"),
               "ablation", "Training accuracy (on each network's own, corrupted, labels) as more and more MLP "
               "neurons of both blocks are zeroed at every token in random order; mean +- std over orders "
               "and seeds, one line per corruption fraction p.")
    ctx.figure(plot_curves(noise, "scale", "accuracy", group="p", logx=True,
                           ylabel="training accuracy (run's labels)", title="Transformer: noise on all MLP neurons"),
               "noise", "Training accuracy with Gaussian noise (std = scale x each neuron's training std over "
               "tokens) on every MLP neuron at every token.")
    ctx.figure(plot_scatter(runs, "corrupt", "auc", xlabel="fraction of labels corrupted (p)",
                            ylabel="ablation AUC (training data)", title="Transformer: AUC vs label corruption"),
               "auc-vs-p", "Area under each transformer's ablation curve against its corruption fraction.")
    verdict, reason = verdicts.combine({p.name: p.verdict for p in parts if p.in_verdict})
    notes = [f"{int((~runs['target_reached']).sum())} network(s) stopped at the epoch cap before the "
             f"training-accuracy target {s['target']}."] if not runs["target_reached"].all() else []
    numbers = {"per_run_auc": dict(zip(runs["run"], runs["auc"])), "power": {p.name: p.numbers["power"] for p in parts}}
    return ClaimResult(NAME, TITLE, STATEMENT, RULE, verdict, reason, parts[0].statistic, parts, s, ctx.figures,
                       {"transformer networks": runs}, numbers, notes)
