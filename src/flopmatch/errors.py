"""One exception base for everything flopmatch raises on purpose: :class:`FlopmatchError`.

Every exception class in the package subclasses it (tests/test_errors.py walks the package to check),
keeping the builtin base its callers catch today (``class BudgetError(FlopmatchError, ValueError)``).
An error about a place in a file carries that place as fields, and every such message reads the same
way: ``<file>, <row|line> <n>: field '<f>': <what is wrong and what to do>``.

The CLI catches :data:`USER_ERRORS` in one place (``flopmatch.cli._app``): it prints the message, no
traceback, and exits with :attr:`FlopmatchError.exit_code`. This module imports no other flopmatch
module, so any module can raise these errors without an import cycle.
"""

from __future__ import annotations

from pathlib import Path


def where(file: str | Path | None = None, row: int | None = None, field: str | None = None, *,
          unit: str = "row") -> str:
    """The place part of a message: ``"data.jsonl, line 3: field 'answer': "`` (empty when no place)."""
    place = "" if file is None else str(file)
    if row is not None:
        place = f"{place}, {unit} {row}" if place else f"{unit} {row}"
    out = f"{place}: " if place else ""
    return out + (f"field {field!r}: " if field else "")


class FlopmatchError(Exception):
    """An error flopmatch raises on purpose, with a message a user can act on.

    ``file``, ``row`` (1-based; ``unit`` says whether it counts lines of a text file or rows of a table)
    and ``field`` say where the problem is; they are kept as attributes and written at the start of the
    message. ``str(error)`` is the whole message; ``error.message`` is the part after the place.
    """

    exit_code: int = 2  # what the CLI exits with when it reports this error

    def __init__(self, message: str = "", *, file: str | Path | None = None, row: int | None = None,
                 field: str | None = None, unit: str = "row") -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.row = row
        self.field = field
        self.unit = unit
        super().__init__(where(file, row, field, unit=unit) + message)

    def __reduce__(self):
        # Rebuilt from its fields, not by calling __init__ again: subclasses have their own signatures,
        # and errors cross process boundaries (the grading pool, engines, Ray workers).
        return _restore, (type(self), str(self), dict(self.__dict__))


def _restore(cls: type[FlopmatchError], text: str, state: dict) -> FlopmatchError:
    error = cls.__new__(cls)
    Exception.__init__(error, text)
    error.__dict__.update(state)
    return error


# What the CLI reports as a message rather than a traceback. The builtins are here because library
# code still raises them for bad input (a missing file, a malformed value; pydantic's ValidationError
# is a ValueError), as every command caught them one by one before; the FlopmatchError subclasses
# keep those builtins as a second base, so this tuple shrinks to FlopmatchError as raise sites move.
USER_ERRORS: tuple[type[Exception], ...] = (FlopmatchError, ValueError, FileNotFoundError, FileExistsError)

__all__ = ["FlopmatchError", "USER_ERRORS", "where"]
