"""The study report: one self-contained HTML page and a markdown twin, built from a run directory alone.

``build_report(run_dir)`` reads only what the stages wrote (``study.yaml``, ``plan.json``, ``roles.json``,
``ledger.parquet``, ``metrics/*.parquet`` (the cost per budget from ``metrics/cost.parquet``: never the
sample shards), ``metrics/figures/*.png``), so a report can be
rebuilt at any time (``flopmatch report RUN``), and a section whose stage has not run says so instead of
disappearing. The page is made of a few block types (text, table, figure) rendered twice: to HTML with
figures embedded as base64 PNG (one file to mail or attach), and to markdown with figures copied next
to it.

The verdict is computed from the numbers, never written by hand: wins are counted per budget, and a
win whose 95% intervals overlap the loser's is reported as such.
"""


from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flopmatch.formatting import fmt_ci, fmt_flops, fmt_gain, fmt_num, fmt_params, fmt_pct, fmt_seconds
from flopmatch.metrics import relative_gain
from flopmatch.report.blocks import Bullets, Figure, Report, Section, Table, Text
from flopmatch.report.data import RunData, budgets_of, cost_by_budget, load_run
from flopmatch.report.render import render_html, render_markdown
from flopmatch.report.sections_training import build_document
from flopmatch.report.verdict import compute_verdict, headline_metric, paradigm_comparisons
from flopmatch.store import write_text
from flopmatch.store.queries import read_study_text


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    verdict: list[str]


def build_report(run_dir: str | Path) -> ReportPaths:
    """Write ``report/index.html`` (self-contained) and ``report/report.md`` (+ ``report/figures/``)."""
    data = load_run(run_dir)
    out = data.run.report_dir
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    report = build_document(data, figures_dir=figures_dir)
    hrefs: dict[Path, str] = {}
    for section in report.sections:
        for block in section.blocks:
            if isinstance(block, Figure):
                target = figures_dir / block.path.name
                if block.path.resolve() != target.resolve():
                    shutil.copyfile(block.path, target)
                hrefs[block.path] = f"figures/{block.path.name}"
    html_path = write_text(render_html(report, read_study_text(data.run)), out / "index.html")
    md_path = write_text(render_markdown(report, hrefs), out / "report.md")
    return ReportPaths(html=html_path, markdown=md_path, verdict=report.verdict)


def iter_blocks(report: Report) -> Iterable[Any]:
    for section in report.sections:
        yield from section.blocks


__all__ = [
    "Bullets",
    "Figure",
    "Report",
    "Section",
    "Table",
    "Text",
    "fmt_ci",
    "fmt_flops",
    "fmt_gain",
    "fmt_num",
    "fmt_params",
    "fmt_pct",
    "fmt_seconds",
    "relative_gain",
    "RunData",
    "budgets_of",
    "cost_by_budget",
    "load_run",
    "render_html",
    "render_markdown",
    "build_document",
    "compute_verdict",
    "headline_metric",
    "paradigm_comparisons",
    "ReportPaths",
    "build_report",
    "iter_blocks",
]
