"""Compute-matched sampling budgets: how many weak-cheap (WC) samples cost what S strong-expensive (SE) ones do.

The rule (Bansal et al., 2024): generating a token costs about 2·P FLOPs, a solution of W tokens
2·P·W, so at an equal budget per problem

    S_WC = (P_SE · W_SE) / (P_WC · W_WC) · S_SE        (W_SE = W_WC when lengths are not given)

Modes, each a cost per sample; the *ratio* is cost(SE) / cost(WC):

- ``flops``: 2·P·W (P from the models, see :mod:`flopmatch.modelinfo`; W optional).
- ``price``: price per output token (× W when given). Flash/Pro at 0.3 vs 10.5 -> 1 Pro vs 35 Flash.
- ``number``: 1 (the control: the same number of samples for both).
- ``measured``: measured seconds (or dollars) per sample, from a calibration run or the sampling
  ledger (``measured_costs_from_ledger``), or W / (measured tokens per second).

A *budget* is always one point of a plan, named by SE's samples per problem (``plan --se-samples``,
``build-sft --budget``, ``judge --budget``, :meth:`BudgetPlan.point`); a cap on what sampling may
spend is named for its unit (``budget_flops``, ``budget_seconds``), never plain ``budget``.

Non-integer products are rounded by a stated rule (``floor`` by default: WC never spends more than
SE; ``ceil``; ``round``, half up), and every budget point reports both sides' cost and FLOPs and the
mismatch in percent. Inputs are read as the decimals they print as (``0.3`` is 3/10, not the nearest
binary float) and matched in exact rational arithmetic, so 10.5 / 0.3 is exactly 35.

Everything here is pure except :func:`measured_costs_from_ledger` (reads a file) and
:func:`plan_for_models` (reads model configs); the CLI (``flopmatch plan``) only wraps them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from flopmatch.errors import FlopmatchError

Mode = Literal["flops", "price", "number", "measured"]
Rounding = Literal["floor", "round", "ceil"]
MODES: tuple[str, ...] = ("flops", "price", "number", "measured")
ROUNDINGS: tuple[str, ...] = ("floor", "round", "ceil")


class BudgetError(FlopmatchError, ValueError):
    """The inputs do not determine a plan (a missing or non-positive number, an unknown mode...)."""


class UnknownBudgetError(BudgetError, KeyError):
    """A budget the plan does not hold (:meth:`BudgetPlan.point`): a BudgetError, so a ValueError, and a
    KeyError, which :meth:`BudgetPlan.wc_samples_for` raised for it before it became ``point``'s."""

    __str__ = BudgetError.__str__  # the message as written, not KeyError's repr of it


# --------------------------------------------------------------------------- the plan


class ModelSide(BaseModel):
    """What the plan knows about one model, and where it came from."""

    name: str
    params: float | None = Field(None, description="parameter count P (see flopmatch.modelinfo)")
    param_source: str | None = None
    tokens: float | None = Field(None, description="mean solution length W in generated tokens")
    tokens_source: str | None = None
    price: float | None = Field(None, description="price per output token (any unit, the same for both)")
    cost_per_sample: float | None = Field(None, description="measured seconds or $ per sample")
    cost_source: str | None = None
    cost: float = Field(description="cost of one sample in the plan's unit (what the ratio divides)")


class BudgetPoint(BaseModel):
    """One budget: SE's samples per problem and WC's matched count, with what each side spends."""

    se_samples: int
    wc_samples: int
    wc_exact: float = Field(description="ratio × se_samples before rounding")
    se_cost: float = Field(description="per problem, in BudgetPlan.cost_unit")
    wc_cost: float
    mismatch_pct: float = Field(description="(wc_cost − se_cost) / se_cost × 100; ≤ 0 under floor rounding")
    se_flops: float | None = Field(None, description="per problem, in BudgetPlan.flops_unit; None without P")
    wc_flops: float | None = None
    flops_mismatch_pct: float | None = Field(
        None, description="WC vs SE FLOPs, percent (≠ mismatch_pct unless mode=flops)"
    )
    se_cost_total: float | None = Field(None, description="× n_problems")
    wc_cost_total: float | None = None
    se_flops_total: float | None = None
    wc_flops_total: float | None = None


