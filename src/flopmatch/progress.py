"""One way to show progress: every long loop draws a tqdm bar through :func:`progress_bar`, and one
switch, :func:`set_quiet` (the CLI's ``--quiet``), silences them all.

The switch is an environment variable so that it reaches worker processes too (the grading pool,
vLLM engines, ``accelerate launch`` training), and it also sets ``TQDM_DISABLE`` and
``HF_HUB_DISABLE_PROGRESS_BARS``, which silence the bars of the libraries flopmatch drives
(transformers, TRL, vLLM, datasets). Those libraries read the variables when they are imported, so a
library already imported when the switch flips is told directly.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm.auto import tqdm

QUIET_ENV = "FLOPMATCH_QUIET"
LIBRARY_SWITCHES = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")
# (module, function that turns its bars off, ... on) for libraries that read the switches at import
_IMPORTED_SWITCHES = (
    ("huggingface_hub.utils", "disable_progress_bars", "enable_progress_bars"),
    ("transformers.utils.logging", "disable_progress_bar", "enable_progress_bar"),
    ("datasets", "disable_progress_bars", "enable_progress_bars"),
)


def is_quiet() -> bool:
    """True when progress bars are switched off for this process and its children."""
    return os.environ.get(QUIET_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_quiet(quiet: bool = True) -> None:
    """Switch every progress bar off (or back on) here and in the processes started from now on."""
    if quiet:
        for name in (QUIET_ENV, *LIBRARY_SWITCHES):
            os.environ[name] = "1"
    else:
        for name in (QUIET_ENV, *LIBRARY_SWITCHES):
            os.environ.pop(name, None)
    for module_name, off, on in _IMPORTED_SWITCHES:
        module = sys.modules.get(module_name)  # never imported here: only told if already loaded
        switch = getattr(module, off if quiet else on, None)
        if switch is not None:
            switch()


def progress_bar(total: int | float | None = None, desc: str | None = None, *, unit: str = "it",
                 enabled: bool = True, **options) -> tqdm:
    """A tqdm bar, drawn unless ``enabled`` is False or the process is quiet (:func:`set_quiet`)."""
    from tqdm.auto import tqdm  # here, not at import: every CLI command imports this module for --quiet

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled or is_quiet(), dynamic_ncols=True, **options)
