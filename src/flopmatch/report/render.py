"""Rendering a report document to markdown and to one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

# --------------------------------------------------------------------------- markdown
from flopmatch.report.blocks import Bullets, Figure, Report, Table, Text


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, figure_href: dict[Path, str]) -> str:
    out = [f"# {report.title}", ""]
    if report.subtitle:
        out += [f"**{report.subtitle}** · generated {report.generated}", ""]
    out += ["## Verdict", ""]
    out += [f"- {line}" for line in report.verdict] or [
        "_Nothing to conclude yet: no metrics have been computed._"
    ]
    out.append("")
    for section in report.sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                out += [f"_{block.text}_" if block.kind == "note" else block.text, ""]
            elif isinstance(block, Bullets):
                out += [f"- {item}" for item in block.items] + [""]
            elif isinstance(block, Table):
                out.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
                out.append(
                    "|"
                    + "|".join("---:" if i in block.numeric else "---" for i in range(len(block.columns)))
                    + "|"
                )
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                out += (["", f"_{block.caption}_"] if block.caption else []) + [""]
            elif isinstance(block, Figure):
                out += [f"![{block.caption}]({figure_href[block.path]})", "", f"_{block.caption}_", ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- HTML

_CSS = """
:root { --ink:#1d2330; --muted:#5b6474; --line:#e3e6ec; --wc:#2f6fb0; --se:#c0504d; --bg:#fbfbfd; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.55 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color:var(--ink); background:var(--bg); }
main { max-width: 1120px; margin: 0 auto; padding: 32px 28px 64px; }
header { border-bottom: 1px solid var(--line); margin-bottom: 20px; padding-bottom: 14px; }
h1 { font-size: 26px; margin: 0 0 4px; }
.sub { color: var(--muted); }
nav { margin-top: 10px; font-size: 13px; }
nav a { color: var(--muted); margin-right: 14px; text-decoration: none; }
nav a:hover { color: var(--ink); }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.verdict { background: #eef4fb; border-left: 4px solid var(--wc); padding: 12px 18px; border-radius: 6px; }
.verdict h2 { border: 0; margin: 0 0 6px; }
.verdict ul { margin: 0; padding-left: 20px; }
.verdict li { margin: 4px 0; }
.note { color: var(--muted); font-style: italic; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 4px; font-size: 13.5px; background: #fff; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #f3f5f8; font-weight: 600; font-size: 12.5px; color: #3a4252; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:hover { background: #f7f9fc; }
.caption { color: var(--muted); font-size: 12.5px; margin: 2px 0 14px; }
figure { margin: 14px 0; background:#fff; border:1px solid var(--line); border-radius: 6px; padding: 10px; }
figure img { max-width: min(100%, 860px); display: block; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 12.5px; text-align: center; margin-top: 6px; }
.figs { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 14px; }
code { background: #f0f2f5; padding: 1px 4px; border-radius: 3px; font-size: 90%; }
details { margin-top: 8px; } pre { background:#f6f7f9; padding: 12px; overflow-x: auto; font-size: 12.5px; }
footer { color: var(--muted); font-size: 12px; margin-top: 40px; }
"""


def _inline(text: str) -> str:
    """Escape, then honour **bold** and `code`."""
    escaped = html.escape(str(text))
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _html_table(table: Table) -> str:
    def cls(i: int) -> str:
        return ' class="num"' if i in table.numeric else ""

    head = "".join(f"<th{cls(i)}>{_inline(c)}</th>" for i, c in enumerate(table.columns))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{_inline(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in table.rows
    )
    caption = f'<p class="caption">{_inline(table.caption)}</p>' if table.caption else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{caption}"


def _html_figure(figure: Figure) -> str:
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(figure.caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_inline(figure.caption)}</figcaption></figure>"
    )


def render_html(report: Report, config_text: str | None = None) -> str:
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body><main>",
        f"<header><h1>{html.escape(report.title)}</h1>",
        f"<div class='sub'>{html.escape(report.subtitle)} · generated {html.escape(report.generated)}</div>",
        "<nav>"
        + "".join(f"<a href='#{s.anchor}'>{html.escape(s.title.split(':')[0])}</a>" for s in report.sections)
        + "</nav></header>",
        "<section class='verdict'><h2>Verdict</h2>",
    ]
    if report.verdict:
        parts.append("<ul>" + "".join(f"<li>{_inline(line)}</li>" for line in report.verdict) + "</ul>")
    else:
        parts.append("<p class='note'>Nothing to conclude yet: no metrics have been computed.</p>")
    parts.append("</section>")
    for section in report.sections:
        parts.append(f"<section id='{section.anchor}'><h2>{html.escape(section.title)}</h2>")
        figures: list[Figure] = []
        for block in section.blocks:
            if isinstance(block, Figure):
                figures.append(block)
                continue
            if figures:
                parts.append("<div class='figs'>" + "".join(_html_figure(f) for f in figures) + "</div>")
                figures = []
            if isinstance(block, Text):
                parts.append(f"<p class='{block.kind}'>{_inline(block.text)}</p>")
            elif isinstance(block, Bullets):
                parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
            elif isinstance(block, Table):
                parts.append(_html_table(block))
        if figures:
            parts.append("<div class='figs'>" + "".join(_html_figure(f) for f in figures) + "</div>")
        parts.append("</section>")
    if config_text:
        parts.append(
            "<section id='config'><h2>Configuration</h2><details><summary>The resolved study.yaml</summary>"
            f"<pre>{html.escape(config_text)}</pre></details></section>"
        )
    parts.append(
        "<footer>Made by flopmatch from the run directory's tables; rebuild with "
        "<code>flopmatch report RUN</code>.</footer></main></body></html>"
    )
    return "\n".join(parts)


