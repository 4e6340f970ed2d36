"""The problem record, its Arrow schema and the seeded subset rule: what every problem source shares.

This module imports no other flopmatch module, so every source (the shared-data loaders in
:mod:`flopmatch.problems`, the toy world's generator) can build records without importing each
other. Users import these names from :mod:`flopmatch.problems` as before.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields

import pyarrow as pa


@dataclass(frozen=True)
class Problem:
    """One problem. ``answer`` is the gold final answer; ``solution`` the reference solution text."""

    problem_id: str
    dataset: str
    split: str
    question: str
    answer: str
    solution: str = ""
    level: str | None = None
    subject: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


PROBLEM_SCHEMA = pa.schema(
    [
        ("problem_id", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("solution", pa.string()),
        ("level", pa.string()),
        ("subject", pa.string()),
    ]
)


def problems_to_table(problems: list[Problem]) -> pa.Table:
    return pa.Table.from_pylist([p.to_dict() for p in problems], schema=PROBLEM_SCHEMA)


def problems_from_table(table: pa.Table) -> list[Problem]:
    names = {f.name for f in fields(Problem)}
    return [Problem(**{k: v for k, v in row.items() if k in names}) for row in table.to_pylist()]


def select_subset(problems: list[Problem], *, limit: int | None, seed: int | None) -> list[Problem]:
    """At most ``limit`` problems: a prefix (seed None) or a seeded, source-ordered, nested choice."""
    if limit is None or limit >= len(problems):
        return list(problems)
    if seed is None:
        return list(problems[:limit])
    ranks = sorted(range(len(problems)), key=lambda i: _subset_rank(seed, problems[i].problem_id))
    keep = set(ranks[:limit])
    return [p for i, p in enumerate(problems) if i in keep]


def _subset_rank(seed: int, problem_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{problem_id}".encode()).digest()
