"""The zoo report: leaderboard, per-axis Psi heat map, scatter plots, settings, published numbers.

Offers :func:`write_report` (``OUT/index.html``, ``OUT/report.md``, ``OUT/figures/*.png``),
:func:`leaderboard` (the measures sorted by granulated Psi, with their family, as a DataFrame; the pages
group it by family) and :data:`PUBLISHED` with :data:`REFERENCES` (published results of the same
measures on *other* zoos, each with its source, for the "published" column).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from singledir.measures.registry import MEASURES

__all__ = ["PUBLISHED", "REFERENCES", "leaderboard", "write_report"]

#: Published results for the same measures on *other* zoos (read them as context only): ``{measure: (what,
#: reference key)}``; every reference is in :data:`REFERENCES`. Numbers are PGDL CMI x 100, as in the sources.
PUBLISHED: dict[str, tuple[str, str]] = {
    "distance_from_init": ("CMI 4.92 public / 2.02 private", "pgdl"),
    "jacobian_norm": ("CMI 2.04 public / 4.19 private", "pgdl"),
    "sharpness": ("CMI 0.00 public / 0.82 private", "pgdl"),
    "db_mixup": ("CMI 22.92, final phase (the winner)", "natekar"),
    "pacbayes_mag_flatness": ("among the best Psi and CMI (qualitative)", "fantastic"),
    "pacbayes_flatness": ("strong (qualitative)", "fantastic"),
    "log_prod_spectral": ("negative correlation (qualitative)", "fantastic"),
    "ww_alpha": ("works within a fixed depth, not in aggregate (qualitative)", "ww"),
}
REFERENCES: dict[str, str] = {
    "pgdl": "PGDL baselines (NeurIPS 2020 competition; CMI x 100 on its public / private task sets): "
            "cadurosar/pgdl README, table 'Scores on the public set/private set'.",
    "natekar": "PGDL winner, Davies-Bouldin x label-wise mixup (Natekar & Sharma 2020, arXiv:2012.02775; "
               "CMI x 100 over the final-phase tasks): parthnatekar/pgdl README, 'Results'.",
    "fantastic": "Jiang et al. 2020, 'Fantastic generalization measures and where to find them' (ICLR 2020): "
                 "a qualitative summary, not checked against the paper's tables; no number quoted.",
    "ww": "Martin & Mahoney 2021 (WeightWatcher metrics on the PGDL models): a qualitative summary; no number quoted.",
}

_RELIANCE = ("reliance_ablation_auc", "reliance_ablation_nauc", "reliance_noise_nauc")


def _published(name: str) -> str:
    """``CMI 4.92 public / 2.02 private [1]``: the result and its reference's number in :data:`REFERENCES`."""
    if name not in PUBLISHED:
        return ""
    what, ref = PUBLISHED[name]
    return f"{what} [{list(REFERENCES).index(ref) + 1}]"


def _f(v, nd=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{nd}f}"


def leaderboard(doc: dict) -> pd.DataFrame:
    """One row per measure: rank (by Psi, descending; measures without Psi last), tau and CI, Psi, CMI,
    sign errors, seconds per model, missing count, published numbers."""
    rows = []
    for name, m in doc["measures"].items():
        lo, hi = (m.get("kendall_tau_ci") or [None, None])[:2]
        rows.append({
            "measure": name,
            "family": MEASURES[name].family if name in MEASURES else "other",
            "psi": m.get("psi"),
            "kendall_tau": m.get("kendall_tau"),
            "tau_ci": f"[{_f(lo, 2)}, {_f(hi, 2)}]",
            "cmi_x100": None if m.get("cmi") is None else 100 * m["cmi"],
            "sign_error_mean": m.get("sign_error_mean"),
            "sign_error_max": m.get("sign_error_max"),
            "environments": m.get("n_environments", 0),
            "seconds_per_model": m.get("seconds_per_model"),
            "missing": len(doc.get("missing", {}).get(name, {})),
            "published": _published(name),
            "reliance": name in _RELIANCE,
        })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_key"] = df["psi"].astype(float).fillna(-math.inf)
    df = df.sort_values("_key", ascending=False, kind="stable").drop(columns="_key").reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    return df


