"""The toy world's pair as registry models (``flopmatch models``): ``toyworld-wc`` and ``toyworld-se``.

:mod:`flopmatch.datasets` declares them with the toy world (``builder="flopmatch.toyworld.registry:WC"``)
and :mod:`flopmatch.models` builds them through these objects, like any model a dataset brings: a
nominal parameter count, where the model is cached, and ``prepare`` (pretrained on first use).

This module is not one of the toy models' :data:`~flopmatch.toyworld.models.TRAINING_MODULES`, so
editing it never invalidates a cached model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flopmatch.toyworld.models import PARAMS, Size, ensure_model, model_path

MARKER = "toyworld.json"  # written last by ensure_model: a folder with it holds a finished model


@dataclass(frozen=True)
class ToyRegistryModel:
    """One of the toy world's two default models (``size`` "wc" or "se"), cached under ``$FLOPMATCH_CACHE``."""

    size: Size
    parameters_source: str = "toy model spec"

    @property
    def parameters(self) -> int:
        return PARAMS[self.size]

    def path(self) -> Path:
        return model_path(self.size)

    def is_prepared(self) -> bool:
        return (self.path() / MARKER).is_file()

    def prepare(self, *, progress: bool = True) -> Path:
        return Path(ensure_model(self.size, progress=progress))


WC = ToyRegistryModel("wc")
SE = ToyRegistryModel("se")

__all__ = ["MARKER", "SE", "WC", "ToyRegistryModel"]
