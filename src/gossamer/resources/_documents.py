"""Multi-document YAML (or JSON) → plain dicts, read the way kubectl reads them.

Input from outside is bounded before anything recursive sees it: both PyYAML's
composer and `json` recurse once per level of nesting, so a few kilobytes of `[[[[`
would otherwise end in a RecursionError (and a traceback per request). Nesting is
counted while composing (YAML) or by a scan before parsing (JSON), and YAML aliases may
not make a document much larger than what is written ("billion laughs").
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gossamer.errors import FieldError, InvalidResource

_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"

MAX_DEPTH: Final = 64
"""Mappings and lists inside each other, at most; the deepest resource needs about 8."""
MAX_ALIAS_VALUES: Final = 100_000
"""How many values YAML aliases (`*name`) may add to a document, beyond those written."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, adjusted to what Kubernetes' decoder does: timestamps stay
    strings (creationTimestamp is a string field), and a repeated key is an error rather
    than a silent overwrite.

    The pure-Python loader, not libyaml's: its messages are the same on every machine,
    and configuration files are small.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    # Depth is counted on the way in, so the composer's recursion stops at MAX_DEPTH.
    # (The stubs type `anchor` as a dict; PyYAML passes the anchor's name or None.)
    def compose_sequence_node(self, anchor: Any) -> SequenceNode:
        self._enter()
        try:
            node: SequenceNode = super().compose_sequence_node(anchor)
            return node
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        self._enter()
        try:
            node: MappingNode = super().compose_mapping_node(anchor)
            return node
        finally:
            self._depth -= 1

    def _enter(self) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)

    def compose_document(self) -> Node | None:
        node: Node | None = super().compose_document()
        if node is not None:
            _check_aliases(node)
        return node

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


def _check_aliases(root: Node) -> None:
    """Refuse a document that aliases make recursive, too deep or too large.

    Each node is measured once (aliases share nodes), so this costs what is written,
    not what the aliases would expand to."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) expanded
    open_: set[int] = set()

    def measure(node: Node, level: int) -> tuple[int, int]:
        key = id(node)
        if key in measured:
            values, depth = measured[key]
            if level + depth - 1 > MAX_DEPTH:
                raise _alias_error(node, f"nested deeper than {MAX_DEPTH} levels")
            return values, depth
        if key in open_:
            raise _alias_error(node, "an alias refers to a node that contains it")
        if not isinstance(node, MappingNode | SequenceNode):
            measured[key] = (1, 0)
            return 1, 0
        if level > MAX_DEPTH:
            raise _alias_error(node, f"nested deeper than {MAX_DEPTH} levels")
        open_.add(key)
        children: list[Node] = (
            [n for pair in node.value for n in pair]
            if isinstance(node, MappingNode)
            else list(node.value)
        )
        values, depth = 1, 1
        for child in children:
            child_values, child_depth = measure(child, level + 1)
            values += child_values
            depth = max(depth, child_depth + 1)
        open_.discard(key)
        measured[key] = (values, depth)
        return values, depth

    values, _ = measure(root, 1)
    if values - len(measured) > MAX_ALIAS_VALUES:
        raise _alias_error(
            root,
            f"aliases expand it to {values:,} values, {values - len(measured):,} more than "
            f"written; at most {MAX_ALIAS_VALUES:,} more are allowed",
        )


def _alias_error(node: Node, problem: str) -> ComposerError:
    return ComposerError(None, None, problem, node.start_mark)


# A JSON string (escapes included), or one bracket; everything else is skipped.
_JSON_NESTING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def json_nesting_error(text: str, limit: int = MAX_DEPTH) -> str | None:
    """Why JSON `text` nests too deeply to parse ("nested deeper than 64 levels at
    line 1, column 65"), or None. A scan, not a parse: it runs before `json` recurses."""
    depth = 0
    for match in _JSON_NESTING.finditer(text):
        char = match.group()
        if char in "[{":
            depth += 1
            if depth > limit:
                start = match.start()
                line = text.count("\n", 0, start) + 1
                column = start - (text.rfind("\n", 0, start) + 1) + 1
                return f"nested deeper than {limit} levels at line {line}, column {column}"
        elif char in "]}":
            depth -= 1
    return None


def load_json(text: str, source: str = "-") -> Any:
    """The JSON value in `text`, its nesting bounded (see `json_nesting_error`).

    Raises InvalidResource (subject `source`) for a syntax error or deep nesting."""
    if (problem := json_nesting_error(text)) is not None:
        raise InvalidResource([FieldError("", problem)], subject=source)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidResource([FieldError("", f"invalid JSON: {exc}")], subject=source) from None


def decode_text(data: bytes, source: str = "-") -> str:
    """`data` as UTF-8 text (a leading byte order mark dropped), as Kubernetes reads
    YAML and JSON. Raises InvalidResource naming the first byte that is not UTF-8."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidResource(
            [FieldError("", f"not UTF-8 at byte {exc.start} ({exc.reason})")], subject=source
        ) from None
    return text.removeprefix("\ufeff")


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
        if (problem := json_nesting_error(text)) is not None:
            raise InvalidResource([FieldError("document 1", problem)], subject=source)
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
