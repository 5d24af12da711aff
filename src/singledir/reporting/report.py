"""Report writers for ``singledir reproduce``: one self-contained HTML page, a Markdown twin, results.json.

:func:`write_report(out_dir, doc)` takes the results dict built by :mod:`singledir.experiments.reproduce`
(``doc["summary"]``, ``doc["claims"][name]`` with statement, rule, verdict, parts, tables, figures,
settings ...) and writes, each atomically (temporary file + rename):

- ``index.html`` -- figures embedded as base64 PNG, so the page can be mailed or opened anywhere;
- ``report.md`` -- the same content, figures linked as ``figures/<name>.png``;
- ``results.json`` -- ``doc`` itself: every number behind every verdict, settings, versions, fingerprints.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from singledir.experiments.verdicts import RULES_SUMMARY
from singledir.io import atomic_write_json, atomic_write_text

VERDICT_COLORS = {"reproduced": "#1a7f37", "not reproduced": "#cf222e", "inconclusive": "#9a6700",
                  "error": "#000000", "skipped": "#6e7781"}

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
color:#1f2328;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #d0d7de;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{font-weight:600;padding:1px 6px;border-radius:4px;color:#fff;white-space:nowrap}
figure{display:inline-block;margin:.5em 1em .5em 0;max-width:480px;vertical-align:top}
figure img{max-width:100%}figcaption{font-size:.85em;color:#57606a}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.8em}.meta td{border:none;padding:1px 8px 1px 0}
blockquote{border-left:4px solid #d0d7de;margin:.5em 0;padding:.2em 1em;color:#57606a}
div.scroll{overflow-x:auto;max-width:100%}td.id{white-space:nowrap;font-family:monospace;font-size:.85em}
"""


# ---------------------------------------------------------------------------- small helpers
def _statistics_line(doc: dict) -> str:
    s = doc.get("statistics") or {}
    return "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in s.items()) or "n/a"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return ""
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def _minutes(seconds) -> str:
    seconds = float(seconds or 0)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min ({seconds:.0f} s)"


# Columns a reader scans first in per-network tables (what the row is, then its deciding numbers); the long
# run id goes last (it names the directory). "p" is a p-value here, next to its rho (corruption is "corrupt").
_FIRST = ("model", "network", "corrupt", "seed", "epoch", "setting", "lr", "batch_size", "dropout", "batchnorm", "width",
          "depth", "layer", "measure", "rho", "p", "p_value", "ci_low", "ci_high", "auc", "nauc", "test_acc",
          "train_acc", "gap", "target_reached")
_LAST = ("run", "ci_method", "ci_note")
FOLD_ROWS = 12  # longer tables are folded (<details>) in the HTML page


