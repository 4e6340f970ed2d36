"""Reading a YAML config file into a pydantic model: ``$VAR`` expansion, ``--set key.path=value``
overrides, and validation errors that name the file, the line and the dotted key.

Nothing here knows the study's sections (``flopmatch.study.config`` holds them); every function takes
the model class it explains errors against.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ValidationError

from flopmatch.errors import FlopmatchError


class StudyConfigError(FlopmatchError, ValueError):
    """A study file that cannot be used; the message names the file, line, key and what is expected."""


# --------------------------------------------------------------------------- reading


_ENV_PATTERN = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand ``$VAR``, ``${VAR}`` and ``${VAR:-default}``; an unset variable without default is an error
    (a silently empty path would point a study at the wrong data)."""
    env = os.environ if environ is None else environ

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        if name in env and env[name] != "":
            return env[name]
        if match.group("default") is not None:
            return match.group("default")
        raise StudyConfigError(
            f"environment variable ${name} is not set (use ${{{name}:-default}} for a default)"
        )

    return _ENV_PATTERN.sub(replace, text)


def resolve_path(value: str | None, base: Path) -> str | None:
    """``value`` with ``$VAR`` and ``~`` expanded, made absolute against ``base`` when relative."""
    if value is None:
        return None
    expanded = Path(os.path.expanduser(expand_env(value)))
    return str(expanded if expanded.is_absolute() else (base / expanded).resolve())


def looks_like_path(ref: str) -> bool:
    """Whether a model reference names a local path (``./``, ``../``, ``/``, ``~``, ``$VAR``), not a hub id."""
    return ref.startswith((".", "/", "~", "$"))


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping, e.g.
    ``training.enabled=true`` or ``problems.sample.limit=100``."""
    data = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise StudyConfigError(f"override {item!r} is not of the form key.path=value")
        parts = key.strip().split(".")
        node: Any = data
        for part in parts[:-1]:
            if not isinstance(node, dict):
                raise StudyConfigError(f"override {item!r}: {part!r} is not inside a mapping")
            node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise StudyConfigError(f"override {item!r}: {parts[-2]!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj


def read_yaml_mapping(path: Path) -> tuple[dict[str, Any], Any]:
    """The mapping a config file holds and its composed YAML tree (for :func:`describe_validation_error`'s
    line numbers); a file that cannot be read, is not YAML or is not a mapping raises ``StudyConfigError``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StudyConfigError(f"{path}: cannot read the study file ({exc.strerror or exc})") from exc
    try:
        root_node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise StudyConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(data, dict):
        raise StudyConfigError(f"{path}: a study file is a mapping of sections (name, problems, models, ...)")
    return data, root_node


# --------------------------------------------------------------------------- error messages


def describe_validation_error(
    exc: ValidationError, model: type[BaseModel], *, source: str = "<config>", node: Any = None
) -> str:
    """One line per problem: ``file:line: dotted.key: what is wrong; expected ...`` (``model``: the class
    that was validated, whose field descriptions say what is expected; ``node``: the composed YAML)."""
    count = exc.error_count()
    lines = [f"{source}: invalid study config ({count} problem{'s' * (count != 1)})"]
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = yaml_line(node, loc)
        where = f"{source}:{line}" if line else source
        lines.append(f"  {where}: {key}: {_explain(error, loc, model)}")
    return "\n".join(lines)


def _explain(error: Mapping[str, Any], loc: tuple, model: type[BaseModel]) -> str:
    kind = error["type"]
    field = _field_info(model, loc)
    expected = field.description if field is not None and field.description else None
    if kind == "missing":
        return f"required key is missing; expected {expected}" if expected else "required key is missing"
    if kind == "extra_forbidden":
        parent = _section_model(model, loc[:-1])
        if parent is None:
            return "unknown key"
        close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        return f"unknown key; {hint}expected one of: {', '.join(parent.model_fields)}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "value_error":  # our own validators already say what they got and what they expect
        return message
    got = error.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) and got is not None else ""
    return f"{message}{shown}; expected {expected}" if expected else f"{message}{shown}"


def _unwrap(annotation: Any) -> list[Any]:
    """The member types of an annotation (Optional/Union unwrapped, Annotated stripped)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(annotation) for t in _unwrap(a)]
    return [annotation]


def _section_model(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return None if current is None or isinstance(part, str) else current
        members = [
            t
            for t in _unwrap(current.model_fields[part].annotation)
            if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        current = members[0] if members else None
    return current


def _field_info(model: type[BaseModel], loc: tuple) -> Any:
    parts = [p for p in loc if isinstance(p, str)]
    if not parts:
        return None
    parent = _section_model(model, tuple(parts[:-1]))
    if parent is None:
        return None
    return parent.model_fields.get(parts[-1])


def yaml_line(node: Any, loc: tuple) -> int | None:
    """The 1-based line of ``loc`` in a composed YAML tree (the deepest existing ancestor's line)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if match is None:
                key_node = next((k for k, _ in node.value if getattr(k, "value", None) == str(part)), None)
                return key_node.start_mark.line + 1 if key_node is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line
