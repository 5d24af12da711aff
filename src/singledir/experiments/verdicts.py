"""The verdict rules: how a claim's statistics become ``reproduced`` / ``not reproduced`` / ``inconclusive``.

Every verdict in the report comes from one of the rules below, declared here before any result is seen
(the statistics themselves come from :mod:`singledir.stats`):

- :func:`sign_verdict` -- a claim "X goes with Y in direction s": ``reproduced`` when the statistic has
  the claimed sign and ``p < ALPHA``; ``not reproduced`` when it has the opposite sign and ``p < ALPHA``;
  ``inconclusive`` otherwise (not significant, fewer than ``min_n`` observations, an undefined statistic,
  or a training target that was not reached).
- :func:`directional_verdict` -- the three-outcome rule for a directional effect with a 95% interval and
  a smallest effect of interest; :func:`equivalence_verdict` -- the TOST-style rule for "no effect":
  reproduced when the interval lies inside ``(-bound, bound)``.
- :func:`correlation_stability`, :func:`interval_margin`, :func:`p_margin`, :func:`stability_lines` -- how
  stable a verdict is: the margin of the deciding interval end to its threshold and, for correlations,
  the share of same-size parametric replications that give the same verdict (the report's stability line).
- :func:`combine` -- a claim made of several parts: ``reproduced`` when every part is; ``not reproduced``
  when any part is; ``inconclusive`` otherwise.
- :data:`REPRODUCED`, :data:`NOT_REPRODUCED`, :data:`INCONCLUSIVE`, :data:`VERDICTS`, :data:`ALPHA`.
- Two outcomes that are not verdicts on the claim: :data:`ERROR` (the claim's code raised; the report shows
  the traceback and ``singledir reproduce`` exits 1) and :data:`SKIPPED` (the claim does not apply to
  these settings, e.g. a ConvNet claim on a 1-d dataset; the reason is printed). :data:`OUTCOMES` is all five.

Example::

    from singledir import stats
    from singledir.experiments.verdicts import sign_verdict
    c = stats.spearman(corruption, auc)
    verdict, reason = sign_verdict(c["rho"], c["p"], -1, n=c["n"], min_n=4)
"""

from __future__ import annotations

import math

import numpy as np

from singledir.stats import ALPHA

__all__ = ["ALPHA", "ERROR", "INCONCLUSIVE", "NOT_REPRODUCED", "OUTCOMES", "REPRODUCED", "SKIPPED", "VERDICTS",
           "RULES_SUMMARY", "combine", "correlation_stability", "directional_verdict", "equivalence_verdict",
           "interval_margin", "p_margin", "sign_verdict", "stability_lines"]

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
ERROR, SKIPPED = "error", "skipped"
OUTCOMES = (*VERDICTS, ERROR, SKIPPED)

# What the report's opening says the words mean: every kind of rule the claims use, in their words. Each
# claim prints its own rule in full; this is the summary a reader sees first.
RULES_SUMMARY = (
    "Every verdict follows the rule printed with its claim, fixed in the code before this run (where "
    "earlier runs changed a rule, that history is printed under it). The rules are of five kinds. "
    "(1) A rank correlation claimed in one direction (ensemble, hyperparameters, over training, ConvNet "
    "early-layer selectivity), with its 95% interval and a smallest effect of interest |rho| = 0.3: "
    "reproduced when the interval lies on the paper's side of 0 and p < 0.05; not reproduced when the "
    "interval excludes every rho of at least 0.3 in the paper's direction (a decisive null, or an effect "
    "the other way); inconclusive otherwise. (2) A group comparison (Mann-Whitney U, two-sided; batch "
    "norm, dropout): reproduced when in the paper's direction with p < 0.05, not reproduced when "
    "significant the other way, inconclusive otherwise. (3) A claim of no effect (selectivity and mutual "
    "information vs importance): reproduced when the 95% interval of rho lies inside (-0.3, 0.3), not "
    "reproduced when it lies entirely outside, inconclusive otherwise. (4) A fall with label corruption: "
    "reproduced on a monotone (isotonic) trend test with p < 0.05; not reproduced when the trend is "
    "significantly the other way or the interval of rho excludes every decrease of at least 0.3. "
    "(5) Non-inferiority (early stopping at the peak of the ablation curve's area): reproduced when the "
    "95% interval of the test accuracy lost lies above -0.01, not reproduced when it lies below, "
    "inconclusive otherwise. A claim of several parts is reproduced when every part is and not reproduced "
    "when any part is; networks that miss their training target make a part inconclusive. Two outcomes "
    "are not verdicts: error (the claim's code raised; its traceback is shown, and the command exits 1) "
    "and skipped (the claim does not apply to these settings; the reason is shown)."
)


