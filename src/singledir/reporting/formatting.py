"""Short text forms of statistics for the report and the CLI: p-values and correlation summaries.

- :func:`fmt_p` -- ``0.012`` / ``3.4e-05`` / ``n/a`` (None or NaN).
- :func:`fmt_ci` -- ``[-0.35, 0.15]``, or ``[interval undefined: <why>]`` for a degenerate interval
  (``ci_note`` set: zero width, or a Fisher-z interval at rho = +-1), never a point printed as a result.
- :func:`fmt_corr` -- one line for a :func:`singledir.stats.spearman` result, e.g.
  ``Spearman rho(AUC, p) = -0.52, p = 0.012, n = 12, 95% CI [-0.80, -0.10]``.
"""

from __future__ import annotations

import math

__all__ = ["fmt_ci", "fmt_corr", "fmt_p"]


def _defined(v) -> bool:
    return v is not None and math.isfinite(float(v))


def fmt_p(p) -> str:
    """A p-value to two significant digits (scientific below 1e-3); ``n/a`` when undefined."""
    if not _defined(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def fmt_ci(c: dict, digits: int = 2, *, low: str = "ci_low", high: str = "ci_high", note: str = "ci_note") -> str:
    """``[lo, hi]`` of a result dict; ``[interval undefined: why]`` when degenerate or missing."""
    if c.get(note):
        return f"[interval undefined: {c[note]}]"
    if not (_defined(c.get(low)) and _defined(c.get(high))):
        return "[interval undefined]"
    return f"[{c[low]:.{digits}f}, {c[high]:.{digits}f}]"


def fmt_corr(c: dict, name: str = "") -> str:
    """One-line summary of a :func:`singledir.stats.spearman` result (``name`` follows ``rho``)."""
    if not _defined(c.get("rho")):
        return f"Spearman rho{name} undefined (n={c['n']})"
    ci = ""
    if _defined(c.get("ci_low")) or c.get("ci_note"):
        ci = f", 95% CI {fmt_ci(c)}"
    return f"Spearman rho{name} = {c['rho']:.2f}, p = {fmt_p(c['p'])}, n = {c['n']}{ci}"
