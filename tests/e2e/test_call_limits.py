"""Issue 8, items 9 and 10 over real aiortc calls: a data-channel peer that ignores the
advertised message size, a session whose engine step raises, and /readyz with a hung engine."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import pytest

from infra.messages import MicroTurnInput
from model.session import SessionState
from tests.e2e.aiortc_client import Caller, synthetic_speech
from tests.e2e.aiortc_server import edge_settings, running_edge, wait_until

pytestmark = pytest.mark.timeout(60)


async def connected_caller(url: str, http: aiohttp.ClientSession) -> Caller:
    caller = Caller(url, http, synthetic_speech(2.0), loop_audio=True)
    await caller.mint_token()
    assert (await caller.connect()).status == 201
    await asyncio.wait_for(caller.channel_open.wait(), 20)
    await caller.wait_event(lambda e: e["type"] == "session.created")
    return caller


async def test_data_channel_message_size_is_advertised_and_reassembly_capped(http: aiohttp.ClientSession) -> None:
    """aiortc told peers 256 KiB and reassembled any message in full before our size check; a
    peer ignoring the limit could grow the buffer without end. The answer now advertises
    `max_channel_message_bytes` and a peer that sends more is hung up with a clear reason."""
    limit = 16_384
    async with running_edge(edge_settings(max_channel_message_bytes=limit)) as edge:
        caller = await connected_caller(edge.url, http)
        try:
            assert caller.pc.remoteDescription is not None
            assert f"a=max-message-size:{limit}" in caller.pc.remoteDescription.sdp
            call = edge.rt.calls.get(caller.call_id or "")
            assert call is not None
            # a compliant sender refuses; this one pretends the server said otherwise
            sctp = caller.pc.sctp
            assert sctp is not None and sctp._remote_max_message_size == limit
            caller.send({"type": "input_text.append", "text": "x" * 5000})  # within the size: an error event
            await caller.wait_event(lambda e: e["type"] == "error" and e["code"] == "event_too_large")
            assert call.state != "closed"
            sctp._remote_max_message_size = 10 * limit
            caller.send({"type": "input_text.append", "text": "y" * (4 * limit)})
            await caller.wait_event(lambda e: e["type"] == "error" and e["code"] == "channel_message_too_large")
            await wait_until(lambda: call.state == "closed", 10)
            assert call.end_reason == "channel_message_too_large"
        finally:
            await caller.close()


async def test_a_session_whose_step_raises_ends_its_call_as_engine_error(
    http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failing call hears `engine_error` and ends; the call batched with it keeps getting
    model audio and events (it used to go silent with it). The engine runs in serve's process
    here, where the poisoned `prepare` is patched (tests/model/test_engine_process.py covers a
    failing session in the engine process)."""
    async with running_edge(edge_settings(engine_process=False)) as edge:
        good = await connected_caller(edge.url, http)
        bad = await connected_caller(edge.url, http)
        real_prepare = SessionState.prepare

        def prepare(self: SessionState, inp: object, tok: object, bins: object = None) -> object:
            if self.session_id == bad.call_id:
                raise RuntimeError("poisoned session")
            return real_prepare(self, inp, tok, bins)  # type: ignore[arg-type]

        try:
            await good.wait_event(lambda e: e["type"] == "metrics.latency")
            monkeypatch.setattr(SessionState, "prepare", prepare)
            ev = await bad.wait_event(lambda e: e["type"] == "error" and e["code"] == "engine_error")
            assert "call again" in ev["message"]
            bad_call = edge.rt.calls.get(bad.call_id or "")
            if bad_call is not None:
                await wait_until(lambda: bad_call.state == "closed", 10)
                assert bad_call.end_reason == "engine_error"
            assert edge.rt.worker.failed_sessions == 1
            n = len(good.of_type("metrics.latency"))
            await good.wait_event(
                lambda e: e["type"] == "metrics.latency" and len(good.of_type("metrics.latency")) > n + 3
            )
            good_call = edge.rt.calls.get(good.call_id or "")
            assert good_call is not None and good_call.state == "connected"
        finally:
            await good.close()
            await bad.close()


async def test_readyz_reports_an_engine_that_completes_no_step(
    http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_edge(edge_settings(engine_stall_s=0.5)) as edge:
        caller = await connected_caller(edge.url, http)
        release = threading.Event()
        worker = edge.rt.worker
        real = worker.engine.step_isolated

        def hung(inputs: list[MicroTurnInput], **kw: bool) -> object:
            release.wait(30)
            return real(inputs, **kw)

        try:
            async with http.get(f"{edge.url}/readyz") as r:
                assert r.status == 200
            monkeypatch.setattr(worker.engine, "step_isolated", hung)
            await wait_until(lambda: worker.stalled_s() > 0.8, 10)
            async with http.get(f"{edge.url}/readyz") as r:
                body = await r.json()
                assert r.status == 503 and body["status"] == "stalled" and body["engine_stalled_s"] > 0.5
            release.set()
            await wait_until(lambda: worker.stalled_s() < 0.5, 10)
            async with http.get(f"{edge.url}/readyz") as r:
                assert r.status == 200
        finally:
            release.set()
            await caller.close()