def defined(*vals) -> bool:
    """True when every value is a finite number (an undefined statistic is NaN or None)."""
    return all(v is not None and math.isfinite(float(v)) for v in vals)


def sign_verdict(stat, p, expected_sign: int, *, n: int | None = None, min_n: int = 3,
                 target_reached: bool = True, alpha: float = ALPHA) -> tuple[str, str]:
    """The pre-declared sign + significance rule (see the module docstring) -> ``(verdict, reason)``."""
    want = "positive" if expected_sign > 0 else "negative"
    if not target_reached:
        return INCONCLUSIVE, "some networks did not reach their training target"
    if n is not None and n < min_n:
        return INCONCLUSIVE, f"too few observations (n={n} < {min_n})"
    if not (defined(stat) and defined(p)):
        return INCONCLUSIVE, "statistic undefined (constant values?)"
    if p >= alpha:
        return INCONCLUSIVE, f"not significant (p={p:.3g} >= {alpha})"
    if np.sign(stat) == np.sign(expected_sign):
        return REPRODUCED, f"{want} and significant (p={p:.3g} < {alpha})"
    return NOT_REPRODUCED, f"significant in the opposite direction to the claimed {want} one (p={p:.3g})"


def significant_sign(stat, p, *, alpha: float = ALPHA) -> str:
    """A descriptive two-sided reading of ``stat``: reproduced (> 0, p < alpha), not (< 0, p < alpha), else inconclusive.

    For parts shown but not in the verdict (e.g. the 5-best vs 5-worst comparison)."""
    if not (defined(stat) and defined(p)) or p >= alpha:
        return INCONCLUSIVE
    return REPRODUCED if stat > 0 else NOT_REPRODUCED


def directional_verdict(effect, ci_low, ci_high, sign: int, bound: float, *, p=None, alpha: float = ALPHA,
                        fit: bool = True) -> tuple[str, str]:
    """Three-outcome rule for "the effect goes in direction ``sign``, by at least ``bound``".

    With ``e = sign * effect`` and the 95% interval oriented the same way, checked in this order (so a
    significant effect smaller than ``bound`` everywhere in its interval is ``not reproduced``):

    - ``not reproduced`` when the interval's upper end is below ``bound`` (an effect of at least the
      smallest effect of interest in the claimed direction is excluded -- a decisive null, or an effect
      the other way);
    - ``reproduced`` when the interval's lower end is above 0 (and ``p < alpha`` when a p-value is
      given): the claimed direction, significant, and an effect of ``bound`` not excluded;
    - ``inconclusive`` otherwise, or when ``fit`` is False (the networks did not reach their common fit).
    """
    if not fit:
        return INCONCLUSIVE, "some networks did not reach their training target"
    if not defined(effect, ci_low, ci_high):
        return INCONCLUSIVE, "statistic undefined (too few or constant values)"
    lo, hi = sorted((sign * float(ci_low), sign * float(ci_high)))
    want = "positive" if sign > 0 else "negative"
    if hi < bound:
        return NOT_REPRODUCED, (f"a {want} effect of at least {bound:g} is excluded (interval end {sign * hi:.3g} "
                                f"on the claimed side)")
    if lo > 0 and (not defined(p) or p < alpha):
        return REPRODUCED, f"{want}, interval excludes 0" + (f" (p={p:.3g})" if defined(p) else "")
    return INCONCLUSIVE, f"interval [{min(ci_low, ci_high):.3g}, {max(ci_low, ci_high):.3g}] contains 0 and reaches {sign * bound:g}"


