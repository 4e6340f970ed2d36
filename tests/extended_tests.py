"""Tests marked ``extended``: more variants of a check the default run already makes, left out by default.

A few expensive tests repeat one scenario per variant (the SIGKILL-and-resume test once per allocation
policy, for one). The default run (``make test``) keeps one variant and *deselects* the others — not a
skip: a deselected test is simply not collected into the run, so the skip allow-list (``skip_gate.py``)
stays as strict as before. ``--extended`` runs them too (``PYTEST_ADDOPTS=--extended make test``, or
``python -m pytest --extended tests/test_allocation.py``); a test named by its full node id on the command
line runs without it.
"""

from __future__ import annotations

import pytest

MARKER = "extended"
OPTION = "--extended"
MARKER_HELP = f"{MARKER}: another variant of a check the default run makes; run with {OPTION}"


def add_option(parser: pytest.Parser) -> None:
    parser.addoption(
        OPTION,
        action="store_true",
        default=False,
        help=f"also run the tests marked `{MARKER}` (left out of the default run: see tests/extended_tests.py)",
    )


def register_marker(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)


def named_on_command_line(item: pytest.Item, args: list[str]) -> bool:
    """Whether ``item`` was asked for by its full node id (``tests/test_x.py::test_y[case]``)."""
    return any(arg == item.nodeid or arg.endswith("/" + item.nodeid) for arg in args)


def split_extended(items: list[pytest.Item], args: list[str]) -> tuple[list[pytest.Item], list[pytest.Item]]:
    """(kept, deselected): the ``extended`` items not named on the command line are deselected."""
    kept, dropped = [], []
    for item in items:
        extra = item.get_closest_marker(MARKER) is not None and not named_on_command_line(item, args)
        (dropped if extra else kept).append(item)
    return kept, dropped


def deselect_extended(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption(OPTION):
        return
    kept, dropped = split_extended(items, [str(arg) for arg in config.args])
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