class BudgetPlan(BaseModel):
    """A compute-matched plan: the ratio, the inputs with their sources, and one point per SE budget."""

    mode: Mode
    rounding: Rounding
    ratio: float = Field(description="cost of one SE sample / cost of one WC sample")
    ratio_exact: str = Field(description="the ratio as an exact fraction of the decimal inputs")
    cost_unit: str
    flops_unit: str | None = None
    n_problems: int | None = None
    wc: ModelSide
    se: ModelSide
    budgets: list[BudgetPoint]
    notes: list[str] = Field(default_factory=list)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BudgetPlan:
        return cls.model_validate_json(text)

    @property
    def se_budgets(self) -> list[int]:
        """The plan's budgets by name: SE's samples per problem at each point, in plan order."""
        return [int(p.se_samples) for p in self.budgets]

    def point(self, se_samples: int) -> BudgetPoint:
        """The budget named by ``se_samples`` (SE's samples per problem: what ``budget`` means everywhere);
        a count the plan does not hold raises :class:`UnknownBudgetError` (a BudgetError) listing the ones
        it does."""
        for point in self.budgets:
            if int(point.se_samples) == int(se_samples):
                return point
        known = ", ".join(str(s) for s in self.se_budgets)
        raise UnknownBudgetError(f"no budget with se_samples={se_samples} (the plan has: {known})")

    def wc_samples_for(self, se_samples: int) -> int:
        """WC's matched sample count for one of the planned SE budgets: ``point(se_samples).wc_samples``
        (an unknown budget raises :class:`UnknownBudgetError`, still a KeyError as before)."""
        return self.point(se_samples).wc_samples

    def save(self, run_dir: Any) -> Path:
        """Write the plan to ``<run>/plan.json`` atomically."""
        from flopmatch.store import as_run, write_text

        run = as_run(run_dir)
        return write_text(self.to_json(), run.plan_path)


# --------------------------------------------------------------------------- arithmetic


