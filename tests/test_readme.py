"""The README's verdict table is generated from a reproduction's summary (scripts/readme_table.py), not typed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "scripts" / "readme_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_verdict_table_matches_the_committed_summary():
    assert _tool().main(["--check"]) == 0


def test_the_table_is_rendered_from_results_json_rows(tmp_path):
    tool = _tool()
    doc = {"summary": [{"claim": "ensemble", "verdict": "not reproduced", "key_statistic": "rho(a | b) = 0.1",
                        "wall_seconds": 150.0}]}
    readme = f"intro\n{tool.BEGIN}\nold table\n{tool.END}\nrest\n"
    out = tool.render(readme, doc)
    assert "| ensemble | not reproduced | rho(a \\| b) = 0.1 | 2.5 min |" in out
    assert "old table" not in out and out.startswith("intro\n") and out.endswith("rest\n")
    summary = json.loads((ROOT / "docs" / "quick-summary.json").read_text())
    assert [r["claim"] for r in summary["summary"]][:1] == ["label-corruption"]
