"""Authorization: Istio's AuthorizationPolicy semantics, compiled once per snapshot and
evaluated per request or connection by the proxy and by `gossamer authz explain`."""

from gossamer.authz.engine import (
    Authorizer,
    Decision,
    Request,
    compile_security,
    principal_of,
)

__all__ = ["Authorizer", "Decision", "Request", "compile_security", "principal_of"]
