"""Data-channel limits that aiortc does not enforce by itself.

aiortc reassembles every inbound SCTP message in full before anyone sees it, tells the peer it
accepts messages of up to 256 KiB (`a=max-message-size` in the answer), and never refuses DATA
chunks when its receive window is exhausted: a peer that ignores the window can keep sending
fragments of a message that never ends, and the reassembly buffer grows without limit. Our
events are a few KB (`max_event_bytes`), so for each call:

- the answer advertises `max_channel_message_bytes`: a compliant peer (every browser) refuses
  to send anything larger, and the size check after reassembly (`parse_client_event`) answers
  what lies between with an `event_too_large` error event;
- the bytes waiting in reassembly, across all streams, are capped at twice that (room for a
  few complete messages held behind a lost chunk): above it the buffers are released and
  `on_exceeded` ends the call.

The held byte count comes from aiortc's own receive-window bookkeeping (decreased for every
new DATA chunk, increased as messages are delivered or pruned), so the check is O(1) per chunk.
"""

from __future__ import annotations

from collections.abc import Callable

from aiortc.rtcsctptransport import DataChunk, RTCSctpCapabilities, RTCSctpTransport


def limit_inbound_messages(sctp: RTCSctpTransport, max_message_bytes: int, on_exceeded: Callable[[int], None]) -> None:
    """Advertise `max_message_bytes` and cap reassembly at twice that; call before the answer."""
    if getattr(sctp, "_microturn_limited", False):
        return
    sctp._microturn_limited = True  # type: ignore[attr-defined]
    # createAnswer asks the instance (`sctp.getCapabilities()`), so this is what the peer is told
    sctp.getCapabilities = lambda: RTCSctpCapabilities(maxMessageSize=max_message_bytes)  # type: ignore[method-assign]
    window = sctp._advertised_rwnd  # nothing received yet: the full receive window
    cap = 2 * max_message_bytes
    receive = sctp._receive_data_chunk
    exceeded = False

    async def receive_capped(chunk: DataChunk) -> None:
        nonlocal exceeded
        if exceeded:
            return  # the call is closing: hold nothing more
        await receive(chunk)
        held = window - sctp._advertised_rwnd
        if held > cap:
            exceeded = True
            for stream in sctp._inbound_streams.values():
                stream.reassembly.clear()
            sctp._advertised_rwnd = window
            on_exceeded(held)

    sctp._receive_data_chunk = receive_capped  # type: ignore[method-assign]