def exact(value: float | int, name: str = "value") -> Fraction:
    """A positive finite number as the exact fraction of its shortest decimal form (0.3 -> 3/10)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)):
        raise BudgetError(f"{name} must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BudgetError(f"{name} must be finite, got {value}")
    result = Fraction(value) if isinstance(value, (int, Fraction)) else Fraction(repr(value))
    if result <= 0:
        raise BudgetError(f"{name} must be > 0, got {value}")
    return result


def round_samples(value: Fraction, rounding: Rounding) -> int:
    """Round a matched sample count: floor (default), ceil, or round half up."""
    if rounding == "floor":
        return math.floor(value)
    if rounding == "ceil":
        return math.ceil(value)
    if rounding == "round":
        return math.floor(value + Fraction(1, 2))
    raise BudgetError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")


def _pct(a: Fraction, b: Fraction) -> float:
    return float((a - b) / b * 100)


def _opt(value: float | None, name: str) -> Fraction | None:
    return None if value is None else exact(value, name)


# --------------------------------------------------------------------------- the planner


def plan_budgets(
    *,
    mode: Mode = "flops",
    se_samples: Sequence[int],
    wc_params: float | None = None,
    se_params: float | None = None,
    wc_tokens: float | None = None,
    se_tokens: float | None = None,
    wc_price: float | None = None,
    se_price: float | None = None,
    wc_cost_per_sample: float | None = None,
    se_cost_per_sample: float | None = None,
    wc_tokens_per_second: float | None = None,
    se_tokens_per_second: float | None = None,
    measured_unit: str = "seconds",
    rounding: Rounding = "floor",
    n_problems: int | None = None,
    wc_name: str = "WC",
    se_name: str = "SE",
    wc_param_source: str | None = None,
    se_param_source: str | None = None,
    wc_tokens_source: str | None = None,
    se_tokens_source: str | None = None,
    wc_cost_source: str | None = None,
    se_cost_source: str | None = None,
) -> BudgetPlan:
    """Plan WC sample counts matching each SE budget in ``se_samples`` (pure; see the module docstring).

    Parameter counts P are optional outside ``flops`` mode; when given, every point also reports
    FLOPs (2·P·W per sample, per solution token when W is not given). ``*_source`` strings are
    recorded in the plan so a reader knows where each number came from.
    """
    budgets = _check_inputs(mode, rounding, se_samples, n_problems)

    p_wc, p_se = _opt(wc_params, "wc_params"), _opt(se_params, "se_params")
    w_wc, w_se = _opt(wc_tokens, "wc_tokens"), _opt(se_tokens, "se_tokens")
    if (w_wc is None) != (w_se is None):
        raise BudgetError(
            "give both mean solution lengths or neither (wc_tokens/se_tokens; CLI: --wc-tokens/--se-tokens)"
        )
    notes: list[str] = []

    c_wc, c_se, cost_unit = _cost_per_sample(
        mode, p_wc, p_se, w_wc, w_se, notes, wc_price=wc_price, se_price=se_price,
        wc_measured=(wc_cost_per_sample, wc_tokens_per_second), se_measured=(se_cost_per_sample, se_tokens_per_second),
        measured_unit=measured_unit,
    )

    ratio = c_se / c_wc
    if ratio < 1 and mode != "number":
        notes.append(
            f"{wc_name} costs more per sample than {se_name} (ratio {float(ratio):.3g} < 1): it is not the cheaper model"
        )

    f_wc = 2 * p_wc * (w_wc or 1) if p_wc is not None else None
    f_se = 2 * p_se * (w_se or 1) if p_se is not None else None
    have_flops = f_wc is not None and f_se is not None
    flops_unit = None
    if have_flops:
        flops_unit = (
            "FLOPs per problem (2·P·W per sample)"
            if w_wc
            else "FLOPs per problem per solution token (2·P per sample-token)"
        )
    elif mode != "flops":
        notes.append("FLOPs not reported: parameter counts not given (wc_params/se_params)")

    points = [_budget_point(s, ratio, rounding, c_wc, c_se, f_wc, f_se, n_problems, wc_name, notes)
              for s in budgets]

    def side(name, params, psrc, tokens, tsrc, price, cps, csrc, cost) -> ModelSide:
        return ModelSide(
            name=name, params=params, param_source=psrc, tokens=tokens, tokens_source=tsrc,
            price=price, cost_per_sample=cps, cost_source=csrc, cost=float(cost),
        )  # fmt: skip

    return BudgetPlan(
        mode=mode,
        rounding=rounding,
        ratio=float(ratio),
        ratio_exact=str(ratio),
        cost_unit=cost_unit,
        flops_unit=flops_unit,
        n_problems=n_problems,
        wc=side(wc_name, wc_params, wc_param_source, wc_tokens, wc_tokens_source, wc_price,
                wc_cost_per_sample, wc_cost_source, c_wc),
        se=side(se_name, se_params, se_param_source, se_tokens, se_tokens_source, se_price,
                se_cost_per_sample, se_cost_source, c_se),
        budgets=points,
        notes=list(dict.fromkeys(notes)),
    )  # fmt: skip


def _check_inputs(mode: str, rounding: str, se_samples: Sequence[int], n_problems: int | None) -> list[int]:
    """The SE budgets, after checking the mode, rounding, budgets and problem count."""
    if mode not in MODES:
        raise BudgetError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if rounding not in ROUNDINGS:
        raise BudgetError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    budgets = list(se_samples)
    if not budgets:
        raise BudgetError("se_samples is empty: give at least one SE budget (CLI: --se-samples 1,10)")
    for s in budgets:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise BudgetError(f"se_samples must be positive integers, got {s!r}")
    if n_problems is not None and (
        isinstance(n_problems, bool) or not isinstance(n_problems, int) or n_problems < 1
    ):
        raise BudgetError(f"n_problems must be a positive integer, got {n_problems!r}")
    return budgets


def _cost_per_sample(mode: str, p_wc: Fraction | None, p_se: Fraction | None, w_wc: Fraction | None,
                     w_se: Fraction | None, notes: list[str], *, wc_price: float | None, se_price: float | None,
                     wc_measured: tuple[float | None, float | None], se_measured: tuple[float | None, float | None],
                     measured_unit: str) -> tuple[Fraction, Fraction, str]:
    """(WC cost, SE cost, unit) of one sample per problem in the plan's currency."""
    if mode == "flops":
        if p_wc is None or p_se is None:
            raise BudgetError(
                "flops mode needs both parameter counts (wc_params/se_params; CLI: --wc/--se model references "
                "or --wc-params/--se-params)"
            )
        c_wc, c_se = 2 * p_wc * (w_wc or 1), 2 * p_se * (w_se or 1)
        cost_unit = "FLOPs per problem" if w_wc else "FLOPs per problem per solution token"
        if w_wc is None:
            notes.append(
                "mean solution lengths not given: assumed equal for both models (the paper's assumption)"
            )
    elif mode == "price":
        pr_wc, pr_se = _opt(wc_price, "wc_price"), _opt(se_price, "se_price")
        if pr_wc is None or pr_se is None:
            raise BudgetError(
                "price mode needs both prices per output token (wc_price/se_price; CLI: --wc-price/--se-price)"
            )
        c_wc, c_se = pr_wc * (w_wc or 1), pr_se * (w_se or 1)
        cost_unit = "price units per problem" if w_wc else "price units per problem per solution token"
    elif mode == "number":
        c_wc = c_se = Fraction(1)
        cost_unit = "samples per problem"
    else:  # measured
        c_wc = _measured(*wc_measured, w_wc, "wc")
        c_se = _measured(*se_measured, w_se, "se")
        cost_unit = f"{measured_unit} per problem (measured)"
    return c_wc, c_se, cost_unit


