"""The report's blocks (text, bullets, table, figure, section); numbers are written by :mod:`flopmatch.formatting`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- blocks


@dataclass
class Text:
    """A paragraph; ``**bold**`` and `` `code` `` are honoured in both renderings."""

    text: str
    kind: str = "p"  # "p" | "note" | "verdict"


@dataclass
class Bullets:
    items: list[str]
    kind: str = "ul"  # "ul" | "verdict"


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric: set[int] = field(default_factory=set)  # column indices right-aligned


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[Any]
    anchor: str = ""

    def __post_init__(self) -> None:
        self.anchor = self.anchor or re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


@dataclass
class Report:
    title: str
    subtitle: str
    sections: list[Section]
    verdict: list[str]
    generated: str
