"""Reporting: paper-style figures (:mod:`.figures`) and report writers.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display needed)::

    from singledir.reporting import plot_curves, save_figure
    fig = plot_curves(result.curves, x="fraction", group="order", xlabel="fraction of units ablated")
    save_figure(fig, "out/ablation")          # out/ablation.png + out/ablation.svg, written atomically
"""

from __future__ import annotations

from singledir.reporting.figures import (
    plot_curves,
    plot_histogram,
    plot_scatter,
    save_figure,
)

__all__ = ["plot_curves", "plot_histogram", "plot_scatter", "save_figure"]
