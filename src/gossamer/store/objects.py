"""What every backend does to an object the same way: keying, server metadata,
version checks and what counts as a change. Backends differ only in where the bytes go.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from gossamer.errors import Conflict, FieldError, InvalidResource
from gossamer.store.base import SERVER_METADATA, Clock, format_timestamp

__all__ = [
    "Key",
    "check_version",
    "created",
    "describe",
    "dumps",
    "key_of",
    "normalize",
    "same_config",
    "updated",
]

Key = tuple[str, str, str]
"""(kind, namespace, name); cluster-scoped objects have namespace ""."""


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def normalize(obj: dict[str, Any]) -> dict[str, Any]:
    """A deep copy by JSON round trip: the input is never mutated, and comparisons with
    stored bodies are exact (tuples become lists, and so on)."""
    copied: dict[str, Any] = json.loads(dumps(obj))
    return copied


def key_of(obj: dict[str, Any]) -> Key:
    metadata = obj.get("metadata")
    missing = []
    if not isinstance(obj.get("kind"), str) or not obj["kind"]:
        missing.append(FieldError("kind", "required"))
    if not isinstance(metadata, dict) or not metadata.get("name"):
        missing.append(FieldError("metadata.name", "required"))
    if missing:
        raise InvalidResource(missing, "the store cannot key this object")
    assert isinstance(metadata, dict)
    # Cluster-scoped objects have no namespace; they are keyed under "".
    return obj["kind"], str(metadata.get("namespace") or ""), str(metadata["name"])


def describe(key: Key) -> str:
    kind, namespace, name = key
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def check_version(key: Key, given: str | None, stored: dict[str, Any] | None) -> None:
    if not given:
        return
    if stored is None:
        raise Conflict(
            f"{describe(key)} was written at resourceVersion {given}, but it no longer "
            "exists (current version: none): create it again without a resourceVersion"
        )
    current = stored["metadata"]["resourceVersion"]
    if str(given) != current:
        raise Conflict(
            f"{describe(key)} has changed: the write is based on resourceVersion {given}, "
            f"but the current version is {current}: get it again and reapply your change"
        )


def _config(obj: dict[str, Any]) -> dict[str, Any]:
    """The part of an object a client sets through apply."""
    config = {k: v for k, v in obj.items() if k != "status"}
    config["metadata"] = {
        k: v for k, v in obj.get("metadata", {}).items() if k not in SERVER_METADATA
    }
    return config


def same_config(obj: dict[str, Any], stored: dict[str, Any]) -> bool:
    return _config(obj) == _config(stored)


def created(obj: dict[str, Any], revision: int, clock: Clock) -> dict[str, Any]:
    """`obj` (already a normalized copy) as first stored, at `revision`."""
    metadata = obj["metadata"]
    metadata["resourceVersion"] = str(revision)
    metadata["uid"] = str(uuid.uuid4())
    metadata["creationTimestamp"] = format_timestamp(clock())
    metadata["generation"] = 1
    return obj


def updated(obj: dict[str, Any], stored: dict[str, Any], revision: int) -> dict[str, Any]:
    """`obj` replacing `stored` at `revision`: server metadata kept, generation bumped
    only when spec changed, the stored status kept."""
    result = _config(obj)
    kept = stored["metadata"]
    generation = kept["generation"]
    if obj.get("spec") != stored.get("spec"):
        generation += 1
    result["metadata"].update(
        resourceVersion=str(revision),
        uid=kept["uid"],
        creationTimestamp=kept["creationTimestamp"],
        generation=generation,
    )
    if "status" in stored:
        result["status"] = stored["status"]
    return result
