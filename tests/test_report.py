"""The study report: built from a real (small) run directory, self-contained, and its verdict follows the
numbers."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from flopmatch.budget import BudgetPlan, plan_budgets
from flopmatch.report import (
    RunData,
    build_report,
    compute_verdict,
    fmt_gain,
    load_run,
    paradigm_comparisons,
    relative_gain,
)
from flopmatch.report.data import budgets_of
from flopmatch.report.verdict import budget_short
from flopmatch.store import RunDir
from flopmatch.store.layout import RunNotFound

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- pure parts


def test_relative_gain_is_the_papers_format():
    assert relative_gain(0.53, 0.50) == pytest.approx(6.0)
    assert fmt_gain(relative_gain(0.53, 0.50)) == "+6%"
    assert fmt_gain(5.8) == "+5.8%"
    assert fmt_gain(-1.24) == "−1.2%"
    assert fmt_gain(relative_gain(0.5, 0.0)) == "n/a"


def _paradigm_rows(values: dict[tuple[str, int], tuple[float, float]], width: float = 0.02) -> pd.DataFrame:
    rows = []
    for (paradigm, budget), (se, wc) in values.items():
        for data, value in (("se", se), ("wc", wc)):
            rows.append({"paradigm": paradigm, "budget_se_samples": budget, "student": "s", "data": data,
                         "metric": "pass@1", "value": value, "ci_low": value - width, "ci_high": value + width})  # fmt: skip
    return pd.DataFrame(rows)


def _plan(se_samples: tuple[int, ...] = (1, 10)) -> BudgetPlan:
    """A compute-matched plan with WC 3× SE's samples (SE 1 vs WC 3, SE 10 vs WC 30)."""
    return plan_budgets(mode="flops", se_samples=list(se_samples), wc_params=1e9, se_params=3e9, wc_name="wc",
                        se_name="se")  # fmt: skip


def _data(paradigms: pd.DataFrame | None = None, matched: pd.DataFrame | None = None) -> RunData:
    return RunData(run=RunDir("/nonexistent"), config=None, roles={}, plan=_plan(), ledger=None, cost=None,
                   summary=None, coverage=None, matched=matched, paradigms=paradigms, problems={}, figures=[],
                   stages={})  # fmt: skip


def test_verdict_counts_paradigm_wins_per_budget_and_flags_noise():
    paradigms = _paradigm_rows(
        {
            ("knowledge_distillation", 1): (0.40, 0.50),  # clear win (intervals apart)
            ("self_improvement", 1): (0.40, 0.41),  # win within noise
            ("weak_to_strong", 1): (0.60, 0.55),  # loss
            ("knowledge_distillation", 10): (0.50, 0.45),
            ("self_improvement", 10): (0.50, 0.45),
            ("weak_to_strong", 10): (0.50, 0.45),
        }
    )
    lines = compute_verdict(_data(paradigms))
    low = next(line for line in lines if "low budget" in line)
    high = next(line for line in lines if "high budget" in line)
    assert low.startswith("WC data beat SE data in 2 of 3 paradigms at the low budget (SE 1 vs WC 3)")
    assert "knowledge distillation +25%" in low and "weak-to-strong −8.3%" in low
    assert "1 of those wins with non-overlapping 95% intervals" in low
    assert high.startswith("WC data beat SE data in 0 of 3 paradigms at the high budget")


def test_verdict_reports_the_number_matched_control_and_dataset_changes():
    paradigms = _paradigm_rows({("knowledge_distillation", 1): (0.40, 0.50)})
    paradigms = pd.concat(
        [paradigms, paradigms[paradigms["data"] == "wc"].assign(data="wc_number_matched", value=0.38)]
    )
    matched = pd.DataFrame([
        {"budget_se_samples": 1, "metric": "coverage", "relative_text": "+11% coverage"},
        {"budget_se_samples": 1, "metric": "fpr", "relative_text": "+7 pts FPR"},
    ])  # fmt: skip
    lines = compute_verdict(_data(paradigms, matched))
    assert (
        lines[0]
        == "Compute-matched at the low budget (SE 1 vs WC 3), WC data vs SE data: +11% coverage, +7 pts FPR."
    )
    control = next(line for line in lines if line.startswith("Number-matched control"))
    assert "below compute-matched WC data in 1 of 1 comparison" in control
    table = paradigm_comparisons(paradigms)
    assert table.loc[0, "nm"] == pytest.approx(0.38) and table.loc[0, "gain"] == pytest.approx(25.0)


