"""`flopmatch plan`: how many WC samples cost what S SE samples do."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from flopmatch.cli._app import app, console, fail
from flopmatch.cli.tables import print_table


class PlanMode(StrEnum):
    flops = "flops"
    price = "price"
    number = "number"
    measured = "measured"


class PlanRounding(StrEnum):
    floor = "floor"
    round = "round"
    ceil = "ceil"


_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text: str | None, flag: str) -> float | None:
    """``9e9``, ``27000000000``, ``0.5B``, ``494M`` → a number (K/M/B/G/T suffixes)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", text)
    if not match:
        raise fail(f"{flag}: expected a number like 9e9, 494M or 1.5B, got {text!r}")
    value = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if value <= 0:
        raise fail(f"{flag}: must be > 0, got {text!r}")
    return value


def parse_samples(text: str) -> list[int]:
    """``1,10`` → [1, 10]."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise fail(
            f"--se-samples: expected comma-separated positive integers like 1,10, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise fail(f"--se-samples: expected comma-separated positive integers like 1,10, got {text!r}")
    return values


@app.command("plan")
def plan_command(
    se_samples: Annotated[
        str, typer.Option("--se-samples", help="SE solutions per problem, one budget each: e.g. 1,10.")
    ],
    wc: Annotated[
        str | None,
        typer.Option("--wc", help="Weak-cheap model: HF dir, config.json, .gguf, registry name or hub id."),
    ] = None,
    se: Annotated[
        str | None, typer.Option("--se", help="Strong-expensive model (same forms as --wc).")
    ] = None,
    mode: Annotated[PlanMode, typer.Option("--mode", help="What to match: see above.")] = PlanMode.flops,
    wc_params: Annotated[
        str | None, typer.Option("--wc-params", help="WC parameter count, overrides --wc (9e9, 494M, 0.5B).")
    ] = None,
    se_params: Annotated[
        str | None, typer.Option("--se-params", help="SE parameter count, overrides --se.")
    ] = None,
    wc_tokens: Annotated[
        float | None,
        typer.Option("--wc-tokens", help="WC mean solution length W in tokens (give both or neither)."),
    ] = None,
    se_tokens: Annotated[float | None, typer.Option("--se-tokens", help="SE mean solution length W.")] = None,
    wc_price: Annotated[
        float | None, typer.Option("--wc-price", help="price mode: WC price per output token (any unit).")
    ] = None,
    se_price: Annotated[
        float | None, typer.Option("--se-price", help="price mode: SE price (same unit).")
    ] = None,
    wc_cost: Annotated[
        float | None, typer.Option("--wc-cost", help="measured mode: WC seconds (or $) per sample.")
    ] = None,
    se_cost: Annotated[
        float | None, typer.Option("--se-cost", help="measured mode: SE seconds (or $) per sample.")
    ] = None,
    wc_tps: Annotated[
        float | None,
        typer.Option("--wc-tps", help="measured mode: WC tokens/s (with --wc-tokens/--se-tokens)."),
    ] = None,
    se_tps: Annotated[float | None, typer.Option("--se-tps", help="measured mode: SE tokens/s.")] = None,
    ledger: Annotated[
        Path | None,
        typer.Option(
            "--ledger",
            help="A run's ledger.parquet (rows matched by --wc/--se names): mean lengths W for every mode, "
            "and seconds per sample for --mode measured.",
        ),
    ] = None,
    rounding: Annotated[
        PlanRounding,
        typer.Option("--rounding", help="floor: WC never spends more than SE; ceil; round (half up)."),
    ] = PlanRounding.floor,
    problems: Annotated[
        int | None, typer.Option("--problems", min=1, help="Number of problems: adds whole-run totals.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON (nothing else).")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the plan JSON here (e.g. runs/x/plan.json).")
    ] = None,
) -> None:
    """Plan compute-matched sampling budgets: WC samples per problem that cost what SE's do.

    Generating a token costs about **2·P FLOPs** (P = parameters), a W-token solution 2·P·W, so at an
    equal budget **S_WC = (P_SE·W_SE)/(P_WC·W_WC) · S_SE** (W equal for both unless `--wc-tokens`/
    `--se-tokens` are given). Gemma2 9B vs 27B: 1 SE sample = 3 WC samples.

    **Modes** (`--mode`): `flops` (the above; the default), `price` (price per output token:
    Flash 0.3 vs Pro 10.5 → 35 Flash per Pro), `number` (the control: the same S for both) and
    `measured` (seconds or $ per sample from `--wc-cost/--se-cost`, tokens/s from `--wc-tps/--se-tps`,
    or a sampling `--ledger`).

    **Parameter counts** come from the models: an HF `config.json` (local dir or hub id: computed from
    the architecture), a `.gguf` file (tensor element counts from its header, never byte sizes) or a
    flopmatch registry name. Every parameter is counted once, **embeddings included**; a **tied** output
    head (the embedding matrix reused, incl. a GGUF's copy of it) is **not counted twice**; an untied head
    is counted. `--wc-params/--se-params` override (e.g. 9e9, 494M, 1.5B).

    **Rounding**: non-integer counts are rounded down by default, so WC never spends more than SE;
    every budget shows both sides' FLOPs and the mismatch in percent.

    Examples:

        flopmatch plan --wc-params 9e9 --se-params 27e9 --se-samples 1,10
        flopmatch plan --wc qwen2.5-coder-0.5b-instruct --se qwen2.5-coder-1.5b-instruct --se-samples 1,10
        flopmatch plan --mode price --wc-price 0.3 --se-price 10.5 --se-samples 1 --json
        flopmatch plan --mode measured --ledger runs/x/ledger.parquet --wc M1 --se M2 --se-samples 1,10
    """
    from flopmatch.budget import plan_for_models
    from flopmatch.store import write_text

    plan = plan_for_models(
        wc,
        se,
        parse_samples(se_samples),
        mode=mode.value,
        wc_params=parse_count(wc_params, "--wc-params"),
        se_params=parse_count(se_params, "--se-params"),
        ledger=ledger,
        wc_tokens=wc_tokens,
        se_tokens=se_tokens,
        wc_price=wc_price,
        se_price=se_price,
        wc_cost_per_sample=wc_cost,
        se_cost_per_sample=se_cost,
        wc_tokens_per_second=wc_tps,
        se_tokens_per_second=se_tps,
        rounding=rounding.value,
        n_problems=problems,
    )
    if out is not None:
        write_text(plan.to_json(), out)
    if as_json:
        typer.echo(plan.to_json(), nl=False)
        return
    _render(plan)
    if out is not None:
        console.print(f"plan written to {out}")


def _num(value: float | None) -> str:
    """Short numbers for tables: 35, 1,319, 4.94e+08."""
    if value is None:
        return "–"
    if value == int(value) and abs(value) < 1e6:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _sci(value: float | None) -> str:
    """FLOPs: 7.72e11."""
    return "–" if value is None else f"{value:.3g}".replace("e+", "e")


def _si(value: float | None) -> str:
    """Parameter counts as a model card writes them: 494.0M, 9.000B."""
    if value is None:
        return "–"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}"
    return _num(value)


def _cost(value: float | None) -> str:
    return _sci(value) if value is not None and abs(value) >= 1e6 else _num(value)


def _render(plan) -> None:
    console.print(
        f"[bold]{plan.mode}-matched plan[/] ({plan.rounding} rounding): one {plan.se.name} sample costs as much as "
        f"[bold]{plan.ratio:.4g}[/] {plan.wc.name} samples"
    )
    sides = (("WC", plan.wc), ("SE", plan.se))
    fields = [("params", lambda m: _si(m.params)), ("mean tokens W", lambda m: _num(m.tokens)),
              ("price/token", lambda m: _num(m.price)), ("cost/sample", lambda m: _num(m.cost_per_sample))]  # fmt: skip
    fields = [(name, get) for name, get in fields if any(get(m) != "–" for _, m in sides)]
    columns = ("role", "model", *(name for name, _ in fields))
    rows = [(role, side.name, *(get(side) for _, get in fields)) for role, side in sides]
    print_table(columns, rows, keys={"role", "model"}, right=set(columns[2:]), title="models")
    for role, side in (("WC", plan.wc), ("SE", plan.se)):
        for what, where in (
            ("params", side.param_source),
            ("W", side.tokens_source),
            ("cost", side.cost_source),
        ):
            if where:
                console.print(f"  {role} {what} from {where}", soft_wrap=True)

    extra_flops = plan.mode != "flops" and any(b.se_flops is not None for b in plan.budgets)
    show_cost = plan.mode != "number"
    columns = ["SE samples", "WC samples", "WC exact"]
    if show_cost:
        columns += ["SE cost", "WC cost", "WC−SE"]
    if extra_flops:
        columns += ["SE FLOPs", "WC FLOPs", "FLOPs WC−SE"]
    if plan.n_problems is not None:
        columns += ["SE total", "WC total"]
    rows = []
    for b in plan.budgets:
        row = [str(b.se_samples), f"[bold]{b.wc_samples}[/]", f"{b.wc_exact:.4g}"]
        if show_cost:
            row += [_cost(b.se_cost), _cost(b.wc_cost), f"{b.mismatch_pct:+.2f}%"]
        if extra_flops:
            row += [_sci(b.se_flops), _sci(b.wc_flops), f"{b.flops_mismatch_pct:+.2f}%"]
        if plan.n_problems is not None:
            row += [_cost(b.se_cost_total), _cost(b.wc_cost_total)]
        rows.append(row)
    caption = f"totals: × {plan.n_problems:,} problems" if plan.n_problems is not None else None
    title = f"budgets (cost in {plan.cost_unit})"
    print_table(columns, rows, keys=(), right=set(columns), title=title, caption=caption)
    if plan.flops_unit and (extra_flops or plan.mode == "flops"):
        console.print(f"FLOPs: {plan.flops_unit}")
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}")
