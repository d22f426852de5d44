"""`metadata`, the part every kind shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from pydantic import Field, field_validator

from gossamer.resources._base import AnnotationMap, DNS1123Label, LabelMap, Model, invalid
from gossamer.resources._names import (
    DNS1035_LABEL_REASON,
    DNS1123_SUBDOMAIN_REASON,
    is_dns1035_label,
    is_dns1123_subdomain,
)

__all__ = ["ObjectMeta", "ServiceMeta"]


class ObjectMeta(Model):
    """Name, namespace, labels and annotations, plus the fields the store sets.

    The store's fields (`resourceVersion`, `uid`, `generation`, `creationTimestamp`) are
    accepted and kept so that an object read back and applied again is not refused;
    other Kubernetes metadata (ownerReferences, finalizers, ...) is rejected as unknown.
    """

    # Which names a kind accepts; most kinds take a DNS-1123 subdomain, like Kubernetes.
    name_rule: ClassVar[tuple[Callable[[str], bool], str]] = (
        is_dns1123_subdomain,
        DNS1123_SUBDOMAIN_REASON,
    )

    name: str
    namespace: DNS1123Label = "default"
    labels: LabelMap = Field(default_factory=dict)
    annotations: AnnotationMap = Field(default_factory=dict)
    resource_version: str | None = None
    uid: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value:
            raise invalid("required")
        check, reason = cls.name_rule
        if not check(value):
            raise invalid(reason)
        return value


class ServiceMeta(ObjectMeta):
    """A Service's metadata: its name becomes a DNS label, so it must be a DNS-1035 label."""

    name_rule: ClassVar[tuple[Callable[[str], bool], str]] = (
        is_dns1035_label,
        DNS1035_LABEL_REASON,
    )
