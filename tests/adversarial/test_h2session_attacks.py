"""The nghttp2_session engine (`_h2native.Session`, decision 0102) under AddressSanitizer.

Its C code holds Python objects across nghttp2's callbacks (the header block and DATA
being read, DATA waiting to be sent, the events of a read) and turns a peer's bytes into
h2 events: a use-after-free or an overflow there is a crash of the proxy that a hostile
peer chooses. Here a client and a server Session, built with ASan, talk through every
operation the proxy uses, with random hostile frames and random read boundaries in
between; any exception other than h2's, and any ASan report, fails the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.adversarial.test_hpack_native_attacks import asan, run_asan  # noqa: F401

FUZZ = """
import random, struct
import h2.events, h2.exceptions
rng = random.Random({seed})
PREFACE = b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n"
REQ = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]

def frame(kind, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, sid) + payload

def hostile():
    kind = rng.randrange(0, 12)
    return frame(kind, rng.randrange(256), rng.randrange(0, 9), rng.randbytes(rng.randrange(0, 60)))

def deliver(to, data, events):
    # In random pieces, as reads would bring it.
    i = 0
    while i < len(data):
        n = rng.randrange(1, 200)
        events += to.receive_data(data[i:i + n])
        i += n

errors = 0
steps = 0
for round_ in range({iterations}):
    rate = rng.choice([0.0, 0.02, 0.1])  # hostile frames: none, a few, many
    cli, srv = N.Session(True, initial_window=rng.choice([1, 100, 65535])), N.Session(False)
    cli.initiate_connection()
    srv.initiate_connection()
    open_ = []
    try:
        for step in range(rng.randrange(5, 40)):
            steps += 1
            op = rng.randrange(10)
            if op < 3:
                sid = cli.get_next_available_stream_id()
                fields = REQ + [(b"x-%d" % i, rng.randbytes(rng.randrange(0, 30)))
                                for i in range(rng.randrange(0, 70))]
                cli.send_headers(sid, fields, end_stream=rng.random() < 0.3)
                open_.append(sid)
            elif op < 5 and open_:
                sid = rng.choice(open_)
                try:
                    w = cli.local_flow_control_window(sid)
                    cli.send_data(sid, rng.randbytes(min(w, rng.randrange(0, 40000))),
                                  end_stream=rng.random() < 0.3)
                except (h2.exceptions.StreamClosedError, h2.exceptions.FlowControlError):
                    pass
            elif op == 5 and open_:
                try:
                    cli.reset_stream(rng.choice(open_), rng.randrange(0, 14))
                except h2.exceptions.StreamClosedError:
                    pass
            elif op == 6:
                data = srv.data_to_send() + (hostile() if rng.random() < rate else b"")
                deliver(cli, data, [])
            events = []
            data = cli.data_to_send()
            if rng.random() < rate:
                data += hostile()
            deliver(srv, data, events)
            for ev in events:
                sid = getattr(ev, "stream_id", None)
                if isinstance(ev, h2.events.DataReceived):
                    srv.acknowledge_received_data(ev.flow_controlled_length, sid)
                if isinstance(ev, h2.events.RequestReceived):
                    try:
                        srv.send_headers(sid, [(b":status", b"200")] * rng.randrange(1, 3))
                        srv.send_data(sid, rng.randbytes(rng.randrange(0, 3000)))
                        if rng.random() < 0.5:
                            srv.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
                        else:
                            srv.reset_stream(sid, 8)
                    except (h2.exceptions.StreamClosedError, h2.exceptions.FlowControlError):
                        pass
    except h2.exceptions.ProtocolError as e:
        errors += 1
        assert isinstance(e.error_code, int)
        # Only a hostile frame may end a connection: the API used as the proxy uses it
        # never makes either end send something the other refuses.
        assert rate > 0, f"round {{round_}}: {{e!r}} with no hostile frame"
        for s in (cli, srv):
            if not s.terminated:
                s.close_connection(e.error_code)
            s.data_to_send()
print("rounds", {iterations}, "steps", steps, "protocol errors", errors)
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_sessions_and_hostile_frames_under_asan(
    asan: tuple[Path, str],  # noqa: F811
    seed: int,
) -> None:
    done = run_asan(asan, FUZZ.format(seed=seed, iterations=1000))
    assert "ERROR: AddressSanitizer" not in done.stderr, done.stderr[-4000:]
    assert done.returncode == 0, done.stderr[-4000:]
    assert "rounds 1000" in done.stdout
