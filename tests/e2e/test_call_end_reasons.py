"""A call that never gets media says which layer failed: `dtls_failed`, `ice_failed` or
`connect_timeout` (tests/e2e/test_call_aiortc.py), not one catch-all `ice_failed`.

Real aiortc callers whose offers are altered the way a broken gateway gets them wrong: a
fingerprint that does not match its certificate (DTLS fails after ICE connected), and ICE
passwords that are not the ones either side checks with (every connectivity check is refused).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import aioice.stun
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from signaling.call import Call
from tests.e2e.aiortc_server import Edge, assert_released, edge_settings, make_offer, running_edge, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    async with running_edge(edge_settings(api_keys=["k"], connect_timeout_s=15.0)) as e:
        yield e


def wrong_ice_pwd(sdp: str) -> str:
    return re.sub(r"a=ice-pwd:(\S+)", lambda m: "a=ice-pwd:" + "x" * len(m.group(1)), sdp)


async def place(edge: Edge, pc: RTCPeerConnection, sdp: str, *, alter_answer: bool = False) -> Call:
    """POST `sdp` WHIP-style, apply the answer on `pc` (altered too, if asked), return the server's call."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{edge.url}/v1/calls",
            data=sdp,
            headers={"Authorization": "Bearer k", "Content-Type": "application/sdp"},
        ) as r,
    ):
        assert r.status == 201, await r.text()
        call = edge.rt.calls.get(r.headers["Location"].rsplit("/", 1)[1])
        answer = await r.text()
    assert call is not None
    if alter_answer:
        answer = wrong_ice_pwd(answer)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return call


def flip_hex(value: str) -> str:
    return "".join("0" if c != "0" else "1" for c in value[:2]) + value[2:]


async def test_fingerprint_mismatch_ends_the_call_as_dtls_failed(edge: Edge) -> None:
    pc, sdp = await make_offer("pcmu")
    try:
        wrong = re.sub(r"(a=fingerprint:sha-256 )(\S+)", lambda m: m.group(1) + flip_hex(m.group(2)), sdp)
        assert wrong != sdp
        call = await place(edge, pc, wrong)
        await wait_until(lambda: call.state == "closed", timeout=10)
        assert call.end_reason == "dtls_failed"
        assert_released(edge.rt, call)
    finally:
        await pc.close()


async def test_refused_connectivity_checks_end_the_call_as_ice_failed(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a check whose answer fails authentication is retransmitted until it times out (31.5 s
    # with aioice's 6 retransmissions); one retransmission makes that 1.5 s, same outcome
    monkeypatch.setattr(aioice.stun, "RETRY_MAX", 1)
    pc, sdp = await make_offer("opus")
    try:
        wrong = wrong_ice_pwd(sdp)
        assert wrong != sdp
        # both sides check with the wrong password: no check ever gets an authentic answer
        call = await place(edge, pc, wrong, alter_answer=True)
        await wait_until(lambda: call.state == "closed", timeout=10)  # well before connect_timeout_s
        assert call.end_reason == "ice_failed"
        assert call.connected_at is None
        assert_released(edge.rt, call)
    finally:
        await pc.close()