def test_budget_labels_come_from_the_typed_plan():
    """Labels name the plan's budget by its SE samples (BudgetPlan.point): low/high only in a two-budget plan,
    an unknown budget is named by SE alone."""
    two, three = _plan((10, 1)), _plan((1, 2, 10))
    assert [b.se_samples for b in budgets_of(two)] == [1, 10] and budgets_of(None) == []
    assert [budget_short(two, s) for s in (1, 10, 5)] == ["1 vs 3 (low)", "10 vs 30 (high)", "SE 5 (high)"]
    assert [budget_short(three, s) for s in (2, 7)] == ["2 vs 6", "SE 7"]
    assert budget_short(None, 4) == "SE 4"
    lines = compute_verdict(_data(matched=pd.DataFrame([{"budget_se_samples": 10, "relative_text": "+1% coverage"}])))
    assert lines == ["Compute-matched at the high budget (SE 10 vs WC 30), WC data vs SE data: +1% coverage."]


def test_the_report_reads_the_cost_table_not_the_sample_shards(tmp_path):
    """The cost per budget comes from metrics/cost.parquet (the analysis writes it): a sample shard the
    report tried to read would fail here, and the plan is read through the typed reader."""
    from flopmatch.budget import plan_budgets
    from flopmatch.store import write_json, write_table

    run = RunDir(tmp_path / "run").ensure()
    plan_budgets(mode="flops", se_samples=[1, 2], wc_params=1e9, se_params=3e9, wc_name="wc", se_name="se").save(run)
    write_json({"wc": {"key": "wc", "params": 1e9}, "se": {"key": "se", "params": 3e9}}, run.roles_path)
    run.samples_dir("wc").mkdir(parents=True)
    (run.samples_dir("wc") / "part-0.parquet").write_bytes(b"not a parquet file")
    cost = pd.DataFrame([{"budget_se_samples": 1, "role": "wc", "samples_per_problem": 3, "samples": 6,
                          "completion_tokens": 60.0, "mean_tokens": 10.0, "nominal_flops": 1.2e11,
                          "planned_flops": float("nan"), "seconds": 0.5}])  # fmt: skip
    write_table(cost, run.cost_path)
    data = load_run(run.root)
    pd.testing.assert_frame_equal(data.cost, cost)
    assert isinstance(data.plan, BudgetPlan) and [b.wc_samples for b in data.plan.budgets] == [3, 6]
    assert "| 1 vs 3 (low) | WC | 3 | 10 | 120.00 GFLOP | 0.5 s |" in build_report(run.root).markdown.read_text()
    (run.cost_path).unlink()
    assert load_run(run.root).cost is None  # before the analysis ran: no cost table, and no shard read
    with pytest.raises(RunNotFound, match=r"nope: no such run directory") as info:
        load_run(tmp_path / "nope")
    assert isinstance(info.value, FileNotFoundError)  # what Python callers caught before


def test_a_run_sampled_before_the_cost_table_says_how_to_get_it():
    from flopmatch.report.blocks import Text
    from flopmatch.report.sections_data import cost_section

    data = _data()
    data.ledger = pd.DataFrame([{"model": "m", "samples": 3}])
    notes = [b.text for b in cost_section(data).blocks if isinstance(b, Text)]
    assert any("flopmatch analyze" in text for text in notes)
    data.cost = pd.DataFrame([{"budget_se_samples": 1, "role": "wc", "samples_per_problem": 3, "samples": 6,
                               "completion_tokens": 60.0, "mean_tokens": 10.0, "nominal_flops": 1.2e11,
                               "planned_flops": float("nan"), "seconds": 0.5}])  # fmt: skip
    assert not any(isinstance(b, Text) for b in cost_section(data).blocks)


