"""How numbers are written for people: percentages, intervals, durations, FLOPs, parameter counts and
relative gains, with a dash for a missing value (the report, the CLI and the study's log all use these)."""

from __future__ import annotations

import math
from typing import Any


def fmt_pct(value: Any, digits: int = 1) -> str:
    """A rate in [0, 1] as a percentage ("34.5%"); missing values as an en dash."""
    if is_missing(value):
        return "–"
    return f"{float(value) * 100:.{digits}f}%"


def fmt_num(value: Any, digits: int = 2) -> str:
    if is_missing(value):
        return "–"
    value = float(value)
    if value == int(value) and abs(value) < 1e6:
        return f"{int(value):,}"
    if abs(value) >= 1e5 or (0 < abs(value) < 1e-2):
        return f"{value:.{digits}e}"
    return f"{value:,.{digits}f}"


def fmt_ci(low: Any, high: Any, pct: bool = True) -> str:
    if is_missing(low) or is_missing(high):
        return "–"
    if pct:
        return f"[{float(low) * 100:.1f}, {float(high) * 100:.1f}]"
    return f"[{float(low):.2f}, {float(high):.2f}]"


def fmt_seconds(value: Any) -> str:
    if is_missing(value):
        return "–"
    value = float(value)
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(int(round(value)), 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def fmt_flops(value: Any) -> str:
    if is_missing(value):
        return "–"
    value = float(value)
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} FLOP"


def fmt_params(value: Any) -> str:
    if is_missing(value):
        return "–"
    value = float(value)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def paper_round(value: float) -> float:
    """A gain rounded as the paper prints it: to an integer from 10 up ("+86%"), one decimal below ("+5.8%")."""
    return round(value) if abs(value) >= 10 else round(value, 1)


def fmt_gain(gain: float) -> str:
    """Signed percent as the paper prints it ("+6%", "+5.8%", "−1.2%")."""
    if is_missing(gain):
        return "n/a"
    rounded = paper_round(gain)
    text = f"{abs(rounded):g}%"
    return ("+" if rounded >= 0 else "−") + text


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


