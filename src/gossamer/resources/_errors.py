"""pydantic's ValidationError → FieldErrors with Kubernetes-style paths and short reasons."""

from __future__ import annotations

import json
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gossamer.errors import FieldError
from gossamer.resources._base import PROBLEMS_ERROR, REASON_ERROR

# pydantic reports it beside the real error of the field the default depends on.
_ECHOES = frozenset({"default_factory_not_called"})

_REASONS: Mapping[str, str] = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def field_errors(exc: ValidationError, model: type[BaseModel]) -> list[FieldError]:
    """Every error in `exc`, in the order pydantic found them, with paths into `model`."""
    errors: list[FieldError] = []
    for error in exc.errors(include_url=False):
        if error["type"] in _ECHOES:
            continue
        loc = tuple(error["loc"])
        if error["type"] == PROBLEMS_ERROR:
            for subloc, reason in error.get("ctx", {})["problems"]:
                errors.append(FieldError(format_path(model, (*loc, *subloc)), reason))
            continue
        reason = _reason(error)
        if loc and loc[-1] == "[key]":
            loc, reason = loc[:-1], f"key {reason}"
        errors.append(FieldError(format_path(model, loc), reason))
    return errors


def _reason(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    if kind == REASON_ERROR:
        return str(ctx["reason"])
    if kind in _REASONS:
        return _REASONS[kind]
    if kind == "literal_error":
        return f"must be {ctx['expected']}"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items"
    if kind == "too_short":
        n = ctx["min_length"]
        return f"must have at least {n} item{'s' if n != 1 else ''}"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "string_too_short":
        n = ctx["min_length"]
        return "must not be empty" if n == 1 else f"must be at least {n} characters"
    msg = error["msg"]
    return msg[:1].lower() + msg[1:]


def format_path(model: type[BaseModel], loc: Sequence[str | int]) -> str:
    """('spec', 'ports', 0, 'port') → "spec.ports[0].port"; map keys → labels["app"].

    A loc does not say whether a string is a field or a map key, so the path is walked
    through the model's field types alongside.
    """
    path = ""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        origin = get_origin(current)
        if origin is dict:
            path += f"[{json.dumps(str(part))}]"
            current = get_args(current)[1]
        elif isinstance(part, int):
            path += f"[{part}]"
            current = get_args(current)[0] if origin is list else None
        else:
            path += f".{part}" if path else part
            current = _field_type(current, part)
    return path


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _field_type(model: Any, alias: str) -> Any:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    for name, info in model.model_fields.items():
        if alias in (info.alias, name):
            return info.annotation
    return None