def test_the_judge_is_labelled_from_its_declaration_not_its_name():
    """The FPR section names the judge from the spec as the judge module declares it: the exact checker's
    own label (the toy world's checker, or any dataset's), an LLM judge by its model."""
    from flopmatch.judge import ExactCheckerJudge, JudgeSpec, judge_label
    from flopmatch.report.sections_data import fpr_section

    assert judge_label("toyworld-checker") == judge_label({"backend": "toyworld-checker"}) == "exact step checker"
    assert ExactCheckerJudge.label == "exact step checker"
    assert judge_label({"backend": "vllm", "model": "qwen"}) == "LLM judge (qwen)"
    assert judge_label(JudgeSpec(backend="hf", model="m")) == "LLM judge (m)"
    assert judge_label("vllm:qwen") == "LLM judge (qwen)"  # the string form make_judge builds from
    assert judge_label(None) == judge_label({"backend": "vllm"}) == judge_label({"backend": "x", "y": 1}) == "judge"
    data = _data()
    data.config = {"judge": {"spec": "toyworld-checker"}}
    data.summary = pd.DataFrame([{"metric": "fpr_judge", "role": "wc", "model": "m", "budget_se_samples": 1,
                                  "value": 0.25, "ci_low": 0.1, "ci_high": 0.4, "n": 8}])  # fmt: skip
    assert "exact step checker" in str(fpr_section(data).blocks)


def test_nothing_to_conclude_from_an_empty_run(tmp_path):
    (tmp_path / "run").mkdir()
    paths = build_report(tmp_path / "run")
    assert paths.verdict == []
    html = paths.html.read_text()
    assert "Nothing to conclude yet" in html and "The plan stage has not run." in html


# --------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real study on the toy-world models (pretrained on first use and cached): problems, plan,
    sampling, grading, the exact judge and the analysis; training off, so the paradigm section says so."""
    from flopmatch.study import run_study, validate_study_dict

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = validate_study_dict(
        {
            "name": "report-test",
            "problems": {"sample": {"source": "toyworld", "split": "train", "limit": 16}},
            "models": {
                "wc": {"model": "toyworld-wc", "backend": "hf", "label": "toy WC"},
                "se": {"model": "toyworld-se", "backend": "hf", "label": "toy SE"},
            },
            "budget": {"se_samples": [1, 2]},
            "sampling": {"max_tokens": 96},
            "judge": {"spec": "toyworld-checker"},
            "analysis": {"n_boot": 100},
            "training": {"enabled": False},
        }  # fmt: skip
    )
    root = tmp_path_factory.mktemp("report") / "run"
    run_study(config, root, log=lambda _: None, progress=False)
    return root


@pytest.mark.train
def test_report_from_a_real_run_is_self_contained(run_dir):
    paths = build_report(run_dir)
    html = paths.html.read_text()
    # one file: every image inline, nothing fetched from anywhere
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", html)
    assert "<link" not in html and "<script" not in html
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    figures = sorted((run_dir / "metrics" / "figures").glob("*.png"))
    assert figures and len(images) == len(figures)
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    # the markdown twin links figures copied next to it
    markdown = paths.markdown.read_text()
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (paths.markdown.parent / target).is_file()
    for title in ("Verdict", "Budget plan", "Cost: nominal FLOPs vs measured seconds", "Dataset quality",
                  "False-positive rate", "Coverage by level and subject", "Fine-tuning paradigms"):  # fmt: skip
        assert title in html and title in markdown
    assert "exact step checker" in html
    assert "Training is off for this study" in html


@pytest.mark.train
def test_report_numbers_come_from_the_run_tables(run_dir):
    data = load_run(run_dir)
    paths = build_report(run_dir)
    html = paths.html.read_text()
    matched = pd.read_parquet(run_dir / "metrics" / "compute_matched.parquet")
    assert not matched.empty
    for text in matched["relative_text"]:
        assert text in html
        assert any(text in line for line in paths.verdict)
    # planned sample counts, and the cost actually spent per budget from the sample tables
    for budget in data.plan.budgets:
        assert f"{budget.se_samples} vs {budget.wc_samples}" in html
    cost = data.cost
    wc = cost[(cost["role"] == "wc") & (cost["budget_se_samples"] == 1)].iloc[0]
    assert wc["samples"] == 16 * data.plan.point(1).wc_samples
    assert wc["nominal_flops"] == pytest.approx(2 * data.roles["wc"]["params"] * wc["completion_tokens"])
    assert any(line.startswith("Cost at the low budget") for line in paths.verdict)


class _Outline(HTMLParser):
    """The headings and image sources of a page's DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self._heading: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h1", "h2"):
            self._heading = []
        elif tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_data(self, data: str) -> None:
        if self._heading is not None:
            self._heading.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None


