"""One quiet switch: ``--quiet`` on a command silences flopmatch's bars, and its workers' and libraries'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from flopmatch.progress import QUIET_ENV, is_quiet, progress_bar, set_quiet

FLOPMATCH = Path(sys.executable).with_name("flopmatch")


def _side_by_side(commands: list[list[str]], env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Run the commands at the same time, one torch thread each (most of their time is start-up), and return
    them completed, in order. Output goes to files: a full pipe would stall a child."""
    env = {**env, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as folder:
        logs = [(Path(folder) / f"{i}.out", Path(folder) / f"{i}.err") for i in range(len(commands))]
        running: list[subprocess.Popen] = []
        try:
            for command, (out, err) in zip(commands, logs, strict=True):
                with open(out, "wb") as stdout, open(err, "wb") as stderr:
                    running.append(subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env))
            codes = [process.wait(timeout=900) for process in running]
        finally:
            for process in running:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        return [subprocess.CompletedProcess(command, code, out.read_text(), err.read_text())
                for command, code, (out, err) in zip(commands, codes, logs, strict=True)]  # fmt: skip


def test_the_switch_turns_every_bar_off_and_reaches_child_processes():
    assert not is_quiet()
    with progress_bar(3, "work", enabled=True) as bar:
        assert not bar.disable
    set_quiet(True)
    with progress_bar(3, "work", enabled=True) as bar:
        assert bar.disable
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('TQDM_DISABLE'), "
                            f"os.environ.get('{QUIET_ENV}'))"], capture_output=True, text=True, check=True)
    assert child.stdout.split() == ["1", "1"]  # workers, engines and trainers inherit it
    set_quiet(False)
    assert not is_quiet() and "TQDM_DISABLE" not in os.environ


def test_grade_draws_its_bar_unless_quiet(tmp_path: Path):
    source = tmp_path / "answers.jsonl"
    source.write_text("".join(json.dumps({"response": f"#### {i}", "gold": str(i)}) + "\n" for i in range(20)))
    env = {k: v for k, v in os.environ.items() if k not in (QUIET_ENV, "TQDM_DISABLE")}

    grade = [str(FLOPMATCH), "grade", "--input", str(source), "--dataset", "gsm8k", "--workers", "1", "--json"]  # fmt: skip
    loud, quiet = _side_by_side([grade, [*grade, "--quiet"]], env)
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "grading" in loud.stderr  # the bar is drawn on stderr ...
    assert "grading" not in quiet.stderr and "%|" not in quiet.stderr  # ... and not with --quiet
    assert json.loads(loud.stdout) == json.loads(quiet.stdout)


def test_eval_on_a_tiny_model_draws_no_bar_when_quiet(tmp_path: Path):
    """The evaluation loop, the model loading and the engine under it: nothing on stderr moves."""
    from test_sampling import build_tiny_model, write_gsm8k_file

    model = build_tiny_model(tmp_path / "tiny-qwen2")
    data = write_gsm8k_file(tmp_path / "test.jsonl", 3)
    env = {k: v for k, v in os.environ.items() if k not in (QUIET_ENV, "TQDM_DISABLE")}

    evaluate = [str(FLOPMATCH), "eval", "--model", str(model), "--problems", "gsm8k", "--data-file", str(data),
                "--backend", "hf", "--n", "1", "--k", "1", "--max-tokens", "4", "--option", "dtype=float32",
                "--json"]  # fmt: skip
    loud, quiet = _side_by_side([evaluate, [*evaluate, "--quiet"]], env)
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "%|" in loud.stderr and "evaluate" in loud.stderr  # a bar is drawn ...
    assert "%|" not in quiet.stderr and "it/s" not in quiet.stderr and "\r" not in quiet.stderr  # ... not quiet
    assert json.loads(loud.stdout)["metrics"] == json.loads(quiet.stdout)["metrics"]


def test_libraries_imported_before_the_switch_are_told_too():
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    set_quiet(True)  # after the imports: the environment variables alone would come too late
    try:
        assert not hf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
    finally:
        set_quiet(False)
    assert hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