def _figures(out: Path, doc: dict, table: pd.DataFrame, board: pd.DataFrame) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figdir = out / "figures"
    figdir.mkdir(exist_ok=True)
    made = []
    axes = doc["axes"]
    names = [n for _, rows in _by_family(board) for n in rows["measure"] if doc["measures"][n].get("psi_per_axis")]
    if names:
        mat = np.array([[doc["measures"][n]["psi_per_axis"].get(a) if doc["measures"][n]["psi_per_axis"].get(a)
                         is not None else np.nan for a in axes] for n in names], dtype=float)
        fig, ax = plt.subplots(figsize=(1.2 * len(axes) + 3, 0.32 * len(names) + 1.2))
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        ax.set_xticks(range(len(axes)), axes)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                if np.isfinite(mat[i, j]):
                    ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, label="psi (per-axis Kendall tau)")
        ax.set_title("Granulated Kendall psi per axis (measures grouped by family, as in the table)")
        fig.tight_layout()
        fig.savefig(figdir / "psi_heatmap.png", dpi=110)
        plt.close(fig)
        made.append("figures/psi_heatmap.png")
    conv = table[table["converged"]] if len(table) else table
    top = [n for n in board["measure"][:4]] + [n for n in _RELIANCE if n in set(board["measure"]) and n not in set(board["measure"][:4])]
    if len(conv) and top:
        cols = 4
        rows = math.ceil(len(top) / cols)
        fig, axs = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
        for k, n in enumerate(top):
            ax = axs[k // cols][k % cols]
            ax.scatter(conv[n], conv["gap"], s=10, alpha=0.7)
            ax.set_xlabel(f"{n} (complexity)", fontsize=8)
            ax.set_ylabel("gap")
            ax.set_title(f"tau {_f(doc['measures'][n].get('kendall_tau'), 2)}, psi {_f(doc['measures'][n].get('psi'), 2)}", fontsize=8)
        for k in range(len(top), rows * cols):
            axs[k // cols][k % cols].axis("off")
        fig.tight_layout()
        fig.savefig(figdir / "scatter.png", dpi=110)
        plt.close(fig)
        made.append("figures/scatter.png")
    return made


def _worst_per_axis(doc: dict, board: pd.DataFrame) -> pd.DataFrame:
    """Measures x axes: the worst (max) sign error over each axis's environments, in leaderboard order."""
    rows = []
    for name in board.get("measure", []):
        per = doc["measures"][name].get("sign_error_per_axis") or {}
        if per:
            rows.append({"measure": name, **{a: (per.get(a) or {}).get("max") for a in doc["axes"]}})
    return pd.DataFrame(rows)


def _num(v) -> str:
    """The report's right-aligned number cell class, for numbers."""
    return " class='num'" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""


def _cell(v) -> str:
    return _f(v) if isinstance(v, float) or v is None else str(v)


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v).replace("|", "\\|") for v in r) + " |")
    return "\n".join(lines)


