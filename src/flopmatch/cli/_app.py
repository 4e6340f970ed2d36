"""The typer application every command module registers on. Every command runs through
:func:`cli_command`, the one place where the CLI

- configures logging (:func:`flopmatch.log.configure`: library warnings on stderr), and
- turns an error into a message: a :data:`flopmatch.errors.USER_ERRORS` error (a
  :class:`~flopmatch.errors.FlopmatchError` raised anywhere below the command, or bad input) prints
  ``error: <message>`` on stderr, no traceback, and exits with the error's ``exit_code`` (2; 1 for a
  study whose stage failed). A command adds to the message with ``exc.add_note(...)`` (PEP 678) and
  re-raises; the notes follow the message on the same line. No command catches these errors itself."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console

from flopmatch.errors import USER_ERRORS
from flopmatch.log import configure as configure_logging


class FlopmatchTyper(typer.Typer):
    """A typer app whose commands run through :func:`cli_command`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable], Callable]:
        register = super().command(*args, **kwargs)

        def decorator(func: Callable) -> Callable:
            register(cli_command(func))
            return func

        return decorator


def cli_command(func: Callable) -> Callable:
    """``func`` with logging configured and a user error turned into ``error: <message>`` and its exit
    code (typer reads the options from the wrapped signature)."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        configure_logging()
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as exc:
            raise fail(error_message(exc), getattr(exc, "exit_code", 2)) from exc

    return command


def error_message(exc: BaseException) -> str:
    """What the CLI prints for a user error: its message (a pydantic ValidationError's on one line:
    ``invalid <Model>: <field>: <problem>; ...``), then any notes a command added to it."""
    text = _validation_summary(exc) if isinstance(exc, ValidationError) else str(exc)
    return " ".join([text, *getattr(exc, "__notes__", ())])


def _validation_summary(exc: ValidationError) -> str:
    problems = [
        (f"{'.'.join(str(part) for part in error['loc'])}: " if error["loc"] else "")
        + str(error["msg"]).removeprefix("Value error, ")
        for error in exc.errors()
    ]
    return f"invalid {exc.title}: " + "; ".join(problems)


app = FlopmatchTyper(
    name="flopmatch",
    help=(
        "Compute-matched synthetic data for LLM reasoners.\n\n"
        "At a fixed sampling budget, should a weaker-cheaper model (WC) or a strong-expensive one (SE) "
        "write your training data? flopmatch plans the budget, samples, grades, measures coverage / "
        "diversity / false-positive rate, builds SFT data, trains, evaluates and reports.\n\n"
        "Start with `flopmatch demo` (the whole study on a CPU toy world) or `flopmatch plan --help`."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
)
console = Console()
err_console = Console(stderr=True)


def _print_labelled(target: Console, label: str, message: str) -> None:
    # Never hard-wrap the message (it names files and lines people copy), and never read it as rich
    # markup: paths and model output may contain "[...]".
    target.print(label, end=" ")
    target.print(message, markup=False, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a clear error and return the Exit to raise."""
    _print_labelled(err_console, "[bold red]error:[/]", message)
    return typer.Exit(code)


def warn(message: str, target: Console = err_console) -> None:
    """Print a warning (to stderr unless ``target`` says otherwise), verbatim like :func:`fail`."""
    _print_labelled(target, "[yellow]warning:[/]", message)
