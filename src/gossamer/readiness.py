"""Whether the app is ready, as Kubernetes' readiness probes decide it.

The agent (and `gossamer proxy --engine envoy`) connects to each of the app's ports about
once a second and reports the answer to the control plane, which takes a workload that
is not ready out of every client's endpoints. One slow connect is not a dead app: an app
or proxy busy with load (a backlog full for a moment, an event loop late by more than the
timeout) would otherwise be removed from the mesh for a second — every call to it
answered "no endpoints" — then put back, again and again under load. So, as a
Kubernetes readinessProbe with its defaults: one success makes the app ready; it is
reported not ready only after FAILURE_THRESHOLD failed probes in a row, each connect
given PROBE_TIMEOUT seconds. Before it was ever ready (starting), a failure keeps it not
ready at once.
"""

from __future__ import annotations

from typing import Final

# Kubernetes' defaults: timeoutSeconds 1, failureThreshold 3, successThreshold 1.
PROBE_TIMEOUT: Final = 1.0
FAILURE_THRESHOLD: Final = 3


class ReadinessGate:
    """Turns each probe's answer into the readiness to report."""

    __slots__ = ("failures", "ready", "threshold")

    def __init__(self, threshold: int = FAILURE_THRESHOLD) -> None:
        self.threshold = threshold
        self.failures = 0  # failed probes in a row
        self.ready = False

    def observe(self, ok: bool) -> bool:
        """The readiness after one more probe: `ok` is whether it succeeded."""
        if ok:
            self.failures = 0
            self.ready = True
        else:
            self.failures += 1
            if self.failures >= self.threshold:
                self.ready = False
        return self.ready
