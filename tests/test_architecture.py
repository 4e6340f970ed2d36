"""The code-shape figures of the run-data-layer issue, checked in CI (scripts/architecture.py measures them).

Targets: no import cycle (imports inside functions count), no ``_private`` name imported from another
module, no module over 600 lines, no function over 80 lines (a CLI command's option declarations, in its
signature, do not count). What the code does not meet yet is listed in tests/architecture_debt.txt: a
finding not on that list fails (nothing new gets worse), and so does a listed one that is gone (the list
only shrinks, and always says what is left).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEBT = Path(__file__).with_name("architecture_debt.txt")


def _architecture():
    spec = importlib.util.spec_from_file_location("architecture", ROOT / "scripts" / "architecture.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("architecture", module)
    spec.loader.exec_module(module)
    return module


def findings(report: dict) -> set[str]:
    """One line per finding, without line counts (a debt that shrinks but remains stays the same line)."""
    out = {"cycle: " + " <-> ".join(c) for c in report["import_cycles"]}
    out |= {f"private: {p['module']} imports {p['imports']}" for p in report["private_imports"]}
    out |= {f"module: {m['module']}" for m in report["long_modules"]}
    out |= {f"function: {f['function']}" for f in report["long_functions"]}
    return out


def debt() -> set[str]:
    return {line.strip() for line in DEBT.read_text().splitlines() if line.strip() and not line.startswith("#")}


@pytest.fixture(scope="module")
def measured() -> set[str]:
    return findings(_architecture().measure(ROOT / "src"))


def test_nothing_gets_worse(measured):
    new = sorted(measured - debt())
    assert not new, "new code-shape findings (fix them; see scripts/architecture.py):\n" + "\n".join(new)


def test_the_debt_list_only_shrinks(measured):
    paid = sorted(debt() - measured)
    assert not paid, "these are fixed: remove them from tests/architecture_debt.txt:\n" + "\n".join(paid)


def test_the_measure_finds_what_it_claims_to(tmp_path):
    """The checker itself: a planted cycle (through a function-level import), a private import, a long
    module and a long function are all found; a CLI command's long signature is not a long function."""
    package = tmp_path / "src" / "flopmatch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from flopmatch.b import _hidden\n")
    body = "".join(f"    x{i} = {i}\n" for i in range(81))
    (package / "b.py").write_text("def f():\n    from flopmatch import a\n\n\n_hidden = 1\n\n\ndef long():\n" + body
                                  + "\n" * 520)
    options = "".join(f"    o{i}: int = {i},\n" for i in range(90))
    (package / "cli.py").write_text(f"def command(\n{options}) -> None:\n    pass\n")
    report = _architecture().measure(tmp_path / "src")
    assert findings(report) == {
        "cycle: flopmatch.a <-> flopmatch.b",
        "private: flopmatch.a imports flopmatch.b._hidden",
        "module: flopmatch.b",
        "function: flopmatch.b.long",
    }