def _budget_point(s: int, ratio: Fraction, rounding: str, c_wc: Fraction, c_se: Fraction, f_wc: Fraction | None,
                  f_se: Fraction | None, n_problems: int | None, wc_name: str, notes: list[str]) -> BudgetPoint:
    """The WC sample count matching ``s`` SE samples, with both sides' cost (and FLOPs when known)."""
    have_flops = f_wc is not None and f_se is not None
    wc_exact = ratio * s
    k = round_samples(wc_exact, rounding)
    if k == 0:
        notes.append(
            f"at se_samples={s} {rounding} rounding leaves {wc_name} 0 samples: one of its samples costs more"
        )
    wc_cost, se_cost = k * c_wc, s * c_se
    point: dict[str, Any] = {
        "se_samples": s,
        "wc_samples": k,
        "wc_exact": float(wc_exact),
        "se_cost": float(se_cost),
        "wc_cost": float(wc_cost),
        "mismatch_pct": _pct(wc_cost, se_cost),
    }
    if have_flops:
        assert f_wc is not None and f_se is not None
        point |= {
            "se_flops": float(s * f_se),
            "wc_flops": float(k * f_wc),
            "flops_mismatch_pct": _pct(k * f_wc, s * f_se),
        }
    if n_problems is not None:
        point |= {
            "se_cost_total": float(se_cost * n_problems),
            "wc_cost_total": float(wc_cost * n_problems),
        }
        if have_flops:
            assert f_wc is not None and f_se is not None
            point |= {
                "se_flops_total": float(s * f_se * n_problems),
                "wc_flops_total": float(k * f_wc * n_problems),
            }
    return BudgetPoint(**point)


def _measured(cost: float | None, tps: float | None, tokens: Fraction | None, side: str) -> Fraction:
    if cost is not None:
        return exact(cost, f"{side}_cost_per_sample")
    if tps is not None and tokens is not None:
        return tokens / exact(tps, f"{side}_tokens_per_second")
    raise BudgetError(
        f"measured mode needs {side.upper()}'s cost per sample ({side}_cost_per_sample; CLI: --{side}-cost or "
        f"--ledger) or its tokens per second and mean solution length ({side}_tokens_per_second + {side}_tokens; "
        f"CLI: --{side}-tps --{side}-tokens)"
    )


# --------------------------------------------------------------------------- measured costs


@dataclass(frozen=True)
class MeasuredCost:
    """One model's totals in a sampling ledger."""

    model: str
    samples: int
    seconds: float
    completion_tokens: int
    source: str

    @property
    def seconds_per_sample(self) -> float:
        return self.seconds / self.samples

    @property
    def tokens_per_sample(self) -> float:
        return self.completion_tokens / self.samples


LEDGER_COLUMNS = ("model", "samples", "completion_tokens", "seconds")


