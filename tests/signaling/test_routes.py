"""The call API's answers to good and bad requests: status, JSON error shape, and no leaks.

Offers here are real aiortc offers; the peers never connect (signaling only), so each test
takes a fraction of a second. Media flowing end to end is tests/e2e/test_call_aiortc.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCPeerConnection

from signaling.app import RUNTIME, create_app
from signaling.runtime import Runtime
from tests.e2e.aiortc_server import edge_settings, make_offer, tiny_checkpoint

pytestmark = pytest.mark.timeout(30)


async def start(**settings: Any) -> TestClient:
    client = TestClient(TestServer(create_app(edge_settings(**settings), checkpoint=tiny_checkpoint())))
    await client.start_server()
    return client


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    c = await start()
    yield c
    await c.close()


@pytest.fixture
async def peers() -> AsyncIterator[list[RTCPeerConnection]]:
    made: list[RTCPeerConnection] = []
    yield made
    for pc in made:
        await pc.close()


async def offer(peers: list[RTCPeerConnection], codec: str = "opus", **kw: Any) -> str:
    pc, sdp = await make_offer(codec, **kw)
    peers.append(pc)
    return sdp


async def token(c: TestClient) -> str:
    r = await c.post("/v1/sessions", json={})
    assert r.status == 201
    body = await r.json()
    assert set(body) == {"token", "expires_in"} and body["expires_in"] == 300
    return str(body["token"])


async def post_call(c: TestClient, tok: str | None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    headers.update(kw.pop("headers", {}))
    return await c.post("/v1/calls", headers=headers, **kw)


async def expect_error(resp: Any, status: int, code: str) -> str:
    assert resp.status == status, (resp.status, await resp.text())
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


def runtime(c: TestClient) -> Runtime:
    return c.app[RUNTIME]


def assert_nothing_held(c: TestClient) -> None:
    rt = runtime(c)
    assert len(rt.calls) == 0 and rt.engine.stats().active == 0


# --- happy paths -----------------------------------------------------------------------------------
async def test_json_offer_gets_json_answer_and_location(client: TestClient, peers: list[RTCPeerConnection]) -> None:
    r = await post_call(client, await token(client), json={"sdp": await offer(peers), "type": "offer"})
    assert r.status == 201
    body = await r.json()
    assert body["type"] == "answer" and body["sdp"].startswith("v=0") and "a=candidate:" in body["sdp"]
    assert r.headers["Location"] == f"/v1/calls/{body['call_id']}"
    assert runtime(client).engine.stats().active == 1
    assert (await client.delete(r.headers["Location"])).status == 204
    assert_nothing_held(client)


async def test_sdp_offer_gets_sdp_answer(client: TestClient, peers: list[RTCPeerConnection]) -> None:
    sdp = await offer(peers, "pcmu")
    r = await post_call(client, await token(client), data=sdp, headers={"Content-Type": "application/sdp"})
    assert r.status == 201 and r.content_type == "application/sdp"
    answer = await r.text()
    assert "PCMU/8000" in answer and re.search(r"^a=sendrecv", answer, re.M)
    assert (await client.delete(r.headers["Location"])).status == 204


async def test_extra_m_lines_are_answered_inactive(client: TestClient, peers: list[RTCPeerConnection]) -> None:
    """A second audio m-line is not read by anyone, so no receiver may start for it."""
    pc, _ = await make_offer()
    peers.append(pc)
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    r = await post_call(client, await token(client), json={"sdp": pc.localDescription.sdp, "type": "offer"})
    assert r.status == 201
    directions = re.findall(r"^a=(sendrecv|sendonly|recvonly|inactive)", (await r.json())["sdp"], re.M)
    assert directions == ["sendrecv", "inactive"]
    await client.delete(r.headers["Location"])


async def test_trickle_ice_patch(client: TestClient, peers: list[RTCPeerConnection]) -> None:
    sdp = await offer(peers)
    r = await post_call(client, await token(client), json={"sdp": sdp, "type": "offer"})
    loc = r.headers["Location"]
    ufrag = re.search(r"a=ice-ufrag:(\S+)", sdp).group(1)  # type: ignore[union-attr]
    pwd = re.search(r"a=ice-pwd:(\S+)", sdp).group(1)  # type: ignore[union-attr]
    frag = (
        f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 2122260223 127.0.0.1 61764 typ host\r\na=end-of-candidates\r\n"
    )
    sdpfrag = {"Content-Type": "application/trickle-ice-sdpfrag"}
    assert (await client.patch(loc, data=frag, headers=sdpfrag)).status == 204
    restart = frag.replace(ufrag, "newufrag")
    await expect_error(await client.patch(loc, data=restart, headers=sdpfrag), 422, "ice_restart_unsupported")
    bad = "a=candidate:garbage\r\n"
    await expect_error(await client.patch(loc, data=bad, headers=sdpfrag), 400, "bad_candidate")
    await expect_error(await client.patch(loc, data=frag), 415, "unsupported_media_type")
    await expect_error(await client.patch("/v1/calls/nope", data=frag, headers=sdpfrag), 404, "not_found")
    await client.delete(loc)


# --- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "ctype", "code"),
    [
        (b"hello", "application/sdp", "bad_sdp"),
        (b"v=0\r\ngarbage\r\nm=audio x", "application/sdp", "bad_sdp"),
        (b"v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "application/sdp", "bad_sdp"),  # no audio
        (b"\xff\xfe\x00", "application/sdp", "bad_sdp"),
        (b"{not json", "application/json", "bad_request"),
        (b'{"sdp": 5, "type": "offer"}', "application/json", "bad_request"),
        (b'{"sdp": "v=0", "type": "answer"}', "application/json", "bad_request"),
        (b"[" * 5000, "application/json", "bad_request"),
    ],
)
async def test_garbage_offers_are_400(client: TestClient, body: bytes, ctype: str, code: str) -> None:
    r = await post_call(client, await token(client), data=body, headers={"Content-Type": ctype})
    await expect_error(r, 400, code)
    assert_nothing_held(client)


async def test_offer_with_no_common_codec_or_no_sending_audio_is_400(
    client: TestClient, peers: list[RTCPeerConnection]
) -> None:
    tok = await token(client)
    sdp = await offer(peers)
    no_codec = re.sub(r"^m=audio (\d+) (\S+) .*$", r"m=audio \1 \2 96", sdp, flags=re.M)
    no_codec = re.sub(r"^a=rtpmap:\d+ .*\r\n", "", no_codec, flags=re.M) + "a=rtpmap:96 G7291/8000\r\n"
    await expect_error(await post_call(client, tok, json={"sdp": no_codec, "type": "offer"}), 400, "bad_sdp")
    recv_only = await offer(peers, audio="recvonly")
    msg = await expect_error(await post_call(client, tok, json={"sdp": recv_only, "type": "offer"}), 400, "bad_sdp")
    assert "must send audio" in msg
    assert_nothing_held(client)


async def test_oversized_body_is_413(peers: list[RTCPeerConnection]) -> None:
    c = await start(max_sdp_bytes=2048)
    try:
        tok = await token(c)
        sdp = await offer(peers)
        assert len(sdp) > 2048
        await expect_error(await post_call(c, tok, json={"sdp": sdp, "type": "offer"}), 413, "too_large")

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: caught while reading
            for _ in range(10):
                yield b"v" * 1000

        r = await post_call(c, tok, data=chunked(), headers={"Content-Type": "application/sdp"})
        await expect_error(r, 413, "too_large")
        assert_nothing_held(c)
    finally:
        await c.close()


async def test_wrong_content_type_is_415(client: TestClient) -> None:
    r = await post_call(client, await token(client), data=b"v=0", headers={"Content-Type": "text/plain"})
    await expect_error(r, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer eyJzdWIiOiJ4In0.forged"],
)
async def test_missing_or_invalid_credentials_are_401(client: TestClient, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    r = await client.post("/v1/calls", json={"sdp": "v=0", "type": "offer"}, headers=headers)
    await expect_error(r, 401, "unauthorized")


async def test_expired_and_tampered_tokens_are_401(client: TestClient) -> None:
    auth = runtime(client).auth
    expired = auth.mint("anon:x", now=time.time() - 3600)
    msg = await expect_error(await post_call(client, expired, json={}), 401, "unauthorized")
    assert "expired" in msg
    good = await token(client)
    body, sig = good.split(".")
    tampered = f"{body[:-2]}AA.{sig}"
    await expect_error(await post_call(client, tampered, json={}), 401, "unauthorized")


async def test_engine_full_is_503_naming_the_limit(peers: list[RTCPeerConnection]) -> None:
    c = await start(max_sessions=1)
    try:
        tok = await token(c)
        first = await post_call(c, tok, json={"sdp": await offer(peers), "type": "offer"})
        assert first.status == 201
        r = await post_call(c, tok, json={"sdp": await offer(peers), "type": "offer"})
        msg = await expect_error(r, 503, "engine_full")
        assert "all 1 session slots in use" in msg and r.headers["Retry-After"]
        ready = await c.get("/readyz")
        assert ready.status == 503 and (await ready.json())["status"] == "full"
        assert len(runtime(c).calls) == 1  # the refused call left nothing behind
        assert (await c.delete(first.headers["Location"])).status == 204
        again = await post_call(c, tok, json={"sdp": await offer(peers), "type": "offer"})
        assert again.status == 201
        await c.delete(again.headers["Location"])
    finally:
        await c.close()


async def test_calls_per_client_and_rate_limits_are_429(peers: list[RTCPeerConnection]) -> None:
    c = await start(max_calls_per_client=1, rate_limit_per_min=4, api_keys=["k1"])
    try:
        tok = await token(c)  # 1st action
        first = await post_call(c, tok, json={"sdp": await offer(peers), "type": "offer"})  # 2nd
        assert first.status == 201
        r = await post_call(c, tok, json={"sdp": await offer(peers), "type": "offer"})  # 3rd
        msg = await expect_error(r, 429, "too_many_calls")
        assert "1 calls" in msg
        assert (await c.post("/v1/sessions")).status == 201  # 4th
        r = await c.post("/v1/sessions")  # 5th: over 4 a minute
        await expect_error(r, 429, "rate_limited")
        assert int(r.headers["Retry-After"]) >= 1
        # API keys are trusted integrators: neither limit applies
        api = await post_call(c, "k1", json={"sdp": await offer(peers), "type": "offer"})
        assert api.status == 201
        for loc in (first.headers["Location"], api.headers["Location"]):
            assert (await c.delete(loc)).status == 204
        assert_nothing_held(c)
    finally:
        await c.close()


async def test_anonymous_off_needs_an_api_key(peers: list[RTCPeerConnection]) -> None:
    c = await start(allow_anonymous=False, api_keys=["k1", "k2"])
    try:
        await expect_error(await c.post("/v1/sessions"), 401, "unauthorized")
        await expect_error(await c.post("/v1/sessions", headers={"Authorization": "Bearer k3"}), 401, "unauthorized")
        r = await c.post("/v1/sessions", headers={"Authorization": "Bearer k2"})
        assert r.status == 201
        tok = (await r.json())["token"]
        # a token is not a key for minting more tokens
        await expect_error(
            await c.post("/v1/sessions", headers={"Authorization": f"Bearer {tok}"}), 401, "unauthorized"
        )
        call = await post_call(c, tok, json={"sdp": await offer(peers), "type": "offer"})
        assert call.status == 201
        await c.delete(call.headers["Location"])
    finally:
        await c.close()


async def test_unknown_calls_and_routes_are_json_404(client: TestClient) -> None:
    await expect_error(await client.delete("/v1/calls/does-not-exist"), 404, "not_found")
    await expect_error(await client.get("/v1/nothing-here"), 404, "not_found")
    await expect_error(await client.get("/v1/calls"), 405, "method_not_allowed")