def equivalence_verdict(ci_low, ci_high, bound: float, *, fit: bool = True) -> tuple[str, str]:
    """TOST-style rule for "no effect": reproduced when the interval lies inside ``(-bound, bound)``.

    Not reproduced when the interval lies entirely outside it (an effect of at least ``bound`` either way);
    inconclusive otherwise.
    """
    if not fit:
        return INCONCLUSIVE, "some networks did not reach their training target"
    if not defined(ci_low, ci_high):
        return INCONCLUSIVE, "interval undefined"
    lo, hi = sorted((float(ci_low), float(ci_high)))
    if -bound < lo and hi < bound:
        return REPRODUCED, f"interval [{lo:.2f}, {hi:.2f}] inside (-{bound:g}, {bound:g})"
    if lo >= bound or hi <= -bound:
        return NOT_REPRODUCED, f"interval [{lo:.2f}, {hi:.2f}] outside (-{bound:g}, {bound:g})"
    return INCONCLUSIVE, f"interval [{lo:.2f}, {hi:.2f}] crosses +-{bound:g}"


def combine(parts: dict[str, str]) -> tuple[str, str]:
    """Combine part verdicts ``{name: verdict}``: all reproduced -> reproduced; any not -> not; else inconclusive."""
    vals = list(parts.values())
    if vals and all(v == REPRODUCED for v in vals):
        return REPRODUCED, "every part reproduced"
    bad = [k for k, v in parts.items() if v == NOT_REPRODUCED]
    if bad:
        return NOT_REPRODUCED, f"not reproduced: {', '.join(bad)}"
    unsure = [k for k, v in parts.items() if v != REPRODUCED]
    return INCONCLUSIVE, f"inconclusive: {', '.join(unsure)}"


# ---------------------------------------------------------------------------- how stable is a verdict
N_REPLICATES = 4000  # parametric replicates behind the "same verdict in a replication" share


def _margin_text(ends: dict[str, float]) -> tuple[str, float]:
    """``ends``: {description of a deciding condition: signed distance past its threshold (> 0: met)}.
    Returns the text of the condition that decides (met, or nearest to being met) and its distance."""
    name, dist = max(ends.items(), key=lambda kv: kv[1])
    return (f"{name} by {dist:.3g}" if dist > 0 else f"{name.replace('past', 'short of')} by {-dist:.3g}"), dist


