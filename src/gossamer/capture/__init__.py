"""Transparent capture: iptables rules that send an unchanged app's TCP to its proxy.

`rules` builds the rules from a `CaptureSpec` (pure); `iptables` installs, replaces
and removes them. `gossamer capture`, `gossamer run --capture` and the init container
that Kubernetes injection adds all go through these two modules.
"""

from gossamer.capture.rules import DEFAULT_PROXY_ID, CaptureError, CaptureSpec, restore_text

__all__ = ["DEFAULT_PROXY_ID", "CaptureError", "CaptureSpec", "restore_text"]
