"""Capture per uid on a plain host, as a pure function of the spec: each workload's
traffic goes to its own outbound listener, and only its uid may connect there."""

from __future__ import annotations

import pytest

from gossamer.capture.rules import (
    CaptureError,
    CaptureSpec,
    HostCaptureSpec,
    UidCapture,
    host_restore_text,
)

ALICE = UidCapture(1001, CaptureSpec(4140, 4143, (8080,), dns_port=15053))
BOB = UidCapture(1002, CaptureSpec(4240, 4243, (9090,), exclude_outbound_cidrs=("198.18.0.1",)))


def test_each_uid_goes_to_its_own_listener_and_only_it_may_connect_there() -> None:
    spec = HostCaptureSpec((BOB, ALICE), proxy_uid=0, proxy_gid=1337)
    assert host_restore_text(spec) == (
        "*nat\n"
        ":GOSSAMER_INBOUND - [0:0]\n"
        ":GOSSAMER_OUTPUT - [0:0]\n"
        "-A GOSSAMER_INBOUND -p tcp --dport 8080 -j REDIRECT --to-ports 4143\n"
        "-A GOSSAMER_INBOUND -p tcp --dport 9090 -j REDIRECT --to-ports 4243\n"
        "-A GOSSAMER_OUTPUT -m owner --uid-owner 0 -j RETURN\n"
        "-A GOSSAMER_OUTPUT -m owner --gid-owner 1337 -j RETURN\n"
        "-A GOSSAMER_OUTPUT -m owner --uid-owner 1001 -p udp --dport 53 "
        "-j REDIRECT --to-ports 15053\n"
        "-A GOSSAMER_OUTPUT -m owner --uid-owner 1001 -p tcp --dport 53 "
        "-j REDIRECT --to-ports 15053\n"
        "-A GOSSAMER_OUTPUT -m owner --uid-owner 1001 -d 127.0.0.0/8 -j RETURN\n"
        "-A GOSSAMER_OUTPUT -m owner --uid-owner 1001 -p tcp -j REDIRECT --to-ports 4140\n"
        "-A GOSSAMER_OUTPUT -m owner --uid-owner 1002 -d 127.0.0.0/8 -j RETURN\n"
        "-A GOSSAMER_OUTPUT -m owner --uid-owner 1002 -d 198.18.0.1/32 -j RETURN\n"
        "-A GOSSAMER_OUTPUT -m owner --uid-owner 1002 -p tcp -j REDIRECT --to-ports 4240\n"
        "COMMIT\n"
        "*filter\n"
        ":GOSSAMER_OWNER - [0:0]\n"
        "-A GOSSAMER_OWNER -o lo -p tcp --dport 4140 --syn -m owner ! --uid-owner 1001 "
        "-j REJECT --reject-with tcp-reset\n"
        "-A GOSSAMER_OWNER ! -d 127.0.0.0/8 -p udp -m owner --uid-owner 1001 -j REJECT\n"
        "-A GOSSAMER_OWNER -o lo -p tcp --dport 4240 --syn -m owner ! --uid-owner 1002 "
        "-j REJECT --reject-with tcp-reset\n"
        "-A GOSSAMER_OWNER -p udp --dport 53 -m owner --uid-owner 1002 -j RETURN\n"
        "-A GOSSAMER_OWNER -d 198.18.0.1/32 -p udp -m owner --uid-owner 1002 -j RETURN\n"
        "-A GOSSAMER_OWNER ! -d 127.0.0.0/8 -p udp -m owner --uid-owner 1002 -j REJECT\n"
        "COMMIT\n"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("workloads", "message"),
    [
        (
            (ALICE, UidCapture(1001, BOB.spec)),
            "workloads[1] (uid 1001): uid 1001 is capture.workloads[0]'s",
        ),
        ((ALICE, UidCapture(1002, ALICE.spec)), "outbound_port 4140 is capture.workloads[0]'s"),
        ((UidCapture(0, ALICE.spec),), "workloads[0] (uid 0): the uid is the host proxy's own"),
        ((UidCapture(7, CaptureSpec(4140, 8080, (8080,))),), "is the inbound listener itself"),
        ((UidCapture(7, CaptureSpec(0, 4143)),), "workloads[0] (uid 7): .outbound_port: 0"),
    ],
    ids=["same uid", "same port", "proxy uid", "inbound port", "bad port"],
)
def test_a_host_spec_that_cannot_work_is_refused_naming_the_workload(
    workloads: tuple[UidCapture, ...], message: str
) -> None:
    with pytest.raises(CaptureError) as err:
        host_restore_text(HostCaptureSpec(workloads, proxy_uid=0))
    assert message in str(err.value)


def test_a_host_spec_without_the_proxy_s_ids_is_refused() -> None:
    with pytest.raises(CaptureError, match="neither proxy_uid nor proxy_gid"):
        host_restore_text(HostCaptureSpec((ALICE,)))