def _by_family(board: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The leaderboard cut into families (norm-based, margin-based, ...), each in rank order; the family
    with the best-ranked measure first."""
    order = list(dict.fromkeys(board["family"]))  # board is in rank order
    return [(fam, board[board["family"] == fam]) for fam in order]


_SHOWN = ["rank", "measure", "psi", "kendall_tau", "tau_ci", "cmi_x100", "sign_error_mean", "sign_error_max",
          "environments", "seconds_per_model", "missing", "published"]


def _name(r: dict, constant) -> str:
    return r["measure"] + (" (constant)" if r["measure"] in constant else "")


def _board_md(board: pd.DataFrame, constant=()) -> str:
    """The leaderboard as one Markdown table with a bold row heading each family; reliance measures bold,
    measures constant over the scored models marked."""
    lines = _md_table(board[_SHOWN].iloc[:0]).split("\n")
    for fam, rows in _by_family(board):
        lines.append(f"| | **{fam}** |" + " |" * (len(_SHOWN) - 2))
        for r in rows.to_dict("records"):
            r["measure"] = f"**{_name(r, constant)}**" if r["reliance"] else _name(r, constant)
            lines.append("| " + " | ".join(_cell(r[c]).replace("|", "\\|") for c in _SHOWN) + " |")
    return "\n".join(lines)


def _board_html(board: pd.DataFrame, constant=()) -> str:
    """The leaderboard as one HTML table with a heading row per family; reliance measures highlighted,
    constant ones marked."""
    out = ["<div class='scroll'><table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in _SHOWN) + "</tr>"]
    for fam, rows in _by_family(board):
        out.append(f"<tr class='family'><th colspan='{len(_SHOWN)}'>{html.escape(fam)}</th></tr>")
        for r in rows.to_dict("records"):
            style = ' style="background:#fff3c4"' if r["reliance"] else ""
            r["measure"] = _name(r, constant)
            out.append(f"<tr{style}>" + "".join(f"<td{_num(r[c]) if c != 'rank' else ''}>{html.escape(_cell(r[c]))}</td>"
                                                for c in _SHOWN) + "</tr>")
    return "".join(out) + "</table></div>"


def _references(board: pd.DataFrame) -> list[str]:
    """``[k] source`` for every reference the published column cites."""
    cited = {PUBLISHED[n][1] for n in board.get("measure", []) if n in PUBLISHED}
    return [f"[{k}] {text}" for k, (key, text) in enumerate(REFERENCES.items(), 1) if key in cited]


def write_report(out, doc: dict, table: pd.DataFrame) -> None:
    """Write ``index.html`` and ``report.md`` (and the figures) for a scored zoo."""
    from singledir.io import atomic_write_text

    out = Path(out)
    board = leaderboard(doc)
    figs = _figures(out, doc, table, board) if not board.empty else []
    grid = ", ".join(f"{a} in {v}" for a, v in doc["grid"].items())
    rel = board[board["reliance"]] if not board.empty else board
    rel_line = "; ".join(f"{r.measure} rank {r.rank} of {len(board)} (psi {_f(r.psi)})" for r in rel.itertuples())
    unconv = doc["unconverged"]
    scored = table[table["converged"]] if "converged" in table else table
    constant = [n for n in (board["measure"] if not board.empty else []) if n in scored
                and scored[n].dropna().nunique() <= 1 and scored[n].notna().any()]
    const_line = ("Constant over the scored models (no ranking information: every pair is a tie, so tau, psi "
                  f"and CMI say nothing about it): {', '.join(constant)}." if constant else "")
    md = [
        f"# Generalization-measure zoo: preset {doc['preset']}",
        "",
        f"{doc['description']}. Grid: {grid}; seeds {doc['seeds']}. Stopping criterion: training accuracy >= "
        f"{doc['base_config'].get('until_train_acc')} (on the run's labels) or {doc['base_config'].get('max_epochs')} "
        f"epochs; {doc['n_converged']} of {doc['n_models']} models converged and are scored. Test set: "
        f"{doc['n_test']} examples (robust sign-error pairs need |gap difference| > {_f(math.sqrt(3.84 / max(1, doc['n_test'])), 3)}).",
        "",
        f"Reliance measures: {rel_line or 'n/a'}.",
        "",
        "Measures are oriented as complexities (larger predicts a larger gap). Grouped by family (the family of "
        "the best-ranked measure first), in order of granulated Kendall psi within each; rank is over all measures. "
        "tau: Kendall's tau over all models with a 95% bootstrap interval over models; CMI x 100: PGDL conditional "
        "mutual information (ignores the sign); sign error: Dziugaite et al.'s robust sign-error, mean and worst "
        "environment (lower is better), over the environments kept (effective sample size >= 12). The *published* "
        "column quotes results on other zoos (PGDL's and Fantastic's networks and datasets differ from ours), each "
        "with its source [k] under the table: context, not a like-for-like comparison.",
        "",
        _board_md(board, constant) if not board.empty else f"No scores: {doc.get('score_error')}",
        "",
    ]
    refs = _references(board)
    if refs:
        md += ["Published results, sources:", "", *[f"- {r}" for r in refs], ""]
    if const_line:
        md += [const_line, ""]
    if figs:
        md += [f"![{Path(f).stem}]({f})" for f in figs] + [""]
    worst = _worst_per_axis(doc, pd.concat([rows for _, rows in _by_family(board)]) if not board.empty else board)
    if not worst.empty:
        md += ["## Robust sign-error per axis (worst environment; n/a = no environment kept)", "", _md_table(worst), ""]
    errs = {n: m["cmi_error"] for n, m in doc["measures"].items() if m.get("cmi_error")}
    cmi_line = ""
    if errs:
        reasons = sorted(set(errs.values()))
        cmi_line = (f"CMI could not be computed for {len(errs)} measure(s): " + "; ".join(reasons[:3])
                    + (f" (and {len(reasons) - 3} other reasons)" if len(reasons) > 3 else ""))
        md += [cmi_line, ""]
    md += [f"## Unconverged models ({len(unconv)})", ""]
    md += [f"- {u['run']}: train acc {_f(u['train_acc'])} after {u['epochs']} epochs" for u in unconv] or ["none"]
    md += ["", "## Missing measure values", ""]
    miss = doc.get("missing", {})
    md += [f"- {n}: {len(v)} model(s), e.g. {next(iter(v.values()))}" for n, v in miss.items()] or ["none"]
    md += ["", f"Measure settings: {doc['measure_settings']}.", "",
           f"Wall time of this invocation: {doc['wall_seconds']:.0f} s ({doc['trained_now']} models trained now, "
           f"{doc['reused']} reused from the cache)."]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")

    def esc(x):
        return html.escape(str(x))

    body = [f"<h1>{esc(md[0][2:])}</h1>", f"<p>{esc(md[2])}</p>", f"<p><b>{esc(md[4])}</b></p>", f"<p>{esc(md[6])}</p>"]
    if not board.empty:
        body.append(_board_html(board, constant))
        if refs:
            body.append("<p>Published results, sources:</p><ul>" + "".join(f"<li>{esc(r)}</li>" for r in refs) + "</ul>")
    else:
        body.append(f"<p>No scores: {esc(doc.get('score_error'))}</p>")
    if const_line:
        body.append(f"<p><strong>{esc(const_line)}</strong></p>")
    body += [f'<p><img src="{esc(f)}" style="max-width:100%"></p>' for f in figs]
    if not worst.empty:
        body.append("<h2>Robust sign-error per axis (worst environment)</h2><div class='scroll'><table><tr>"
                    + "".join(f"<th>{esc(c)}</th>" for c in worst.columns) + "</tr>" + "".join(
                        "<tr>" + "".join(f"<td{_num(v)}>{esc(_cell(v))}</td>" for v in r) + "</tr>" for r in worst.itertuples(index=False))
                    + "</table></div>")
    if cmi_line:
        body.append(f"<p>{esc(cmi_line)}</p>")
    body.append(f"<h2>Unconverged models ({len(unconv)})</h2><ul>" + "".join(
        f"<li>{esc(u['run'])}: train acc {_f(u['train_acc'])} after {u['epochs']} epochs</li>" for u in unconv) + "</ul>")
    body.append("<h2>Missing measure values</h2><ul>" + "".join(
        f"<li>{esc(n)}: {len(v)} model(s), e.g. {esc(next(iter(v.values())))}</li>" for n, v in miss.items()) + "</ul>")
    body.append(f"<p>{esc(md[-3])}</p><p>{esc(md[-1])}</p>")
    from singledir.reporting.report import CSS

    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>singledir zoo</title><style>" + CSS
            + "body{max-width:1200px}</style></head><body>" + "\n".join(body) + "</body></html>\n")
    atomic_write_text(out / "index.html", page)
