"""One authorize-and-log for every inbound request and connection: HTTP/1.1 exchanges,
HTTP/2 streams (gRPC included) and opaque TCP alike, so an AUDIT match or a denial is
logged the same way whatever carried it."""

from __future__ import annotations

import logging

from gossamer.authz import Authorizer, Decision, Request

log = logging.getLogger("gossamer.proxy")


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
