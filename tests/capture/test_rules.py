"""The capture rules as a pure function of the spec: what each setting adds, in order."""

from __future__ import annotations

import pytest

from gossamer.capture.rules import CaptureError, CaptureSpec, command_flags, restore_text


def test_the_rules_exclude_the_proxy_first_then_dns_loopback_and_exclusions() -> None:
    spec = CaptureSpec(
        outbound_port=4140,
        inbound_port=4143,
        inbound_ports=(8080, 9090, 8080),
        proxy_uid=1337,
        exclude_outbound_ports=(15012,),
        exclude_outbound_cidrs=("198.18.0.1", "10.0.0.0/8"),
        dns_port=15053,
    )
    assert restore_text(spec) == (
        "*nat\n"
        ":GOSSAMER_INBOUND - [0:0]\n"
        ":GOSSAMER_OUTPUT - [0:0]\n"
        "-A GOSSAMER_INBOUND -p tcp --dport 8080 -j REDIRECT --to-ports 4143\n"
        "-A GOSSAMER_INBOUND -p tcp --dport 9090 -j REDIRECT --to-ports 4143\n"
        "-A GOSSAMER_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"
        "-A GOSSAMER_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053\n"
        "-A GOSSAMER_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 15053\n"
        "-A GOSSAMER_OUTPUT -d 127.0.0.0/8 -j RETURN\n"
        "-A GOSSAMER_OUTPUT -d 10.0.0.0/8 -j RETURN\n"
        "-A GOSSAMER_OUTPUT -d 198.18.0.1/32 -j RETURN\n"
        "-A GOSSAMER_OUTPUT -p tcp --dport 15012 -j RETURN\n"
        "-A GOSSAMER_OUTPUT -p tcp -j REDIRECT --to-ports 4140\n"
        "COMMIT\n"
    )


def test_the_same_spec_gives_the_same_install_command() -> None:
    spec = CaptureSpec(4140, 4143, (8080,), proxy_gid=1337, exclude_outbound_cidrs=("10.1.2.3",))
    assert command_flags(spec) == [
        "--outbound-port", "4140", "--inbound-port", "4143", "--port", "8080",
        "--proxy-gid", "1337", "--exclude-outbound-cidr", "10.1.2.3",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (CaptureSpec(4140, 4143), "neither proxy_uid nor proxy_gid is set"),
        (CaptureSpec(0, 4143, proxy_uid=1), "capture.outbound_port: 0 is not a port"),
        (CaptureSpec(4140, 4143, (80, 70000), proxy_uid=1), "capture.inbound_ports[1]: 70000"),
        (CaptureSpec(4140, 4143, (4143,), proxy_uid=1), "is the inbound listener itself"),
        (
            CaptureSpec(4140, 4143, proxy_uid=1, exclude_outbound_cidrs=("nope",)),
            "capture.exclude_outbound_cidrs[0]: 'nope' is not an address or network",
        ),
        (
            CaptureSpec(4140, 4143, proxy_uid=1, exclude_outbound_cidrs=("::1",)),
            "capture is IPv4 only",
        ),
    ],
    ids=[
        "without the proxy's uid or gid its own traffic would loop",
        "a listener port must be a port",
        "a workload port must be a port",
        "the inbound listener is not one of the workload's ports",
        "an exclusion must be an address",
        "IPv6 is not captured yet",
    ],
)
def test_a_spec_that_cannot_work_is_refused_naming_the_field(
    spec: CaptureSpec, message: str
) -> None:
    with pytest.raises(CaptureError, match=message.replace("[", r"\[").replace("]", r"\]")):
        restore_text(spec)


def test_gossamer_run_captures_with_its_own_listeners_ports_and_control_plane_left_out() -> None:
    from gossamer.cli.capture import run_spec, strip_run_flags
    from gossamer.cli.main import build_parser

    argv = [
        "run", "--name", "web-1", "--port", "http=8080:18080", "--inbound", "10.0.0.5:4143",
        "--outbound", "127.0.0.1:4140", "--discovery", "10.0.0.1:15012",
        "--server", "http://10.0.0.2:15000", "--dns", "127.0.0.1:15053",
        "--capture", "--capture-proxy-gid=2000", "--capture-exclude-outbound-port", "5432",
        "--", "app",
    ]  # fmt: skip
    args = build_parser(("proxy",)).parse_args(argv)
    assert run_spec(args) == CaptureSpec(
        outbound_port=4140,
        inbound_port=4143,
        inbound_ports=(8080,),
        proxy_gid=2000,
        exclude_outbound_ports=(5432,),
        exclude_outbound_cidrs=("10.0.0.1", "10.0.0.2"),
        dns_port=15053,
    )
    # The proxy it starts is given every flag but the supervisor's capture flags.
    assert strip_run_flags(argv[1 : argv.index("--")]) == argv[1 : argv.index("--capture")]
