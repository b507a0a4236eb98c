"""SVG charts of a bench run, written straight from Python (no plotting library:
the bench's dependencies stay out of the runtime package).

One chart per workload: a panel per figure, a bar per server at the median of its
rounds, every round as a dot and a line from the lowest to the highest (the spread).
And one overview: every target's ratio against its threshold. Plus a Markdown page
embedding them with the targets table, ready to paste into docs/performance.md.

    python bench/charts.py build/bench/results-<time>.jsonl   # charts for a finished run
"""

from __future__ import annotations

import json
import re
import sys
from html import escape
from pathlib import Path

COLOURS = {"sscontrold": "#1f77b4", "reference": "#ff7f0e"}
PANEL_W, PANEL_H, PAD = 220, 190, 34


def _fmt(v) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _panel(x0: int, title: str, values: dict, lower_better: bool) -> list[str]:
    """One figure: two bars (medians), dots (rounds) and a min-max line (spread)."""
    out = [f'<text x="{x0 + PANEL_W / 2}" y="16" text-anchor="middle" font-size="12" font-weight="bold">'
           f'{escape(title)}{" (lower is better)" if lower_better else ""}</text>']
    top = max([v for s in values.values() for v in s["all"] if v is not None] +
              [s["median"] or 0 for s in values.values()] + [1e-9])
    base_y, height = PANEL_H - PAD, PANEL_H - PAD - 30
    out.append(f'<line x1="{x0 + 10}" y1="{base_y}" x2="{x0 + PANEL_W - 10}" y2="{base_y}" stroke="#444"/>')
    for i, (server, s) in enumerate(values.items()):
        bx, bw = x0 + 30 + i * 90, 60
        med = s["median"]
        if med is not None:
            h = height * med / top
            out.append(f'<rect x="{bx}" y="{base_y - h:.1f}" width="{bw}" height="{h:.1f}" '
                       f'fill="{COLOURS[server]}" fill-opacity="0.75">'
                       f'<title>{server} median {_fmt(med)}</title></rect>')
            out.append(f'<text x="{bx + bw / 2}" y="{base_y - h - 4:.1f}" text-anchor="middle" font-size="10">'
                       f'{_fmt(med)}</text>')
        rounds = [v for v in s["all"] if v is not None]
        if len(rounds) > 1:
            lo, hi = base_y - height * min(rounds) / top, base_y - height * max(rounds) / top
            out.append(f'<line x1="{bx + bw / 2}" y1="{lo:.1f}" x2="{bx + bw / 2}" y2="{hi:.1f}" stroke="#000"/>')
        for v in rounds:
            out.append(f'<circle cx="{bx + bw / 2}" cy="{base_y - height * v / top:.1f}" r="2.5" fill="#000">'
                       f'<title>{server} round {_fmt(v)}</title></circle>')
        out.append(f'<text x="{bx + bw / 2}" y="{base_y + 14}" text-anchor="middle" font-size="10">{server}</text>')
    return out


def workload_svg(row: dict, metrics: list[tuple[str, str, bool]]) -> str:
    """``metrics``: (field, title, higher_is_better) of the row to draw."""
    panels = [(m, name, hib) for m, name, hib in metrics if isinstance(row.get(m), dict)]
    width = max(1, len(panels)) * PANEL_W
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{PANEL_H + 24}" '
             f'font-family="sans-serif" viewBox="0 0 {width} {PANEL_H + 24}">',
             '<rect width="100%" height="100%" fill="#fff"/>']
    for i, (m, name, hib) in enumerate(panels):
        values = {s: {"median": row[m].get(s), "all": row[m].get("all", {}).get(s, [])}
                  for s in ("sscontrold", "reference")}
        parts += _panel(i * PANEL_W, name, values, not hib)
    runs = row.get("runs", {})
    parts.append(f'<text x="6" y="{PANEL_H + 16}" font-size="11">{escape(row["summary"])}: medians of '
                 f'{runs.get("sscontrold", 0)} / {runs.get("reference", 0)} rounds; dots: each round</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def targets_svg(rows: list[dict]) -> str:
    """Every target: the ratio (or value) as a bar, the threshold as a line, met or not."""
    items = [(row["summary"], t) for row in rows for t in row.get("targets", [])]
    line_h, width, left = 22, 760, 330
    height = 30 + line_h * max(1, len(items))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'viewBox="0 0 {width} {height}">', '<rect width="100%" height="100%" fill="#fff"/>',
             '<text x="6" y="16" font-size="12" font-weight="bold">targets: sscontrold / reference '
             '(or sscontrold\'s own value), threshold as a line</text>']
    for i, (name, t) in enumerate(items):
        y = 26 + i * line_h
        value, threshold = t.get("ratio"), t["threshold"]
        scale = (width - left - 90) / max(2.5, threshold * 1.5, (value or 0) * 1.05)
        colour = "#2ca02c" if t["met"] else "#d62728" if t["met"] is False else "#999"
        parts.append(f'<text x="6" y="{y + 14}" font-size="11">{escape(name)}: {escape(t["metric"])} '
                     f'{escape(t["target"])}</text>')
        if value is not None:
            parts.append(f'<rect x="{left}" y="{y + 3}" width="{max(1.0, value * scale):.1f}" height="14" '
                         f'fill="{colour}"/>')
        tx = left + threshold * scale
        parts.append(f'<line x1="{tx:.1f}" y1="{y}" x2="{tx:.1f}" y2="{y + 20}" stroke="#000" stroke-dasharray="3,2"/>')
        verdict = "met" if t["met"] else "NOT met" if t["met"] is False else "no figure"
        parts.append(f'<text x="{width - 85}" y="{y + 14}" font-size="11" fill="{colour}">'
                     f'{_fmt(value)} {verdict}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def write(rows: list[dict], metrics_by_kind: dict, out_dir: Path, rel_to: Path | None = None) -> Path:
    """The charts and a Markdown page embedding them; returns the page's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Bench charts", "", "![targets](targets.svg)", "",
             "| workload | figure | target | ratio (or value) | met |", "|---|---|---|---:|---|"]
    for row in rows:
        for t in row.get("targets", []):
            verdict = "**met**" if t["met"] else "**not met**" if t["met"] is False else "no figure"
            lines.append(f"| {row['summary']} | {t['metric']} | {t['target']} | {_fmt(t['ratio'])} | {verdict} |")
    lines.append("")
    (out_dir / "targets.svg").write_text(targets_svg(rows))
    for row in rows:
        name = slug(row["summary"]) + ".svg"
        (out_dir / name).write_text(workload_svg(row, metrics_by_kind[row.get("kind", row["key"][0])]))
        lines += [f"![{row['summary']}]({name})", ""]
    page = out_dir / "README.md"
    page.write_text("\n".join(lines))
    return page


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run  # noqa: E402  the summary and the metric table of the run that made the file
    path = Path(argv[1])
    records = [json.loads(x) for x in path.read_text().splitlines() if x.startswith('{"workload"')]
    rows = run.summarize(records)
    page = write(rows, run.METRICS, path.with_name(path.stem.replace("results", "charts")))
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
