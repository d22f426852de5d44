"""One authorize-and-log for every inbound request and connection: HTTP/1.1 exchanges,
HTTP/2 streams (gRPC included) and opaque TCP alike, so an AUDIT match or a denial is
decided from the same `Request` and logged the same way whatever carried it."""

from __future__ import annotations

import logging

from gossamer.authz import Authorizer, Decision, Request, principal_of

log = logging.getLogger("gossamer.proxy")

Headers = list[tuple[bytes, bytes]]


def authorize(authorizer: Authorizer, request: Request, who: str, what: str) -> Decision:
    """The authorizer's decision on `request`, with its audit and denial log lines:
    `who` made it (an identity or an address), `what` it was ("GET /x on port 8080")."""
    decision = authorizer.check(request)
    if decision.audited:
        log.info(
            "audit: %s from %s: %s (%s)",
            what,
            who,
            "allowed" if decision.allowed else "denied",
            ", ".join(decision.audited),
        )
    if not decision.allowed:
        rule = f" rule {decision.rule}" if decision.rule is not None else ""
        log.warning("inbound %s from %s: %s%s", what, who, decision.reason, rule)
    return decision


def authorize_http(
    authorizer: Authorizer,
    *,
    identity: str | None,
    source_ip: str,
    sni: str | None,
    port: int,
    method: bytes,
    target: bytes,
    host: bytes | None,
    headers: Headers,
) -> Decision:
    """An HTTP request (either version) to local `port`: `target` is its origin-form
    path (query and fragment are not matched), `headers` its fields (any case)."""
    path = target.partition(b"?")[0].partition(b"#")[0] or b"/"

    def header(name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        found = [v for n, v in headers if n.lower() == wanted]
        return b",".join(found).decode("latin-1") if found else None

    request = Request(
        principal=principal_of(identity),
        port=port,
        source_ip=source_ip,
        method=method.decode("latin-1"),
        path=path.decode("latin-1"),
        host=host.decode("latin-1") if host is not None else None,
        headers=header,
        sni=sni,
    )
    what = f"{request.method} {request.path} on port {port}"
    return authorize(authorizer, request, identity or source_ip, what)


def authorize_tcp(
    authorizer: Authorizer,
    *,
    identity: str | None,
    source_ip: str,
    sni: str | None,
    port: int,
    who: str,
) -> Decision:
    """An opaque TCP connection to local `port`, checked once when it opens."""
    request = Request(
        principal=principal_of(identity), port=port, source_ip=source_ip, tcp=True, sni=sni
    )
    return authorize(authorizer, request, who, f"tcp connection to port {port}")
