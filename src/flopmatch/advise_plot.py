"""The coverage-vs-cost frontier plot of an :class:`~flopmatch.advise.Advice` (matplotlib, written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def frontier_plot(advice: Any, path: str | Path) -> Path:
    """The objective against total cost: each model alone (with its 95% band) and every mixture.

    ``advice``: a :class:`flopmatch.advise.Advice` (not imported: advise imports this module)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 100.0 if advice.objective == "coverage" else 1.0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in advice.frontier.items():
        x = [p["cost"] for p in curve]
        ax.plot(x, [scale * p["forecast"] for p in curve], marker=".", label=f"{name} alone")
        ax.fill_between(x, [scale * p["low"] for p in curve], [scale * p["high"] for p in curve], alpha=0.2)
    mixes = [c for c in advice.candidates if not c.is_single]
    if mixes:
        ax.scatter(
            [c.cost for c in mixes], [scale * c.forecast for c in mixes], s=14, c="grey", label="mixtures"
        )
    best = advice.best
    ax.scatter(
        [best.cost],
        [scale * best.forecast],
        marker="*",
        s=160,
        c="red",
        zorder=5,
        label=f"advised: {best.label}",
    )
    ax.axvline(advice.budget.amount, color="black", linestyle="--", linewidth=1, label="budget")
    ax.set_xscale("log")
    ax.set_xlabel(f"total cost ({advice.budget.unit})")
    ax.set_ylabel(
        {
            "coverage": "forecast coverage (%)",
            "unique": "unique correct per problem",
            "valid-unique": "valid unique correct per problem",
        }[advice.objective]
    )
    ax.set_title(
        f"forecast from a pilot of {advice.pilot['problems']} problems × "
        f"{advice.pilot['samples_per_problem']} samples"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
