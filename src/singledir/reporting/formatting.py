"""Short text forms of statistics for the report and the CLI: p-values and correlation summaries.

- :func:`fmt_p` -- ``0.012`` / ``3.4e-05`` / ``n/a`` (None or NaN).
- :func:`fmt_ci` -- ``[-0.35, 0.15]``, or ``[interval undefined: <why>]`` for a degenerate interval
  (``ci_note`` set: zero width, or a Fisher-z interval at rho = +-1), never a point printed as a result.
- :func:`fmt_corr` -- one line for a :func:`singledir.stats.spearman` result, e.g.
  ``Spearman rho(AUC, p) = -0.52, p = 0.012, n = 12, 95% CI [-0.80, -0.10]``.
- :func:`fmt_power` -- the power numbers of a part (:func:`singledir.stats.power.spearman_power`);
  :func:`fmt_corr_power` -- a correlation and its power numbers in one line that states n once.
- :func:`fmt_mann_whitney` -- one line for :func:`singledir.stats.power.mann_whitney_with_power`.
"""

from __future__ import annotations

import math

__all__ = ["fmt_ci", "fmt_corr", "fmt_corr_power", "fmt_mann_whitney", "fmt_p", "fmt_power"]


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


def fmt_power(pw: dict, *, effect: bool = False, n: bool = True) -> str:
    """One line: ``n = 12; detects |rho| >= 0.73 at 80% power; n ~ 30 would decide ...`` (``effect``: with
    rho and CI; ``n=False``: without ``n = 12``, for a line that states it already)."""
    bits = [f"n = {pw.get('n')}"] if n else []
    if effect and _defined(pw.get("effect")):
        ci = f" {fmt_ci(pw)}" if _defined(pw.get("ci_low")) and _defined(pw.get("ci_high")) else ""
        bits.append(f"{pw.get('effect_name', 'effect')} = {pw['effect']:.2f}{ci}")
    name = pw.get("effect_name", "effect")
    if pw.get("mde_80") is not None:
        bits.append(f"detects |{name}| >= {pw['mde_80']:.2f} at 80% power")
    else:
        bits.append("too few for 80% power at any effect")
    if pw.get("n_to_decide") is not None:
        bits.append(f"n ~ {pw['n_to_decide']} would decide the observed effect")
    return "; ".join(bits)


def fmt_corr_power(c: dict, name: str = "", *, between: str = "") -> str:
    """:func:`fmt_corr` then :func:`fmt_power` of ``c["power"]``, n stated once (``between``: text put
    between the two, e.g. ``"isotonic trend p = 0.01; "``)."""
    return f"{fmt_corr(c, name)}; {between}{fmt_power(c['power'], n=False)}"


def fmt_mann_whitney(r: dict) -> str:
    """``Mann-Whitney p = 0.029 (smallest possible 0.029), rank-biserial 1.00 [1.00, 1.00], n = 4 vs 4; ...``."""
    eff = f"{r['effect']:.2f}" if _defined(r.get("effect")) else "n/a"
    ci = f" {fmt_ci(r)}" if _defined(r.get("ci_low")) and _defined(r.get("ci_high")) else ""
    mde = r.get("mde_80_rank_biserial")
    return (f"Mann-Whitney p = {fmt_p(r.get('p'))} (smallest possible {fmt_p(r.get('min_p'))}), "
            f"rank-biserial {eff}{ci}, n = {r['n_a']} vs {r['n_b']}; "
            + (f"detects |r| >= {mde:.2f} at 80% power" if mde is not None else "no effect size reaches 80% power "
               "at this n"))
