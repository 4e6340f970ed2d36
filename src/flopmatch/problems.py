"""Problem sets: one record for every source (GSM8K, MATH, MATH500, the toy world, local files)."""

from __future__ import annotations

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
