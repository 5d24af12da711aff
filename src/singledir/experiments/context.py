"""What a claim gets (:class:`Context`) and what it returns (:class:`ClaimResult`).

A claim module reads top to bottom: settings -> ``ctx.train(configs)`` -> per-run jobs of
:mod:`singledir.analysis.jobs` via ``ctx.analyze`` -> statistics (:mod:`singledir.stats`) -> figures via ``ctx.figure`` ->
a :class:`ClaimResult` whose verdict comes from the pre-declared rule in its ``rule`` text (see
:mod:`.verdicts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from singledir.experiments.runner import Runner
from singledir.io import jsonable


@dataclass
class Context:
    """Everything one claim needs: its settings, the runner (run cache + pool), where figures go."""

    claim: str
    preset: str
    settings: dict
    runner: Runner
    figures_dir: Path
    progress: bool = True
    figures: list[dict] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)

    def train(self, configs: list[dict], desc: str) -> list[Path]:
        """Complete run directories for ``configs`` (cached; see :meth:`Runner.train`)."""
        dirs = self.runner.train(configs, desc=f"{self.claim}: {desc}")
        self.runs.extend(d.name for d in dirs if d.name not in self.runs)
        return dirs

    def analyze(self, fn, run_dirs, params: dict | list[dict], desc: str) -> list[dict[str, pd.DataFrame]]:
        """``fn(run_dir, **params)`` for each run, cached (see :meth:`Runner.analyze`).

        ``params``: one dict for all runs or one per run. The runner passes its device to every ``fn``
        that takes one; the device is part of the cache key (see :func:`.runner.analysis_key`).
        """
        return self.runner.analyze(fn, run_dirs, params, desc=f"{self.claim}: {desc}")

    def figure(self, fig, name: str, caption: str) -> None:
        """Save a matplotlib figure as ``figures/<claim>-<name>.{png,svg}`` and remember it for the report."""
        from singledir.reporting.figures import save_figure

        stem = f"{self.claim}-{name}"
        save_figure(fig, self.figures_dir / stem, formats=("png", "svg"))
        self.figures.append({"name": stem, "png": f"figures/{stem}.png", "svg": f"figures/{stem}.svg",
                             "caption": caption})


@dataclass
class Part:
    """One tested piece of a claim: its statistic, the verdict of the rule, and whether it counts."""

    name: str
    verdict: str
    reason: str
    statistic: str
    numbers: dict
    in_verdict: bool = True

    def to_dict(self) -> dict:
        return {"name": self.name, "verdict": self.verdict, "reason": self.reason, "statistic": self.statistic,
                "numbers": jsonable(self.numbers), "in_verdict": self.in_verdict}


@dataclass
class ClaimResult:
    """A claim's evidence, statistics and verdict, as the report shows it."""

    name: str
    title: str
    statement: str
    rule: str
    verdict: str
    reason: str
    key_statistic: str
    parts: list[Part]
    settings: dict
    figures: list[dict]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    numbers: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    error: str | None = None
    rule_history: str | None = None  # how this rule changed after earlier runs (the module's RULE_HISTORY)
    stability: list[str] = field(default_factory=list)  # how stable the verdict is, one line per part

    def to_dict(self) -> dict:
        return {
            "name": self.name, "title": self.title, "statement": self.statement, "rule": self.rule,
            "rule_history": self.rule_history, "stability": self.stability,
            "verdict": self.verdict, "reason": self.reason, "key_statistic": self.key_statistic,
            "parts": [p.to_dict() for p in self.parts], "settings": self.settings, "figures": self.figures,
            "tables": {k: frame_records(v) for k, v in self.tables.items()}, "numbers": jsonable(self.numbers),
            "notes": self.notes, "runs": self.runs, "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds, "error": self.error,
        }


def frame_records(df: pd.DataFrame) -> list[dict]:
    return jsonable(df.to_dict(orient="records"))
