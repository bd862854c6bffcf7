"""What a call leaves behind once it ended: nothing, and soon.

Real aiortc callers against the in-process edge (random-weights tiny model). Objects are
tracked with weakrefs, never with RSS (the allocator and the machine make RSS noisy; a bench
measures it: tests/bench/bench_soak.py).

The automatic collector is switched off while these tests run: CPython runs a full collection
only when the long-lived heap has grown by a quarter, which in a process holding a model is
dozens of calls apart (and then stops the loop for the best part of a second). An ended call
is a graph of reference cycles (aiortc's peer connection, transports, tracks, our Call), so a
server that waited for that collection kept every ended call in memory until it happened. The
server must release a call by itself shortly after it ends (signaling/registry.py ->
infra/memory.py), and with the collector off the test sees whether it does.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections import Counter
from typing import Any

import aiohttp
import numpy as np
import pytest
import structlog
from prometheus_client import generate_latest

from infra import keys
from signaling.call import Call
from tests.e2e.aiortc_client import Caller, synthetic_speech
from tests.e2e.aiortc_server import Edge, call_tasks, edge_settings, running_edge, wait_until

pytestmark = pytest.mark.timeout(240)

API_KEY = "leak-key"
CALLS = 24
LANES = 3  # concurrent callers
RELEASE_S = 5.0  # how long after the last call ended everything of it must be gone


def tracked(call: Call) -> dict[str, weakref.ref[Any]]:
    """Weakrefs to the objects one call owns, by a name that says what leaked."""
    objs: dict[str, Any] = {
        "Call": call,
        "RTCPeerConnection": call.pc,
        "OutputAudioTrack": call.output,
        "MediaTransport": call.transport,
        "MicroTurnAssembler": call.transport.assembler,
        "inbound audio track": call._audio_in,
        "RTCSctpTransport": call.pc.sctp,
    }
    for i, t in enumerate(call.pc.getTransceivers()):
        objs[f"RTCRtpTransceiver[{i}]"] = t
        objs[f"RTCRtpSender[{i}]"] = t.sender
        objs[f"RTCRtpReceiver[{i}]"] = t.receiver
        if t.sender.transport is not None:
            objs[f"RTCDtlsTransport[{i}]"] = t.sender.transport
            objs[f"RTCIceTransport[{i}]"] = t.sender.transport.transport
    return {name: weakref.ref(o) for name, o in objs.items() if o is not None}


def alive(refs: list[dict[str, weakref.ref[Any]]]) -> Counter[str]:
    return Counter(name for r in refs for name, ref in r.items() if ref() is not None)


def referrers(refs: list[dict[str, weakref.ref[Any]]], name: str) -> list[str]:
    """What still holds the first leaked `name` (for the failure message)."""
    obj = next(r[name]() for r in refs if name in r and r[name]() is not None)
    return sorted({type(x).__qualname__ for x in gc.get_referrers(obj)} - {"list", "frame"})[:12]


async def place_call(
    edge: Edge, http: aiohttp.ClientSession, audio: np.ndarray, n: int, refs: list[dict[str, weakref.ref[Any]]]
) -> str:
    """One short call; every third is a page (anonymous token), the rest a gateway (API key).
    Most hang up with DELETE; every fourth caller just closes its peer connection."""
    caller = Caller(edge.url, http, audio, loop_audio=True)
    try:
        token = await caller.mint_token() if n % 3 == 0 else API_KEY
        r = await caller.connect(token=token)
        assert r.status == 201, r.status
        call = edge.rt.calls.get(caller.call_id or "")
        assert call is not None
        refs.append(tracked(call))
        await asyncio.wait_for(caller.channel_open.wait(), 20)
        await caller.wait_event(lambda e: e["type"] == "metrics.latency", timeout=20)  # media went round
        if n % 4 == 3:
            await caller.close()  # no DELETE: the server sees the peer go
            await wait_until(lambda: call.state == "closed", timeout=10)
        else:
            assert await caller.hangup() == 204
        assert call.state == "closed"
        return call.id
    finally:
        await caller.close()


async def test_ended_calls_leave_nothing_behind(no_automatic_gc: None) -> None:
    settings = edge_settings(
        api_keys=[API_KEY], max_sessions=LANES, max_calls_per_client=LANES, rate_limit_per_min=10_000
    )
    audio = synthetic_speech(2.0)
    async with running_edge(settings) as edge, aiohttp.ClientSession() as http:
        rt = edge.rt
        topics_before = rt.bus.subscribed_topics()
        refs: list[dict[str, weakref.ref[Any]]] = []
        ids: list[str] = []
        todo = iter(range(CALLS))

        async def lane() -> None:
            for n in todo:  # the lanes share one iterator
                ids.append(await place_call(edge, http, audio, n, refs))

        await asyncio.gather(*(lane() for _ in range(LANES)))
        assert len(ids) == CALLS and len(refs) == CALLS

        # every table of the edge is back to empty (or to what does not depend on calls)
        assert len(rt.calls) == 0 and rt.calls.count_for("anon:127.0.0.1") == 0
        assert rt.calls._per_client == {}
        assert rt.engine.stats().active == 0 and rt.worker._sessions == {}
        assert len(rt.limiter) <= 1  # one bucket: the one anonymous client (127.0.0.1)
        topics = rt.bus.subscribed_topics()
        assert topics == topics_before, f"subscriptions left on the bus: {set(topics) - set(topics_before)}"
        assert not [t for t in topics if any(i in t for i in ids)]
        await asyncio.sleep(0.3)  # aiortc's own closing tasks finish
        assert [name for i in ids for name in call_tasks(i)] == []
        assert "call_id" not in structlog.contextvars.get_contextvars()
        exposition = generate_latest().decode()
        assert not [i for i in ids if i in exposition], "a call id became a metrics label"

        # released by the server itself, without anyone running a full collection ...
        try:
            await wait_until(lambda: not alive(refs), timeout=RELEASE_S, interval=0.1)
            waiting: Counter[str] = Counter()
        except TimeoutError:
            waiting = alive(refs)
        # ... and nothing reachable: a real leak survives even a forced collection
        gc.collect()
        leaked = alive(refs)
        if leaked:
            held_by = referrers(refs, "Call") if "Call" in leaked else "?"
            pytest.fail(f"leaked (reachable after gc.collect()): {dict(leaked)}; the first Call is held by {held_by}")
        assert not waiting, (
            f"{RELEASE_S:g} s after {CALLS} calls ended the server still held {dict(waiting)}: "
            "garbage left for a full collection the process may not run for hours"
        )


async def test_output_subscription_closed_when_the_call_ends() -> None:
    """After a call ends, nothing is subscribed on the bus for it (hang-up and peer close)."""
    audio = synthetic_speech(2.0)
    async with running_edge(edge_settings(api_keys=[API_KEY])) as edge, aiohttp.ClientSession() as http:
        bus = edge.rt.bus
        for hang_up in (True, False):
            caller = Caller(edge.url, http, audio, loop_audio=True)
            try:
                assert (await caller.connect(token=API_KEY)).status == 201
                call = edge.rt.calls.get(caller.call_id or "")
                assert call is not None
                await caller.wait_event(lambda e: e["type"] == "metrics.latency", timeout=20)
                assert bus.subscribed_topics().get(keys.outputs(call.id)) == 1  # the call's own subscription
                if hang_up:
                    assert await caller.hangup() == 204
                else:
                    await caller.close()
                    await wait_until(lambda c=call: c.state == "closed", timeout=10)
                mine = {t: n for t, n in bus.subscribed_topics().items() if call.id in t}
                assert mine == {}, f"still subscribed after {call.end_reason}: {mine}"
            finally:
                await caller.close()
