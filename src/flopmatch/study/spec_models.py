"""Models a dataset's own code builds from a study's spec (``models.<role>.<dataset>_spec``, the toy
world's ``toyworld_spec``): looked up through the dataset's declaration, never by testing its name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flopmatch.datasets import get_dataset

if TYPE_CHECKING:
    from flopmatch.models import BuiltModel


def spec_model(dataset: str, name: str, values: Mapping[str, Any]) -> BuiltModel:
    """The model ``dataset``'s own code builds from ``values`` (a study's ``<dataset>_spec``), cached as
    ``name``: the dataset's declared ``spec_model`` (:mod:`flopmatch.datasets`), e.g.
    :func:`flopmatch.toyworld.registry.spec_model`. Nothing is built yet (``prepare`` does that); a ValueError
    when ``values`` describe no model it can build."""
    declared = get_dataset(dataset)
    if declared is None or declared.spec_model is None:
        raise ValueError(f"dataset {dataset!r} declares no model that can be built from a spec")
    return declared.load_function("spec_model")(name, values)


__all__ = ["spec_model"]
