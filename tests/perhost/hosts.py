"""Per-host mode on network-namespace hosts (tests/hosts): `gossamer host` on a host, and
`gossamer run --host-proxy` workloads registering with it, beside sidecar hosts."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.hosts.conftest import (
    GOSSAMER,
    HostControlPlane,
    HostWorkload,
    run_workload,
    wait_until,
)
from tests.hosts.netns import Host


def host_object(name: str, *identities: tuple[str, str]) -> str:
    workloads = [{"namespace": ns, "serviceAccount": sa} for ns, sa in identities]
    return json.dumps(
        {
            "apiVersion": "gossamer.dev/v1alpha1",
            "kind": "Host",
            "metadata": {"name": name, "namespace": "gossamer-hosts"},
            "spec": {"workloads": workloads},
        }
    )


@dataclass
class HostProxyProcess:
    name: str
    host: Host
    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path


def start_host_proxy(
    cp: HostControlPlane,
    host: Host,
    tmp: Path,
    name: str,
    *identities: tuple[str, str],
    extra: tuple[str, ...] = (),
    wrapper: tuple[str, ...] = (),
) -> HostProxyProcess:
    """Apply Host `name` listing `identities`, and start `gossamer host` on `host`."""
    if identities:
        cp.cli("apply", "-f", "-", stdin=host_object(name, *identities), check=True)
    sock, ready, log = tmp / f"{name}.sock", tmp / f"{name}.ready", tmp / f"{name}.log"
    proc = host.popen(
        *wrapper, *GOSSAMER, "host", "--name", name, "--discovery", cp.discovery,
        "--server", cp.api,
        "--token-file", str(cp.token_file), "--socket", str(sock),
        "--state-dir", str(tmp / "state" / name), "--ready-file", str(ready),
        "--log-level", "debug", *extra,
        log=log,
    )  # fmt: skip

    def up() -> bool:
        assert proc.poll() is None, f"gossamer host exited:\n{log.read_text()}"
        return ready.exists()

    wait_until(up, "gossamer host never became ready", log=log)
    return HostProxyProcess(name, host, proc, sock, log)


@dataclass(frozen=True)
class Ports:
    """One workload's listeners on a host it shares with others."""

    inbound: int
    outbound: int
    admin: int


def run_hosted(
    hp: HostProxyProcess,
    tmp: Path,
    name: str,
    ports: Ports,
    *,
    app: list[str],
    service_account: str,
    labels: dict[str, str],
    namespace: str = "shop",
    port: str | None = None,
    pod: Host | None = None,
    extra: tuple[str, ...] = (),
) -> HostWorkload:
    """`gossamer run --host-proxy` on the host proxy's host, or in a `pod` of its own (a
    network namespace on the bridge, as a Kubernetes pod): its listeners are the host
    proxy's, in that process; its outbound and admin are its own."""
    log = tmp / f"{name}.log"
    host = pod or hp.host
    flags = [
        "--host-proxy", str(hp.socket), "--name", name, "-n", namespace,
        "--service-account", service_account,
        "--inbound", f"{host.address}:{ports.inbound}",
        "--outbound", f"127.0.0.1:{ports.outbound}", "--admin", f"0.0.0.0:{ports.admin}",
        "--address", host.address, *extra,
    ]  # fmt: skip
    for k, v in labels.items():
        flags += ["-l", f"{k}={v}"]
    if port:
        flags += ["--port", port]
    proc = host.popen(*GOSSAMER, "run", *flags, "--", *app, log=log)
    return OnPorts(name, host, proc, log, ports)


def run_sidecar(
    cp: HostControlPlane,
    host: Host,
    tmp: Path,
    name: str,
    ports: Ports,
    *,
    app: list[str],
    service_account: str,
    labels: dict[str, str],
    port: str | None = None,
    extra: tuple[str, ...] = (),
) -> HostWorkload:
    """`gossamer run` with a sidecar, on ports of its own (the host is shared)."""
    listeners = (
        "--inbound", f"{host.address}:{ports.inbound}",
        "--outbound", f"127.0.0.1:{ports.outbound}", "--admin", f"0.0.0.0:{ports.admin}",
    )  # fmt: skip
    w = run_workload(cp, host, tmp, name, app=app, service_account=service_account,
                     labels=labels, port=port, extra=(*listeners, *extra))  # fmt: skip
    return OnPorts(w.name, w.host, w.proc, w.log, ports)


class OnPorts(HostWorkload):
    """A HostWorkload whose listeners are on ports of its own (the host is shared)."""

    def __init__(
        self,
        name: str,
        host: Host,
        proc: subprocess.Popen[bytes],
        log: Path,
        ports: Ports,
    ) -> None:
        super().__init__(name, host, proc, log)
        self.ports = ports

    @property
    def outbound(self) -> str:
        return f"127.0.0.1:{self.ports.outbound}"

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"{self.name} exited:\n{self.log.read_text()}"
        r = self.curl(
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"http://127.0.0.1:{self.ports.admin}/ready",
        )
        return r.stdout == "200"

    def metrics(self) -> str:
        return self.curl(f"http://127.0.0.1:{self.ports.admin}/metrics").stdout