def rendered_dom(html_path: Path) -> str:
    """The DOM as headless Chromium builds it from the page (`make test` installs Debian's chromium)."""
    browser = shutil.which("chromium")
    assert browser, "Debian chromium is not installed (`make test` installs it: apt-get install -y chromium)"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}",
             "--dump-dom", html_path.resolve().as_uri()],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
    return done.stdout


@pytest.mark.train
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    paths = build_report(run_dir)
    outline = _Outline()
    outline.feed(rendered_dom(paths.html))
    # the browser's DOM has every section, in the report's order, and every figure inline
    expected = ["Verdict", "Budget plan", "Cost: nominal FLOPs vs measured seconds", "Dataset quality",
                "False-positive rate", "Coverage by level and subject", "Fine-tuning paradigms"]  # fmt: skip
    found = [
        next((k for k, h in enumerate(outline.headings) if h.startswith(title)), -1) for title in expected
    ]
    assert -1 not in found, f"sections missing from the rendered DOM: {outline.headings}"
    assert found == sorted(found)
    figures = sorted((run_dir / "metrics" / "figures").glob("*.png"))
    assert len(outline.images) == len(figures)
    assert all(src.startswith("data:image/png;base64,") for src in outline.images)

    out = tmp_path / "shot.png"
    subprocess.run([str(REPO / "scripts" / "screenshot_report.sh"), str(run_dir), str(out), "3000"], check=True,
                   timeout=120)  # fmt: skip
    from PIL import Image, ImageStat

    with Image.open(out) as image:
        assert image.size == (1280, 3000)
        rgb = image.convert("RGB")
        # a rendered page, not a blank one: many distinct colours (text, tables, plots), real contrast,
        # and ink spread down the page rather than in one corner
        assert len(rgb.getcolors(maxcolors=1 << 20) or []) > 200
        gray = rgb.convert("L")
        assert ImageStat.Stat(gray).stddev[0] > 10
        # (a real report measures about 30 in every band; the empty-run page drops to 0 below 1500 px)
        bands = [gray.crop((0, y, 1280, y + 500)) for y in range(0, 2000, 500)]
        assert all(ImageStat.Stat(band).stddev[0] > 10 for band in bands)


def test_an_advised_run_analysed_before_the_pilot_table_says_to_analyse_again(tmp_path, monkeypatch):
    """The pilot section reads metrics/pilot_vs_measured.parquet only: a run analysed before the analysis
    wrote it gets a note (and no sample is read to fill the gap); analysed again, it gets the table."""
    from flopmatch.analysis import analyze
    from sample_reads import advised_run, spy_sample_reads

    run = advised_run(tmp_path / "run")
    analyze(run, n_boot=20, plots=False)
    table = run.metrics_path("pilot_vs_measured")
    frame = pd.read_parquet(table)
    assert list(frame["role"]) == ["advised", "alone"] and list(frame["measured"]) == [1.0, 1.0]  # all covered
    table.unlink()
    reads = spy_sample_reads(monkeypatch, run)
    build_report(run)
    report = (run.report_dir / "report.md").read_text()
    assert "## Pilot forecast vs measured" in report and "rerun `flopmatch analyze RUN`" in report
    assert "(advised)" not in report and not reads.text and not reads.other
    (run.pilot_dir / "advice.json").unlink()  # not an advised run: no section, and the analysis drops its table
    analyze(run, n_boot=20, plots=False)
    build_report(run)
    assert not table.exists() and "Pilot forecast" not in (run.report_dir / "report.md").read_text()
