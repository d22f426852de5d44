"""Multi-document YAML (or JSON) → plain dicts, read the way kubectl reads them."""

from __future__ import annotations

import json
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode

from gossamer.errors import FieldError, InvalidResource

_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, adjusted to what Kubernetes' decoder does: timestamps stay
    strings (creationTimestamp is a string field), and a repeated key is an error rather
    than a silent overwrite.

    The pure-Python loader, not libyaml's: its messages are the same on every machine,
    and configuration files are small.
    """

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            # Keys brought in by a `<<` merge may be overridden; only literal repeats count.
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=False)
            if key in seen:
                raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return result


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else type(value).__name__


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _load(text: str, source: str) -> list[Any]:
    """Every document in `text`, empty ones as None, so that indexes count every document."""
    if text.lstrip().startswith("{"):
        # Strict JSON first: YAML 1.1 refuses some valid JSON (tabs between tokens).
        try:
            return [json.loads(text, object_pairs_hook=_reject_duplicate_keys)]
        except ValueError:
            pass  # not JSON after all: YAML reports the error, with its position
    documents: list[Any] = []
    try:
        for document in yaml.load_all(text, Loader=_Loader):
            documents.append(document)
    except yaml.MarkedYAMLError as exc:
        raise InvalidResource(
            [FieldError(f"document {len(documents) + 1}", _yaml_reason(exc))], subject=source
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidResource(
            [FieldError(f"document {len(documents) + 1}", f"invalid YAML: {exc}")], subject=source
        ) from None
    return documents


def _yaml_reason(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = exc.problem or exc.context or "syntax error"
    return f"invalid YAML{where}: {problem}"


def parse_documents(text: str, source: str = "-") -> list[dict[str, Any]]:
    """The objects in a YAML or JSON text, in order.

    Empty documents are skipped, and a `kind: List` (or any `*List` with `items`, as
    `kubectl get -o yaml` writes) is replaced by its items. Documents are numbered from 1
    in errors, counting empty ones, as a reader counts `---` separators. Raises
    InvalidResource (subject `source`) for a syntax error or a document that is not a
    mapping; the objects themselves are not validated here (see `validate`).
    """
    objects: list[dict[str, Any]] = []
    errors: list[FieldError] = []
    for number, document in enumerate(_load(text, source), start=1):
        where = f"document {number}"
        if document is None:
            continue
        if not isinstance(document, dict):
            errors.append(
                FieldError(
                    where,
                    f"must be a mapping with apiVersion and kind, not a {_type_name(document)}",
                )
            )
            continue
        kind = document.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and "items" in document:
            items = document["items"]
            if not isinstance(items, list):
                errors.append(FieldError(where, f"items must be a list, not a {_type_name(items)}"))
                continue
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    objects.append(item)
                else:
                    errors.append(
                        FieldError(where, f"items[{i}] must be a mapping, not a {_type_name(item)}")
                    )
            continue
        objects.append(document)
    if errors:
        raise InvalidResource(errors, subject=source)
    return objects
