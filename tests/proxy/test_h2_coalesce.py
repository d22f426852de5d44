"""DATA frames read together are carried on as one (proxy/wire/http2.py `_coalesce`).

A server stream of small gRPC messages arrives as many small DATA frames in one read;
h2 costs as much to send a frame of 18 bytes as one of 16 KB, so the proxy sends what a
read queued for a stream in as few frames as the window and the frame size allow (the
hop's CPU per 1,000-message stream in bench/h2micro.py: 14.5 ms before, 8.3 ms after).
Frame boundaries mean nothing in HTTP/2 or gRPC: the bytes and their order are what
must arrive, and the flow-control credit of every frame must go back to its sender.
"""

from __future__ import annotations

import h2.events
import pytest

from tests.proxy.test_http2 import REQUEST, RESPONSE, _connected, _turn

MESSAGE = b"\x00\x00\x00\x00\x0d\x0a\x0bhello again"  # one 18-byte gRPC message


@pytest.mark.asyncio
async def test_a_thousand_messages_read_at_once_leave_in_two_frames_in_order() -> None:
    hop, client, app = await _connected()
    client.send_headers(1, REQUEST, end_stream=True)
    hop.down.data_received(client.data_to_send())
    await _turn()
    app.receive_data(hop.up_pipe.take())
    app.send_headers(1, RESPONSE)
    for i in range(1000):
        app.send_data(1, MESSAGE[:-3] + b"%03d" % i)
    app.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    hop.up.data_received(app.data_to_send())
    await _turn()
    events = client.receive_data(hop.down_pipe.take())
    data = [e.data for e in events if isinstance(e, h2.events.DataReceived)]
    assert b"".join(d or b"" for d in data) == b"".join(
        MESSAGE[:-3] + b"%03d" % i for i in range(1000)
    )
    assert len(data) == 2  # 18,000 bytes: 16,384 (the largest frame) and the rest
    assert any(isinstance(e, h2.events.TrailersReceived) for e in events)
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


@pytest.mark.asyncio
async def test_coalesced_frames_give_back_all_their_credit() -> None:
    # 600 KB in 1 KB frames: more than the proxy's stream window (256 KB), so the app
    # can send it all only if the credit of every frame it sent comes back.
    hop, client, app = await _connected()
    client.send_headers(1, REQUEST, end_stream=True)
    hop.down.data_received(client.data_to_send())
    await _turn()
    app.receive_data(hop.up_pipe.take())
    app.send_headers(1, RESPONSE)
    total, sent, got = 600 * 1024, 0, 0
    for _ in range(100):
        while sent < total and app.local_flow_control_window(1) >= 1024:
            app.send_data(1, b"x" * 1024, end_stream=sent + 1024 == total)
            sent += 1024
        hop.up.data_received(app.data_to_send())
        await _turn()
        for event in client.receive_data(hop.down_pipe.take()):
            if isinstance(event, h2.events.DataReceived):
                got += len(event.data or b"")
                client.acknowledge_received_data(event.flow_controlled_length or 0, 1)
        hop.down.data_received(client.data_to_send())
        await _turn()
        app.receive_data(hop.up_pipe.take())
        if got == total:
            break
    assert got == total
