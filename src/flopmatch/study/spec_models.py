"""Models a dataset's own code builds from a study's spec (``models.<role>.<dataset>_spec``, the toy
world's ``toyworld_spec``): looked up through the dataset's declaration, never by testing its name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flopmatch.datasets import get_dataset, load_reference

if TYPE_CHECKING:
    from flopmatch.models import BuiltModel


def spec_model(dataset: str, name: str, values: Mapping[str, Any]) -> BuiltModel:
    """The model ``dataset``'s own code builds from ``values`` (a study's ``<dataset>_spec``), cached as
    ``name``: the ``variant`` of the first of the dataset's declared models (:mod:`flopmatch.datasets`)
    whose builder has one, e.g. :meth:`flopmatch.toyworld.registry.ToyRegistryModel.variant`. Nothing is
    built yet (``prepare`` does that); a ValueError when ``values`` describe no model it can build."""
    declared = get_dataset(dataset)
    for model in declared.models if declared is not None else ():
        builder = load_reference(model.builder, f"model {model.name!r}: its builder")
        if hasattr(builder, "variant"):
            return builder.variant(name, values)
    raise ValueError(f"dataset {dataset!r} declares no model that can be built from a spec")


__all__ = ["spec_model"]