def measured_costs_from_ledger(
    path: str | Path, wc_model: str, se_model: str
) -> tuple[MeasuredCost, MeasuredCost]:
    """Sum the ledger rows of each model (matched by name or by its run-directory key).

    ``path`` is a ``ledger.parquet`` file (or a directory of ``part-*.parquet`` shards) with at least the
    columns model, samples, completion_tokens, seconds. Seconds are what the sampler recorded (wall
    time of its batches), so both models should have been measured on the same hardware.
    """
    from flopmatch.store import model_key, read_shards, read_table

    path = Path(path)
    if not path.exists():
        raise BudgetError(f"ledger {path} does not exist")
    table = read_shards(path) if path.is_dir() else read_table(path)
    missing = [c for c in LEDGER_COLUMNS if c not in table.column_names]
    if missing:
        raise BudgetError(f"ledger {path}: missing column(s) {missing} (has {table.column_names})")
    rows = table.select(list(LEDGER_COLUMNS)).to_pylist()
    for number, row in enumerate(rows, 1):
        for column in LEDGER_COLUMNS:
            if row[column] is None:
                raise BudgetError("is empty", file=f"ledger {path}", row=number, field=column)

    def totals(model: str) -> MeasuredCost:
        wanted = {model, model_key(model)}
        mine = [r for r in rows if r["model"] in wanted or model_key(str(r["model"])) in wanted]
        if not mine:
            raise BudgetError(
                f"ledger {path}: no rows for model {model!r} (models: {sorted({str(r['model']) for r in rows})})"
            )
        samples = sum(int(r["samples"]) for r in mine)
        seconds = sum(float(r["seconds"]) for r in mine)
        if samples <= 0 or seconds <= 0:
            raise BudgetError(
                f"ledger {path}: model {model!r} has {samples} samples in {seconds} s; nothing to measure"
            )
        tokens = sum(int(r["completion_tokens"]) for r in mine)
        return MeasuredCost(model, samples, seconds, tokens, f"ledger:{path}")

    return totals(wc_model), totals(se_model)


# --------------------------------------------------------------------------- from model references


def plan_for_models(
    wc: str | None,
    se: str | None,
    se_samples: Sequence[int],
    *,
    mode: Mode = "flops",
    wc_params: float | None = None,
    se_params: float | None = None,
    ledger: str | Path | None = None,
    **kwargs: Any,
) -> BudgetPlan:
    """:func:`plan_budgets` with parameter counts read from model references (the side-effecting edge).

    In ``flops`` mode a missing count is read with :func:`flopmatch.modelinfo.count_parameters`
    (config.json, GGUF, registry name or hub id) and failure is an error. In the other modes counts
    are only used to report FLOPs, so they are read from local files and registry names only (no hub
    round trips). A ``ledger`` supplies measured mean solution lengths W (unless given) in every mode,
    and in ``measured`` mode the seconds per sample.
    """
    from flopmatch.modelinfo import count_parameters, is_local_reference

    sources: dict[str, Any] = {}
    counted: dict[str, float | None] = {"wc": wc_params, "se": se_params}
    for side_name, ref in (("wc", wc), ("se", se)):
        if counted[side_name] is not None:
            sources[f"{side_name}_param_source"] = "given"
            continue
        if ref is None:
            continue
        if mode == "flops" or is_local_reference(ref):
            count = count_parameters(ref)
            counted[side_name] = float(count.total)
            sources[f"{side_name}_param_source"] = count.source
    if ledger is not None:
        if wc is None or se is None:
            raise BudgetError("a ledger needs both model names (CLI: --wc/--se) to find their rows")
        wc_cost, se_cost = measured_costs_from_ledger(ledger, wc, se)
        if (
            mode == "measured"
            and kwargs.get("wc_cost_per_sample") is None
            and kwargs.get("se_cost_per_sample") is None
        ):
            kwargs |= {
                "wc_cost_per_sample": wc_cost.seconds_per_sample,
                "se_cost_per_sample": se_cost.seconds_per_sample,
            }
            sources |= {"wc_cost_source": wc_cost.source, "se_cost_source": se_cost.source}
        if kwargs.get("wc_tokens") is None and kwargs.get("se_tokens") is None:
            kwargs |= {"wc_tokens": wc_cost.tokens_per_sample, "se_tokens": se_cost.tokens_per_sample}
            sources |= {"wc_tokens_source": wc_cost.source, "se_tokens_source": se_cost.source}
    for key, value in sources.items():  # a source the caller states wins
        if kwargs.get(key) is None:
            kwargs[key] = value
    kwargs["wc_name"] = kwargs.get("wc_name") or wc or "WC"
    kwargs["se_name"] = kwargs.get("se_name") or se or "SE"
    return plan_budgets(
        mode=mode, se_samples=se_samples, wc_params=counted["wc"], se_params=counted["se"], **kwargs
    )
