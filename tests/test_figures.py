"""Paper-style figures: files written atomically and non-empty, axes labelled, legends and bands present."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from singledir.errors import SingledirError
from singledir.reporting import plot_curves, plot_histogram, plot_scatter, save_figure


def curves_df():
    rng = np.random.default_rng(0)
    rows = []
    for order in ("random", "selectivity"):
        for repeat in range(4):
            for k in range(0, 33, 4):
                f = k / 32
                acc = max(0.1, 1 - f * (1.1 if order == "random" else 1.4)) + rng.normal(0, 0.02)
                rows.append({"order": order, "repeat": repeat, "k": k, "fraction": f, "accuracy": acc})
    return pd.DataFrame(rows)


def units_df():
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "layer": np.repeat(["hidden.0", "hidden.1"], 50),
            "selectivity": rng.random(100),
            "accuracy_drop": rng.normal(0, 0.01, 100),
        }
    )


def _bands(ax):
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_plot_curves_mean_line_and_std_band_per_group(tmp_path):
    df = curves_df()
    fig = plot_curves(df, "fraction", group="order", title="Cumulative ablation", vlines={"dropout": 0.2})
    ax = fig.axes[0]
    assert ax.get_xlabel() == "fraction of units ablated" and ax.get_ylabel() == "accuracy"
    assert len(ax.get_lines()) >= 2 and len(_bands(ax)) == 2
    legend_text = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "random" in legend_text and any("std over 4 repeats" in t for t in legend_text)
    mean_line = ax.get_lines()[0]
    expected = df[df.order == "random"].groupby("fraction").accuracy.mean().to_numpy()
    np.testing.assert_allclose(mean_line.get_ydata(), expected)
    paths = save_figure(fig, tmp_path / "sub" / "ablation")
    assert [p.name for p in paths] == ["ablation.png", "ablation.svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["ablation.png", "ablation.svg"]
    assert fig.axes == []  # closed / cleared


def test_plot_curves_options(tmp_path):
    df = curves_df().rename(columns={"fraction": "scale"})
    df["scale"] = 10 ** (df["scale"] * 2 - 1)
    fig = plot_curves(df, "scale", group="order", logx=True, band=None, xlabel="s", ylabel="acc",
                      palette={"random": "black"})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "s" and ax.get_ylabel() == "acc"
    assert _bands(ax) == []
    assert ax.get_lines()[0].get_color() == "black"
    one = plot_curves(df[df.order == "random"], "scale", y="accuracy")  # no group: still a legend for the band
    assert one.axes[0].get_legend() is not None
    fig2 = Figure()
    ax2 = fig2.add_subplot()
    assert plot_curves(df, "scale", group="order", ax=ax2) is fig2
    for band in ("sem", "ci95", "minmax"):
        assert len(_bands(plot_curves(df, "scale", group="order", band=band).axes[0])) == 2
    with pytest.raises(SingledirError, match="band"):
        plot_curves(df, "scale", band="iqr")
    with pytest.raises(SingledirError, match="not in the table"):
        plot_curves(df, "fraction")
    with pytest.raises(SingledirError, match="empty"):
        plot_curves(df.iloc[:0], "scale")


def test_plot_histogram(tmp_path):
    fig = plot_histogram(units_df(), "selectivity", group="layer", range=(0, 1))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "class selectivity index" and ax.get_ylabel() == "units"
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(texts) == 2 and texts[0].startswith("hidden.0 (mean")
    assert ax.get_legend().get_title().get_text() == "layer"
    paths = save_figure(fig, tmp_path / "hist.png", formats="png")  # extension dropped, one format
    assert [p.name for p in paths] == ["hist.png"] and paths[0].stat().st_size > 1000
    dens = plot_histogram(units_df(), "selectivity", density=True, show_mean=False)
    assert dens.axes[0].get_ylabel() == "density"


def test_plot_scatter_annotates_spearman(tmp_path):
    df = units_df()
    df["accuracy_drop"] = -df["selectivity"]  # perfectly anti-correlated
    fig = plot_scatter(df, "selectivity", "accuracy_drop", group="layer")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "class selectivity index"
    assert ax.get_ylabel() == "accuracy drop (unit ablated alone)"
    legend = ax.get_legend()
    assert "\u03c1=-1.00" in legend.get_title().get_text()
    assert all("\u03c1=-1.00" in t.get_text() for t in legend.get_texts())
    df["accuracy_drop"] = 0.0  # constant: rho undefined, no crash
    fig2 = plot_scatter(df, "selectivity", "accuracy_drop")
    assert "n/a" in fig2.axes[0].get_title()
    paths = save_figure(fig, tmp_path / "scatter", formats=("png", "svg"))
    assert all(p.stat().st_size > 500 for p in paths)


def test_save_figure_rejects_unknown_format_and_still_closes(tmp_path):
    fig = plot_histogram(units_df(), "selectivity")
    with pytest.raises(SingledirError, match="formats"):
        save_figure(fig, tmp_path / "x", formats=("jpg",))
    assert list(tmp_path.iterdir()) == []


def test_scatter_with_groups_states_the_within_group_rho_not_the_plain_pooled_one():
    import matplotlib.pyplot as plt

    from singledir.reporting.figures import plot_scatter

    # within each layer y rises with x, but the layer with larger x has smaller y: plain rho < 0
    df = pd.DataFrame({"x": [0, 1, 2, 3, 10, 11, 12, 13], "y": [10, 11, 12, 13, 0, 1, 2, 3],
                       "layer": ["a"] * 4 + ["b"] * 4})
    fig = plot_scatter(df, "x", "y", group="layer")
    title = fig.axes[0].get_legend().get_title().get_text()
    plt.close(fig)
    assert "within-layer pooled" in title and "+1.00" in title
    fig = plot_scatter(df, "x", "y", group="layer", pooled="verdict: rho = 0.12")
    assert "verdict: rho = 0.12" in fig.axes[0].get_legend().get_title().get_text()
    plt.close(fig)


def test_scatter_marks_a_second_column_by_marker_shape():
    import matplotlib.pyplot as plt

    from singledir.reporting.figures import plot_scatter

    df = pd.DataFrame({"x": [0.1, 0.2, 0.3, 0.4], "y": [1, 2, 3, 4], "lr": [0.1, 0.1, 0.01, 0.01],
                       "bs": [32, 128, 32, 128]})
    fig = plot_scatter(df, "x", "y", group="lr", marker_by="bs", annotate_rho=False)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    title = fig.axes[0].get_legend().get_title().get_text()
    plt.close(fig)
    assert labels == ["lr = 0.01", "lr = 0.1", "bs = 32", "bs = 128"]
    assert title == "colour: lr, marker: bs"  # the legend says which column each encoding shows


def test_scatter_with_more_groups_than_colours_never_repeats_a_colour():
    """Eleven ConvNet layers drew layer 1 and layer 11 in the same tab10 blue (issue 16 item 14)."""
    import matplotlib.pyplot as plt

    from singledir.reporting.figures import plot_scatter

    names = [f"{d:02d}: features.{3 * d}" for d in range(1, 12)]
    df = pd.DataFrame({"x": np.tile([0.1, 0.2, 0.3], 11), "y": np.arange(33.0), "layer": np.repeat(names, 3)})
    fig = plot_scatter(df, "x", "y", group="layer")
    colours = [tuple(np.round(c.get_facecolor()[0][:3], 4)) for c in fig.axes[0].collections]
    plt.close(fig)
    assert len(colours) == 11 and len(set(colours)) == 11
