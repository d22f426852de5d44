"""What every resource model shares: strict Kubernetes-style decoding and field types.

Validators raise `PydanticCustomError` with our own reason text, so the translation to
`FieldError` (in `_errors`) never has to guess at pydantic's wording. A validator that
checks several fields at once (uniqueness, one field requiring another) raises
`problems(...)`: one error that carries a list of (relative path, reason) pairs, which
`_errors` expands into one FieldError each — pydantic itself allows one error per raise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from gossamer.resources._limits import MAX_LABELS
from gossamer.resources._names import (
    DNS1123_LABEL_PATTERN,
    DNS1123_LABEL_REASON,
    DNS1123_SUBDOMAIN_PATTERN,
    DNS1123_SUBDOMAIN_REASON,
    is_dns1123_label,
    is_dns1123_subdomain,
    validate_label_key,
    validate_label_value,
)

REASON_ERROR = "gossamer"
PROBLEMS_ERROR = "gossamer_problems"

Loc: TypeAlias = tuple[str | int, ...]


def invalid(reason: str) -> PydanticCustomError:
    # The reason goes through the context, not the template, because reasons quote
    # regular expressions whose braces the template would try to fill.
    return PydanticCustomError(REASON_ERROR, "{reason}", {"reason": reason})


def raise_problems(found: Sequence[tuple[Loc, str]]) -> None:
    """Raise every (path relative to the model, reason) pair found, if any."""
    if found:
        raise PydanticCustomError(
            PROBLEMS_ERROR,
            "{reason}",
            {"reason": "; ".join(reason for _, reason in found), "problems": tuple(found)},
        )


class Model(BaseModel):
    """Base of every resource model: camelCase on the wire, unknown fields rejected.

    Strict, because Kubernetes' decoder is: `port: "80"` is a string, not a port.
    Frozen, because a validated resource is shared by snapshots that must not change.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",
        strict=True,
        frozen=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        # Go decodes `field: null` as the zero value, i.e. as if the field were absent;
        # generated YAML is full of them (`creationTimestamp: null`).
        if isinstance(data, dict) and None in data.values():
            return {k: v for k, v in data.items() if v is not None}
        return data

    @model_serializer(mode="wrap")
    def _omit_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Kubernetes' `omitempty`: an absent field, null, [] and {} all mean the same, so
        # only one of them is ever written, and a round trip is stable.
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None and v != [] and v != {}}


@dataclass(frozen=True)
class Between:
    """An inclusive integer range that reports itself as "must be LO-HI" and keeps
    minimum/maximum in the JSON schema (a plain `Field(ge=, le=)` names only one bound)."""

    lo: int
    hi: int

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.update(minimum=self.lo, maximum=self.hi)
        return json_schema

    def _check(self, value: int) -> int:
        if not self.lo <= value <= self.hi:
            raise invalid(f"must be {self.lo}-{self.hi}")
        return value


def each(check: Callable[[list[Any]], list[tuple[Loc, str]]]) -> AfterValidator:
    """A check across the items of a list (uniqueness, mostly), with paths relative to the
    list. On the list rather than its model, so that it still runs when a sibling field
    has errors (pydantic skips a model's own validators then)."""

    def validate(items: list[Any]) -> list[Any]:
        raise_problems(check(items))
        return items

    return AfterValidator(validate)


def first_seen(keys: Sequence[object]) -> list[tuple[int, int]]:
    """(index, index of the first equal key) for each repeated key."""
    first: dict[object, int] = {}
    repeats: list[tuple[int, int]] = []
    for i, key in enumerate(keys):
        if key in first:
            repeats.append((i, first[key]))
        else:
            first[key] = i
    return repeats


@dataclass(frozen=True)
class Rule:
    """A string check with its reason, and the JSON schema keywords (pattern, maxLength)
    that say the same thing, for CRDs and OpenAPI; the check here is the one that counts."""

    check: Callable[[str], bool]
    reason: str
    schema: tuple[tuple[str, Any], ...] = ()

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.update(self.schema)
        return json_schema

    def _check(self, value: str) -> str:
        if not self.check(value):
            raise invalid(self.reason)
        return value


def rule(check: Callable[[str], bool], reason: str, **schema: Any) -> Rule:
    """A string validator that rejects what `check` refuses, with `reason`."""
    return Rule(check, reason, tuple(schema.items()))


def _check_label_map(labels: dict[str, str]) -> dict[str, str]:
    found: list[tuple[Loc, str]] = []
    if len(labels) > MAX_LABELS:
        raise invalid(f"must have at most {MAX_LABELS} labels (has {len(labels)})")
    for key, value in labels.items():
        if key_errors := validate_label_key(key):
            found.append(((key,), "invalid key: " + "; ".join(key_errors)))
        if value_errors := validate_label_value(value):
            found.append(((key,), "invalid value: " + "; ".join(value_errors)))
    raise_problems(found)
    return labels


_ANNOTATIONS_MAX_BYTES = 256 * 1024


def _check_annotation_map(annotations: dict[str, str]) -> dict[str, str]:
    found: list[tuple[Loc, str]] = []
    total = 0
    for key, value in annotations.items():
        if key_errors := validate_label_key(key):
            found.append(((key,), "invalid key: " + "; ".join(key_errors)))
        total += len(key.encode()) + len(value.encode())
    if total > _ANNOTATIONS_MAX_BYTES:
        found.append(((), f"may not be more than 256KiB in total (is {total} bytes)"))
    raise_problems(found)
    return annotations


PortNumber = Annotated[int, Between(1, 65535)]
DNS1123Label = Annotated[
    str,
    rule(
        is_dns1123_label,
        DNS1123_LABEL_REASON,
        pattern=f"^{DNS1123_LABEL_PATTERN}$",
        maxLength=63,
    ),
]
DNS1123Subdomain = Annotated[
    str,
    rule(
        is_dns1123_subdomain,
        DNS1123_SUBDOMAIN_REASON,
        pattern=f"^{DNS1123_SUBDOMAIN_PATTERN}$",
        maxLength=253,
    ),
]
LabelMap = Annotated[dict[str, str], AfterValidator(_check_label_map)]
AnnotationMap = Annotated[dict[str, str], AfterValidator(_check_annotation_map)]


def _check_qualified_name(value: str) -> str:
    if errors := validate_label_key(value):
        raise invalid("; ".join(errors))
    return value


# Kubernetes validates Service and container appProtocol as a qualified name
# ("http", "kubernetes.io/h2c").
AppProtocol = Annotated[str, AfterValidator(_check_qualified_name)]
