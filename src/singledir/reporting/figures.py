"""Paper-style matplotlib figures: mean curves with std bands, histograms, scatter plots; atomic saving.

All functions take a tidy pandas DataFrame (one row per observation, e.g. ``AblationResult.curves``)
and return a :class:`matplotlib.figure.Figure`. They draw with matplotlib's object API on the Agg canvas
(``matplotlib.figure.Figure``; no pyplot state, no display), so they are safe in scripts, tests and
worker processes. Pass ``ax=`` to draw into an existing axes (then its figure is returned).

Style: clean axes (no top/right spines), labelled axes with units, a legend whenever there is more than
one line or a band, numeric groups (e.g. corruption fraction p) on a sequential colour map and
categorical groups (e.g. ablation order) on ``tab10``. Default axis labels come from :data:`LABELS` for
the column names the reliance engine uses (``fraction``, ``accuracy``, ``scale``, ``selectivity`` ...).

:func:`save_figure` writes each format to a temporary file in the target folder and renames it into
place (never a half-written PNG), then closes the figure.
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from singledir.errors import SingledirError
from singledir.io import atomic_write_bytes

__all__ = ["LABELS", "plot_curves", "plot_histogram", "plot_scatter", "save_figure"]

#: Readable default axis labels for the column names used across singledir.
LABELS = {
    "fraction": "fraction of units ablated",
    "k": "units ablated",
    "accuracy": "accuracy",
    "loss": "loss (cross-entropy)",
    "scale": "noise std (x unit's training std)",
    "selectivity": "class selectivity index",
    "mutual_info": "mutual information (bits)",
    "accuracy_drop": "accuracy drop (unit ablated alone)",
    "loss_increase": "loss increase (unit ablated alone)",
    "mean_activity": "mean activity",
    "epoch": "epoch",
    "auc": "area under ablation curve",
    "auc_mean": "area under ablation curve",
    "normalized_auc": "normalized ablation AUC",
    "test_accuracy": "test accuracy",
    "train_accuracy": "training accuracy",
    "test_loss": "test loss",
    "corrupt": "label corruption p",
}

_BANDS = ("std", "sem", "ci95", "minmax", None)
_FORMATS = ("png", "svg", "pdf")

# Paper style: small clean figures, no chartjunk.
_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.6,
    "svg.hashsalt": "singledir",  # deterministic SVG ids
}


# ---------------------------------------------------------------------------------------------- helpers
def _label(column: str | None, given: str | None) -> str | None:
    if given is not None:
        return given
    if column is None:
        return None
    return LABELS.get(column, str(column).replace("_", " "))


def _check_df(df, columns: Iterable[str | None], what: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise SingledirError(f"{what} needs a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c is not None and c not in df.columns]
    if missing:
        raise SingledirError(
            f"{what}: column(s) {', '.join(map(repr, missing))} not in the table; "
            f"it has {', '.join(map(str, df.columns))}"
        )
    if df.empty:
        raise SingledirError(f"{what}: the table is empty; nothing to plot")
    return df


def _new_axes(ax, figsize=(4.8, 3.4)):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _groups(df: pd.DataFrame, group: str | None) -> list:
    """Group values in a stable order: sorted when numeric, else in order of first appearance."""
    if group is None:
        return [None]
    values = pd.unique(df[group].dropna())
    if pd.api.types.is_numeric_dtype(df[group]) and not pd.api.types.is_bool_dtype(df[group]):
        return sorted(values.tolist())
    return list(values)


def _colors(groups: Sequence, palette) -> dict:
    """Map each group to a colour: palette dict / list / colormap name, or a sensible default."""
    n = len(groups)
    if isinstance(palette, Mapping):
        fallback = _colors(groups, None)
        return {g: palette.get(g, palette.get(str(g), fallback[g])) for g in groups}
    if isinstance(palette, str):
        cmap = mpl.colormaps[palette]
        pos = np.linspace(0.0, 0.9, n) if n > 1 else [0.0]
        return {g: cmap(p) for g, p in zip(groups, pos)}
    if palette is not None:
        colors = list(palette)
        return {g: colors[i % len(colors)] for i, g in enumerate(groups)}
    numeric = n > 2 and all(isinstance(g, (int, float, np.integer, np.floating)) for g in groups)
    if numeric:  # e.g. corruption levels: dark (p=0) -> bright (p=1)
        cmap = mpl.colormaps["viridis"]
        return {g: cmap(p) for g, p in zip(groups, np.linspace(0.0, 0.9, n))}
    cycle = mpl.colormaps["tab10"].colors
    if n > len(cycle):  # never a colour twice: along the groups' order (e.g. layers by depth), dark -> bright
        return {g: mpl.colormaps["viridis"](p) for g, p in zip(groups, np.linspace(0.0, 0.95, n))}
    return {g: cycle[i % len(cycle)] for i, g in enumerate(groups)}


def _fmt_group(g) -> str:
    if isinstance(g, (float, np.floating)):
        return f"{g:g}"
    return str(g)


def _finish(ax, xlabel, ylabel, title) -> None:
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)


def _vlines(ax, vlines) -> None:
    if vlines is None:
        return
    if isinstance(vlines, Mapping):
        items = list(vlines.items())
    elif isinstance(vlines, (int, float, np.number)):
        items = [(None, vlines)]
    else:
        items = [(None, v) for v in vlines]
    for label, xv in items:
        ax.axvline(float(xv), color="0.45", linestyle="--", linewidth=0.9, zorder=1)
        if label:
            ax.annotate(
                str(label), xy=(float(xv), 1.0), xycoords=("data", "axes fraction"),
                xytext=(2, -2), textcoords="offset points", ha="left", va="top", fontsize=7,
                color="0.35",
            )


def _spearman(xv: np.ndarray, yv: np.ndarray) -> tuple[float, float]:
    """Spearman rho and p-value (:func:`singledir.stats.spearman`); NaN where undefined."""
    from singledir import stats

    c = stats.spearman(xv, yv, n_boot=0)
    return c["rho"], c["p"]


def _rho_text(rho: float, p: float) -> str:
    if not math.isfinite(rho):
        return "\u03c1 n/a"
    ptxt = f"p={p:.2g}" if p >= 1e-4 else "p<1e-4"
    return f"\u03c1={rho:+.2f}, {ptxt}"


# ---------------------------------------------------------------------------------------------- plots
def plot_curves(
    df: pd.DataFrame,
    x: str,
    y: str = "accuracy",
    group: str | None = None,
    ax=None,
    band: str | None = "std",
    logx: bool = False,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    vlines=None,
    palette=None,
    markers: bool | None = None,
) -> Figure:
    """Mean of ``y`` against ``x`` per ``group``, with a band across repeats.

    ``df`` is tidy: several rows per (group, x) -- one per repeat (random order, noise draw, network) --
    e.g. ``AblationResult.curves`` (x="fraction", group="order") or ``NoiseResult.curves``
    (x="scale", logx=True). ``band``: ``"std"`` (mean +- 1 std, the paper's), ``"sem"``, ``"ci95"``
    (mean +- 1.96 sem), ``"minmax"`` or None. Groups with one repeat get no band. ``vlines``: an x
    value, a list, or ``{label: x}`` (e.g. ``{"dropout 0.2": 0.2}``) drawn as dashed lines.
    ``palette``: ``{group: colour}``, a list of colours, or a colormap name. ``markers`` defaults to
    True for curves with at most 20 points. Accuracy axes span [0, 1].
    """
    if band not in _BANDS:
        raise SingledirError(f"band must be one of {', '.join(map(str, _BANDS))}, got {band!r}")
    df = _check_df(df, [x, y, group], "plot_curves")
    with mpl.rc_context(_STYLE):
        fig, ax = _new_axes(ax)
        groups = _groups(df, group)
        colors = _colors(groups, palette)
        max_n = 0
        for g in groups:
            sub = df if g is None else df[df[group] == g]
            stats = (
                sub[[x, y]].dropna().groupby(x, sort=True)[y].agg(["mean", "std", "count", "min", "max"])
            )
            if stats.empty:
                continue
            xs = stats.index.to_numpy(dtype=float)
            mean = stats["mean"].to_numpy(dtype=float)
            n = stats["count"].to_numpy()
            max_n = max(max_n, int(n.max()))
            color = colors[g] if g is not None else "C0"
            label = _fmt_group(g) if g is not None else _label(y, ylabel)
            use_markers = markers if markers is not None else len(xs) <= 20
            ax.plot(xs, mean, color=color, label=label, marker="o" if use_markers else None,
                    markersize=3, zorder=3)
            if band is not None and n.max() > 1:
                std = stats["std"].fillna(0.0).to_numpy(dtype=float)
                if band == "std":
                    lo, hi = mean - std, mean + std
                elif band in ("sem", "ci95"):
                    sem = std / np.sqrt(np.maximum(n, 1))
                    half = sem * (1.96 if band == "ci95" else 1.0)
                    lo, hi = mean - half, mean + half
                else:
                    lo, hi = stats["min"].to_numpy(float), stats["max"].to_numpy(float)
                ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0, zorder=2)
        if logx:
            ax.set_xscale("log")
        if y == "accuracy" or y.endswith("_accuracy"):
            top = max(1.0, float(np.nanmax(df[y].to_numpy(dtype=float))))
            ax.set_ylim(-0.02, top + 0.02)
        _vlines(ax, vlines)
        _finish(ax, _label(x, xlabel), _label(y, ylabel), title)
        handles, labels = ax.get_legend_handles_labels()
        if band is not None and max_n > 1:
            what = {"std": "\u00b11 std", "sem": "\u00b11 s.e.m.", "ci95": "95% CI", "minmax": "min-max"}
            handles.append(Patch(facecolor="0.6", alpha=0.35, linewidth=0))
            labels.append(f"{what[band]} over {max_n} repeats")
        if len(handles) > 1 or group is not None:
            ax.legend(handles, labels, title=group, loc="best")
    return fig


def plot_histogram(
    df: pd.DataFrame,
    column: str,
    group: str | None = None,
    ax=None,
    bins: int | Sequence[float] = 20,
    range: tuple[float, float] | None = None,  # noqa: A002 - mirrors numpy/matplotlib
    density: bool = False,
    show_mean: bool = True,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    palette=None,
) -> Figure:
    """Histogram of ``column``, one overlaid (translucent, outlined) histogram per ``group``.

    All groups share the same bin edges (``bins`` count or edges, over ``range`` or the data's range),
    so their shapes compare directly; ``density=True`` normalizes each group to unit area (use it when
    groups differ in size). With ``show_mean`` each group's mean is a dashed line and is in the legend.
    NaNs are ignored.
    """
    df = _check_df(df, [column, group], "plot_histogram")
    values_all = df[column].to_numpy(dtype=float)
    finite = values_all[np.isfinite(values_all)]
    if finite.size == 0:
        raise SingledirError(f"plot_histogram: column {column!r} has no finite values")
    if np.ndim(bins) == 0:
        lo, hi = range if range is not None else (float(finite.min()), float(finite.max()))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, int(bins) + 1)
    else:
        edges = np.asarray(bins, dtype=float)
    with mpl.rc_context(_STYLE):
        fig, ax = _new_axes(ax)
        groups = _groups(df, group)
        colors = _colors(groups, palette)
        for g in groups:
            sub = df if g is None else df[df[group] == g]
            v = sub[column].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            if v.size == 0:
                continue
            color = colors[g] if g is not None else "C0"
            name = _fmt_group(g) if g is not None else "all"
            label = f"{name} (mean {v.mean():.2f}, n={v.size})" if show_mean else name
            ax.hist(v, bins=edges, density=density, color=color, alpha=0.3, label=label, zorder=2)
            ax.hist(v, bins=edges, density=density, color=color, histtype="step", linewidth=1.2, zorder=3)
            if show_mean:
                ax.axvline(v.mean(), color=color, linestyle="--", linewidth=1.0, zorder=4)
        ax.grid(axis="x", visible=False)
        _finish(ax, _label(column, xlabel), ylabel or ("density" if density else "units"), title)
        if group is not None or show_mean:
            ax.legend(title=group, loc="best")
    return fig


def plot_scatter(
    df: pd.DataFrame,
    x: str,
    y: str,
    group: str | None = None,
    annotate_rho: bool = True,
    ax=None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    palette=None,
    alpha: float = 0.6,
    s: float = 12,
    logx: bool = False,
    logy: bool = False,
    pooled: str | None = None,
    marker_by: str | None = None,
) -> Figure:
    """Scatter of ``y`` against ``x``, coloured by ``group``.

    With ``annotate_rho`` each group's legend entry carries its Spearman rho and p-value, and the legend
    title (or the title without groups) a pooled value: ``pooled`` when given (shown even without
    ``annotate_rho``; e.g. the within-group
    statistic a verdict uses), else with groups the within-group pooled rank correlation
    (:func:`singledir.stats.power.pooled_rank_correlation`, never a plain rho across groups, whose sign can
    differ), without groups the plain Spearman rho. ``marker_by``: a second column shown by marker shape
    (e.g. colour = learning rate, marker = batch size), listed in the legend with grey markers; the legend sits
    below the axes so it never hides points (``rho n/a`` for constant data) -- the
    paper's selectivity-vs-importance figure (x="selectivity", y="accuracy_drop", group="layer").
    A faint line marks y = 0 when the data straddle it.
    """
    df = _check_df(df, [x, y, group, marker_by], "plot_scatter")
    with mpl.rc_context(_STYLE):
        fig, ax = _new_axes(ax, figsize=(4.8, 4.2) if group is not None else (4.8, 3.4))
        groups = _groups(df, group)
        colors = _colors(groups, palette)
        marker_values = _groups(df, marker_by) if marker_by is not None else []
        for g in groups:
            sub = df if g is None else df[df[group] == g]
            xv = sub[x].to_numpy(dtype=float)
            yv = sub[y].to_numpy(dtype=float)
            color = colors[g] if g is not None else "C0"
            label = None if g is None else f"{group} = {_fmt_group(g)}" if marker_by else _fmt_group(g)
            if annotate_rho and g is not None:
                label = f"{label} ({_rho_text(*_spearman(xv, yv))}, n={len(sub)})"
            if marker_by is None:
                ax.scatter(xv, yv, s=s, alpha=alpha, color=color, label=label, linewidths=0, zorder=3)
                continue
            for j, mv in enumerate(marker_values):
                m = sub[marker_by] == mv
                ax.scatter(xv[m.to_numpy()], yv[m.to_numpy()], s=s * 1.6, alpha=alpha, color=color,
                           marker=_MARKERS[j % len(_MARKERS)], label=label if j == 0 else None, linewidths=0, zorder=3)
        for j, mv in enumerate(marker_values):
            ax.scatter([], [], s=s * 1.6, color="0.45", marker=_MARKERS[j % len(_MARKERS)],
                       label=f"{marker_by} = {_fmt_group(mv)}")
        yall = df[y].to_numpy(dtype=float)
        yall = yall[np.isfinite(yall)]
        if yall.size and yall.min() < 0 < yall.max():
            ax.axhline(0.0, color="0.5", linewidth=0.7, zorder=1)
        if annotate_rho and pooled is None:
            if group is not None:
                from singledir.stats.power import pooled_rank_correlation

                c = pooled_rank_correlation(df[x].to_numpy(dtype=float), df[y].to_numpy(dtype=float),
                                            df[group].to_numpy())
                pooled = f"within-{group} pooled {_rho_text(c['rho'], c['p'])}, n={c['n']}"
            else:
                rho, p = _spearman(df[x].to_numpy(dtype=float), df[y].to_numpy(dtype=float))
                pooled = f"all: Spearman {_rho_text(rho, p)}, n={len(df)}"
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        _finish(ax, _label(x, xlabel), _label(y, ylabel), title)
        if group is not None:
            # below the axes, so that it never hides points
            key = f"colour: {group}, marker: {marker_by}" if marker_by else group
            legend_title = f"{key}   ({pooled})" if pooled else key
            ax.legend(title=legend_title, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                      ncol=1 if len(groups) <= 3 else 2, markerscale=1.5)
        elif pooled:
            ax.set_title(f"{title}\n{pooled}" if title else pooled, fontsize=8 if not title else None)
    return fig


# ---------------------------------------------------------------------------------------------- saving
def save_figure(
    fig: Figure,
    path_without_ext: str | os.PathLike,
    formats: Sequence[str] = ("png", "svg"),
    dpi: int = 150,
) -> list[Path]:
    """Write ``fig`` as ``<path>.<fmt>`` for each format, atomically, then close the figure.

    Each file is rendered in memory and written with :func:`singledir.io.atomic_write_bytes`, so a
    reader never sees a half-written image. Parent folders are created. A trailing ``.png``/``.svg``/
    ``.pdf`` on the path is dropped. Returns the written paths. SVGs are deterministic (no date,
    fixed id salt).
    """
    if isinstance(formats, str):
        formats = (formats,)
    bad = [f for f in formats if f not in _FORMATS]
    if bad or not formats:
        raise SingledirError(f"figure formats must be among {', '.join(_FORMATS)}, got {list(formats)!r}")
    base = Path(path_without_ext)
    if base.suffix.lstrip(".").lower() in _FORMATS:
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for fmt in formats:
            final = base.with_name(f"{base.name}.{fmt}")
            metadata = {"Date": None} if fmt in ("svg", "pdf") else None
            buf = io.BytesIO()
            with mpl.rc_context({"svg.hashsalt": "singledir"}):
                # tight: a legend placed below the axes or a long title is never cut off
                fig.savefig(buf, format=fmt, dpi=dpi, metadata=metadata, bbox_inches="tight")
            written.append(atomic_write_bytes(final, buf.getvalue()))
    finally:
        _close(fig)
    return written


def _close(fig: Figure) -> None:
    """Release the figure: drop it from pyplot's registry if pyplot made it, and clear it."""
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)
    fig.clear()