def _columns(records: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in records:
        cols.extend(k for k in r if k not in cols)
    first = [c for c in _FIRST if c in cols]
    last = [c for c in _LAST if c in cols]
    return first + [c for c in cols if c not in first and c not in last] + last


def _badge(verdict: str) -> str:
    color = VERDICT_COLORS.get(verdict, "#57606a")
    return f'<span class="verdict" style="background:{color}">{html.escape(verdict)}</span>'


def _html_table(records: list[dict], max_rows: int = 60) -> str:
    if not records:
        return "<p><em>(empty)</em></p>"
    cols = _columns(records)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = []
    for r in records[:max_rows]:
        cells = []
        for c in cols:
            v = r.get(c)
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cls = ' class="id"' if c == "run" else cls
            cells.append(f"<td{cls}>{html.escape(_fmt(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p><em>{len(records) - max_rows} more rows in results.json</em></p>" if len(records) > max_rows else ""
    table = f"<div class='scroll'><table><tr>{head}</tr>{''.join(rows)}</table></div>{more}"
    if len(records) > FOLD_ROWS:
        return f"<details><summary>{len(records)} rows (click to show)</summary>{table}</details>"
    return table


def _md_table(records: list[dict], max_rows: int = 60) -> str:
    if not records:
        return "_(empty)_\n"
    cols = _columns(records)
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in records[:max_rows]:
        lines.append("| " + " | ".join(esc(_fmt(r.get(c))) for c in cols) + " |")
    if len(records) > max_rows:
        lines.append(f"\n_{len(records) - max_rows} more rows in results.json_")
    return "\n".join(lines) + "\n"


def _png_data(out: Path, rel: str) -> str | None:
    path = out / rel
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _parts_records(claim: dict) -> list[dict]:
    return [{"part": p["name"], "verdict": p["verdict"], "statistic": p["statistic"], "why": p["reason"],
             "counts for the verdict": p["in_verdict"]} for p in claim.get("parts", [])]


def _machine_line(doc: dict) -> str:
    m = doc.get("machine", {})
    cuda = f" ({m['cuda']})" if m.get("cuda") else ""
    return (f"{m.get('platform')}, {m.get('cpu_count')} CPUs, Python {m.get('python')}, torch {m.get('torch')}, "
            f"device {m.get('device')}{cuda}, {m.get('jobs')} job(s)")


def _analyses_line(doc: dict) -> str:
    """How many per-run analyses were computed now and which came from the cache (``cache.analyses``)."""
    rows = doc.get("cache", {}).get("analyses", [])
    cached = [f"{r['analysis']}({r['run']})" for r in rows if r.get("cached")]
    shown = cached[:12] + ([f"... ({len(cached) - 12} more)"] if len(cached) > 12 else [])
    text = f"{len(rows) - len(cached)} computed by this invocation, {len(cached)} from the cache"
    return html.escape(text + (": " + ", ".join(shown) if cached else ""))


def _code_line(doc: dict) -> str:
    c = doc.get("code", {})
    rev = c.get("git_revision")
    return f"singledir {c.get('singledir')}" + (f", git {rev[:12]}" if rev else " (no git revision)")


# ---------------------------------------------------------------------------- HTML
def render_html(out: Path, doc: dict) -> str:
    title = f"singledir: reproducing Morcos et al. 2018 (preset {doc.get('preset')})"
    status = "" if doc.get("complete") else " <strong>(incomplete: the reproduction is still running or was interrupted)</strong>"
    h = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
         f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
         "<p>On the importance of single directions for generalization (Morcos, Barrett, Rabinowitz, Botvinick, "
         f"ICLR 2018). {html.escape(RULES_SUMMARY)}</p>",
         "<table class='meta'>",
         f"<tr><td>command</td><td><code>{html.escape(str(doc.get('command') or ''))}</code></td></tr>",
         f"<tr><td>started</td><td>{html.escape(str(doc.get('started')))}; total wall time "
         f"{_minutes(doc.get('wall_seconds'))} (CPU time of all processes: {_minutes(doc.get('cpu_seconds'))})"
         f"{status}</td></tr>",
         f"<tr><td>machine</td><td>{html.escape(_machine_line(doc))}</td></tr>",
         f"<tr><td>code</td><td>{html.escape(_code_line(doc))}</td></tr>",
         f"<tr><td>preset</td><td>{'<br>'.join(html.escape(n) for n in doc.get('preset_notes', []))}</td></tr>",
         f"<tr><td>statistics</td><td>{html.escape(_statistics_line(doc))}</td></tr>",
         f"<tr><td>runs</td><td>{len(doc.get('runs', {}))} networks "
         f"({len(doc.get('cache', {}).get('trained_now', []))} trained by this invocation, "
         f"{len(doc.get('cache', {}).get('reused', []))} reused from the cache)</td></tr>",
         f"<tr><td>analyses</td><td>{_analyses_line(doc)}</td></tr></table>",
         "<h2 id='summary'>Summary</h2>",
         "<table id='summary-table'><tr><th>claim</th><th>verdict</th><th>key statistic</th><th>wall time (CPU time)</th></tr>"]
    for s in doc.get("summary", []):
        h.append(f"<tr><td><a href='#{s['claim']}'>{html.escape(s['claim'])}</a>: {html.escape(s['title'])}</td>"
                 f"<td>{_badge(s['verdict'])}</td><td>{html.escape(s['key_statistic'])}</td>"
                 f"<td class='num'>{_minutes(s['wall_seconds'])} ({_minutes(s.get('cpu_seconds'))})</td></tr>")
    h.append("</table>")
    if doc.get("errors"):
        h.append("<p><strong>Errors:</strong></p><ul>" + "".join(f"<li>{html.escape(e)}</li>" for e in doc["errors"]) + "</ul>")

    for name, c in doc.get("claims", {}).items():
        h.append(f"<section class='claim' id='{html.escape(name)}'>")
        h.append(f"<h2>{html.escape(name)}: {html.escape(c['title'])}</h2>")
        h.append(f"<p><strong>Verdict:</strong> {_badge(c['verdict'])} {html.escape(c['reason'])}</p>")
        if c.get("stability"):
            h.append("<p><strong>How stable is this verdict.</strong> Margin of the deciding number to its "
                     "threshold, per part in the verdict:</p><ul class='stability'>"
                     + "".join(f"<li>{html.escape(line)}</li>" for line in c["stability"]) + "</ul>")
        h.append(f"<p><strong>Paper's claim.</strong></p><blockquote>{html.escape(c['statement'])}</blockquote>")
        h.append(f"<p><strong>Rule (fixed in the code before this run).</strong> {html.escape(c['rule'])}</p>")
        if c.get("rule_history"):
            h.append(f"<p><strong>Rule history.</strong> {html.escape(c['rule_history'])}</p>")
        for f in c.get("figures", []):
            data = _png_data(out, f["png"])
            img = f"<img src='{data}' alt='{html.escape(f['name'])}'>" if data else "<em>(figure missing)</em>"
            h.append(f"<figure>{img}<figcaption>{html.escape(f['caption'])} "
                     f"(<a href='{html.escape(f['svg'])}'>SVG</a>)</figcaption></figure>")
        h.append("<h3>Statistics</h3>" + _html_table(_parts_records(c)))
        for tname, records in c.get("tables", {}).items():
            h.append(f"<h3>{html.escape(tname)}</h3>" + _html_table(records))
        for note in c.get("notes", []):
            h.append(f"<pre>{html.escape(note)}</pre>" if "\n" in note else f"<p><em>Note:</em> {html.escape(note)}</p>")
        h.append(f"<p>Wall time: {_minutes(c.get('wall_seconds'))}; networks: {len(c.get('runs', []))} "
                 f"(<code>runs/</code>).</p>")
        h.append("<details><summary>Exact settings</summary><pre>"
                 + html.escape(json.dumps(c.get("settings"), indent=1)) + "</pre></details>")
        h.append("<details><summary>Run directories</summary><pre>" + html.escape("\n".join(c.get("runs", [])))
                 + "</pre></details></section>")
    h.append("<h2>Data</h2>" + _html_table([{"dataset": v.get("name"), "fingerprint": k, "source": v.get("source"),
                                              "train": _fmt(v.get("n_train") or v.get("train_shape")),
                                              "test": _fmt(v.get("n_test") or v.get("test_shape"))}
                                             for k, v in doc.get("data", {}).items()]))
    h.append("<p>Every number above is in <code>results.json</code>; networks and cached analyses are in "
             "<code>runs/</code>.</p></body></html>")
    return "\n".join(h)


# ---------------------------------------------------------------------------- Markdown
def render_markdown(doc: dict) -> str:
    m = [f"# singledir: reproducing Morcos et al. 2018 (preset {doc.get('preset')})", "",
         f"On the importance of single directions for generalization (ICLR 2018). {RULES_SUMMARY}", "",
         f"- command: `{doc.get('command') or ''}`",
         f"- started {doc.get('started')}; total wall time {_minutes(doc.get('wall_seconds'))} "
         f"(CPU time of all processes: {_minutes(doc.get('cpu_seconds'))})"
         + ("" if doc.get("complete") else " **(incomplete)**"),
         f"- machine: {_machine_line(doc)}", f"- code: {_code_line(doc)}",
         *[f"- preset: {n}" for n in doc.get("preset_notes", [])], f"- statistics: {_statistics_line(doc)}",
         "", "## Summary", "",
         "| claim | verdict | key statistic | wall time (CPU time) |", "|---|---|---|---|"]
    for s in doc.get("summary", []):
        m.append(f"| [{s['claim']}](#{s['claim']}) | **{s['verdict']}** | {s['key_statistic'].replace('|', chr(92) + '|')} | "
                 f"{_minutes(s['wall_seconds'])} ({_minutes(s.get('cpu_seconds'))}) |")
    if doc.get("errors"):
        m += ["", "**Errors:**", ""] + [f"- {e}" for e in doc["errors"]]
    for name, c in doc.get("claims", {}).items():
        m += ["", f'<a id="{name}"></a>', f"## {name}: {c['title']}", "", f"**Verdict: {c['verdict']}** -- {c['reason']}",
              *(["", "**How stable is this verdict** (margin of the deciding number to its threshold, per part "
                 "in the verdict):", "", *[f"- {line}" for line in c["stability"]]] if c.get("stability") else []),
              "", f"> {c['statement']}", "", f"**Rule (fixed in the code before this run).** {c['rule']}", ""]
        if c.get("rule_history"):
            m += [f"**Rule history.** {c['rule_history']}", ""]
        for f in c.get("figures", []):
            m += [f"![{f['name']}]({f['png']})", "", f"*{f['caption']}*", ""]
        m += ["### Statistics", "", _md_table(_parts_records(c))]
        for tname, records in c.get("tables", {}).items():
            m += [f"### {tname}", "", _md_table(records)]
        for note in c.get("notes", []):
            m += (["```", note, "```", ""] if "\n" in note else [f"*Note:* {note}", ""])
        m += [f"Wall time: {_minutes(c.get('wall_seconds'))}; networks: {len(c.get('runs', []))}.", "",
              "<details><summary>Exact settings</summary>", "", "```json", json.dumps(c.get("settings"), indent=1),
              "```", "", "</details>"]
    return "\n".join(m) + "\n"


def write_report(out_dir, doc: dict) -> dict[str, Path]:
    """Write index.html, report.md and results.json into ``out_dir`` (atomically); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "report.md", "html": out / "index.html"}
    atomic_write_json(paths["json"], doc, indent=1)
    atomic_write_text(paths["md"], render_markdown(doc))
    atomic_write_text(paths["html"], render_html(out, doc))
    return paths