def correlation_stability(rho, n: int, *, rule: str, sign: int = 1, bound: float = 0.3, k: int = 0,
                          alpha: float = ALPHA, seed: int = 0) -> dict:
    """How stable the verdict of a Spearman part is, from the numbers the part has.

    ``rule``: ``"directional"`` (:func:`directional_verdict` with ``sign`` and ``bound``) or
    ``"equivalence"`` (:func:`equivalence_verdict`). Returns ``{"margin", "same_verdict_share", "text"}``:
    ``margin`` is how far the deciding interval end lies past (> 0) or short of (< 0) its threshold;
    ``same_verdict_share`` the share of ``N_REPLICATES`` replications of the same size (rho drawn on the
    Fisher-z scale around the observed rho with the Bonett-Wright standard error -- a parametric
    bootstrap over networks) whose rule gives the same verdict.
    """
    from scipy import stats as st

    from singledir.stats import power

    if not defined(rho) or n - 3 - k <= 0:
        return {"margin": math.nan, "same_verdict_share": math.nan, "text": "undefined (too few observations)"}
    lo, hi = power.spearman_ci(rho, n, k=k)
    z = math.atanh(float(np.clip(rho, -0.999999, 0.999999)))
    draws = np.tanh(np.random.default_rng(seed).normal(z, power.spearman_se(rho, n, k), N_REPLICATES))
    zc = st.norm.ppf(0.5 + (1 - alpha) / 2)
    se = np.sqrt((1 + draws ** 2 / 2) / (n - 3 - k))
    zd = np.arctanh(np.clip(draws, -0.999999, 0.999999))
    los, his = np.tanh(zd - zc * se), np.tanh(zd + zc * se)
    if rule == "equivalence":
        observed = equivalence_verdict(lo, hi, bound)[0]
        text, dist = _margin_text({f"the interval's outer end past +-{bound:g} inwards": min(bound - hi, lo + bound),
                                   f"the interval's inner end past +-{bound:g} outwards": max(lo - bound, -bound - hi)})
        inside = (los > -bound) & (his < bound)
        outside = (los >= bound) | (his <= -bound)
        rep = np.where(inside, REPRODUCED, np.where(outside, NOT_REPRODUCED, INCONCLUSIVE))
    else:
        observed = directional_verdict(rho, lo, hi, sign, bound)[0]
        olo, ohi = sorted((sign * lo, sign * hi))
        text, dist = _margin_text({"the claimed-side interval end past 0": olo,
                                   f"the far interval end past the bound {sign * bound:g}": bound - ohi})
        a, b = np.minimum(sign * los, sign * his), np.maximum(sign * los, sign * his)
        rep = np.where(b < bound, NOT_REPRODUCED, np.where(a > 0, REPRODUCED, INCONCLUSIVE))
    share = float(np.mean(rep == observed))
    return {"margin": float(dist), "same_verdict_share": share,
            "text": f"{text}; {share:.0%} of same-size replications (parametric, {N_REPLICATES}) give {observed}"}


def interval_margin(ci_low, ci_high, *, reproduced_if_low_above: float, not_if_high_below: float) -> dict:
    """Margin of a non-inferiority-type rule: reproduced when ``ci_low`` > a threshold, not reproduced when
    ``ci_high`` < another. ``{"margin", "text"}`` as in :func:`correlation_stability` (no replication share)."""
    if not defined(ci_low, ci_high):
        return {"margin": math.nan, "text": "undefined (no interval)"}
    text, dist = _margin_text({f"lower end past {reproduced_if_low_above:g}": ci_low - reproduced_if_low_above,
                               f"upper end past {not_if_high_below:g}": not_if_high_below - ci_high})
    return {"margin": float(dist), "text": text}


def p_margin(p, alpha: float = ALPHA) -> dict:
    """For a significance rule: ``p`` against ``alpha`` (``{"margin": alpha - p, "text"}``)."""
    if not defined(p):
        return {"margin": math.nan, "text": "p undefined"}
    return {"margin": float(alpha - p), "text": f"p = {p:.3g} vs {alpha:g} ({'below' if p < alpha else 'above'} "
                                                f"by a factor {max(p, alpha) / max(min(p, alpha), 1e-300):.2g})"}


def decided(verdict: str, pw: dict | None) -> None:
    """Drop ``n_to_decide`` from a power dict once ``verdict`` is decided: the report says how many
    networks would decide a claim only while it is undecided."""
    if pw is not None and verdict in (REPRODUCED, NOT_REPRODUCED):
        pw.pop("n_to_decide", None)


def stability_lines(parts) -> list[str]:
    """One line per in-verdict part: its ``numbers["stability"]`` text, or its p against alpha."""
    lines = []
    for part in parts:
        if not part.in_verdict:
            continue
        st_ = part.numbers.get("stability") if isinstance(part.numbers, dict) else None
        if st_ is None and isinstance(part.numbers, dict) and "p" in part.numbers:
            st_ = p_margin(part.numbers.get("p"))
        if st_ is not None:
            lines.append(f"{part.name}: {st_['text']}")
    return lines
