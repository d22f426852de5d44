"""Typed errors shared by every part of Gossamer.

Each error names its cause in words a user can act on; the API maps them to HTTP
status codes (NotFound 404, Conflict 409, InvalidResource 422, Unauthorized 401/403).
"""

from __future__ import annotations

from dataclasses import dataclass


class GossamerError(Exception):
    """Base of every error Gossamer raises on purpose."""


class NotFound(GossamerError):
    def __init__(self, kind: str, name: str, namespace: str | None = None) -> None:
        self.kind, self.name, self.namespace = kind, name, namespace
        where = f"{namespace}/{name}" if namespace else name
        super().__init__(f"{kind} {where} not found")


class Conflict(GossamerError):
    """A write based on a stale resourceVersion, or one that collides with another."""


@dataclass(frozen=True)
class FieldError:
    path: str  # e.g. "spec.ports[0].port"
    reason: str  # e.g. "must be 1-65535"

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class InvalidResource(GossamerError):
    """An object failed validation; it carries every field error found, with its path."""

    def __init__(self, errors: list[FieldError], subject: str = "") -> None:
        self.errors = errors
        self.subject = subject
        detail = "; ".join(str(e) for e in errors)
        super().__init__(f"{subject}: {detail}" if subject else detail)


class StoreError(GossamerError):
    """The store cannot be opened or used (corrupt file, unreachable backend)."""


class Unauthorized(GossamerError):
    """Missing or wrong credentials (admin token, join token, certificate)."""


class IdentityError(GossamerError):
    """A CSR or join token was refused; the message says why."""
