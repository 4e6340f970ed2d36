"""The toy world's pair as registry models (``flopmatch models``): ``toyworld-wc`` and ``toyworld-se``.

:mod:`flopmatch.datasets` declares them with the toy world (``builder="flopmatch.toyworld.registry:WC"``)
and :mod:`flopmatch.models` builds them through these objects, like any model a dataset brings: a
nominal parameter count, where the model is cached, and ``prepare`` (pretrained on first use).
:func:`spec_model`, the toy world's declared ``spec_model``, builds a toy model of another shape (a study's
``toyworld_spec``, e.g. a smaller student).

This module is not one of the toy models' :data:`~flopmatch.toyworld.models.TRAINING_MODULES`, so
editing it never invalidates a cached model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from flopmatch.toyworld.models import SPECS, ToyModelSpec, ensure_model, model_path, toy_model_spec

MARKER = "toyworld.json"  # written last by ensure_model: a folder with it holds a finished model


@dataclass(frozen=True)
class ToyRegistryModel:
    """A toy model of the shape ``spec``, cached under ``$FLOPMATCH_CACHE`` by ``name`` and the spec's key: the
    toy world's two default models (:data:`WC`, :data:`SE`: name "wc" or "se" with its default spec) and a
    study's own shape (:func:`spec_model`)."""

    name: str
    spec: ToyModelSpec
    parameters_source: str = "toy model spec"

    @property
    def parameters(self) -> int:
        return self.spec.n_params

    def path(self) -> Path:
        return model_path(self.name, spec=self.spec)

    def is_prepared(self) -> bool:
        return (self.path() / MARKER).is_file()

    def prepare(self, *, progress: bool = True) -> Path:
        return Path(ensure_model(self.name, spec=self.spec, progress=progress))  # type: ignore[arg-type]


def spec_model(name: str, values: Mapping[str, Any]) -> ToyRegistryModel:
    """A toy model of the shape ``values`` gives (:class:`ToyModelSpec` fields, ``noise`` a mapping), cached as
    ``name``; a ValueError names an unknown field or a shape that cannot be built."""
    return ToyRegistryModel(name, checked_spec(values))


def checked_spec(values: Mapping[str, Any]) -> ToyModelSpec:
    """The :class:`ToyModelSpec` a study's ``toyworld_spec`` mapping describes (ValueError when it cannot)."""
    known = {f.name for f in fields(ToyModelSpec)} - {"knobs"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown ToyModelSpec field(s) {unknown}; expected some of {sorted(known)}")
    try:
        return toy_model_spec(dict(values))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a valid toy model: {exc}") from None


WC = ToyRegistryModel("wc", SPECS["wc"])
SE = ToyRegistryModel("se", SPECS["se"])

__all__ = ["MARKER", "SE", "WC", "ToyRegistryModel", "checked_spec", "spec_model"]
