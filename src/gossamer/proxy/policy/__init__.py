"""The outbound policies, decided once for every protocol (see policy.call)."""

from gossamer.proxy.policy.call import Answer, Call, Routed, failed

__all__ = ["Answer", "Call", "Routed", "failed"]
