"""`flopmatch` command line: a thin layer over the Python API. Each stage's commands live in their
own module here and register on the shared typer app."""

from __future__ import annotations

import importlib

from flopmatch.cli._app import app

# Modules that register commands, in the order `--help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    # one line per command module; keep the stage order of the pipeline
    "models",  # models list, models prepare
    "problems",  # problems
    "plan",  # plan
    "sample",  # sample, ledger
    "grade",  # grade
    "judge",  # judge, judge-labels, judge-eval
    "analyze",  # analyze
    "forecast",  # forecast (coverage / unique correct at large k from a pilot)
    "advise",  # advise (pilot, forecast, recommend a model or mix)
    "train",  # build-sft, train, eval
    "compare",  # compare (paired verdicts of fine-tuned students)
    "study",  # study, status, report, demo
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"flopmatch.cli.{_name}")


def main() -> None:
    app()


__all__ = ["app", "main"]
