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


# --- edge hardening (issue 8) ----------------------------------------------------------------------
def remote_candidates(c: TestClient, call_id: str) -> list[Any]:
    """What the call's ICE agent holds from the peer (the BUNDLE transport's aioice candidates)."""
    call = runtime(c).calls.get(call_id)
    assert call is not None
    transport = call.pc.getTransceivers()[0].receiver.transport.transport
    return list(transport.getRemoteCandidates())


def cand(i: int, host: str | None = None, port: int = 40000) -> str:
    host = host or f"198.51.{100 + i // 250}.{i % 250 + 1}"
    return f"a=candidate:{i} 1 udp {i + 1} {host} {port + i % 1000} typ host\r\n"


async def trickle_offer(peers: list[RTCPeerConnection]) -> str:
    """A real offer still open to trickled candidates (aiortc's own says end-of-candidates, after
    which its ICE agent ignores every PATCH; a browser's that trickles does not)."""
    return (await offer(peers)).replace("a=end-of-candidates\r\n", "")


SDPFRAG_HEADERS = {"Content-Type": "application/trickle-ice-sdpfrag"}


async def new_call(
    c: TestClient, peers: list[RTCPeerConnection], tok: str | None = None, sdp: str | None = None
) -> str:
    r = await post_call(c, tok or await token(c), json={"sdp": sdp or await trickle_offer(peers), "type": "offer"})
    assert r.status == 201, await r.text()
    return str((await r.json())["call_id"])


async def test_patch_over_the_candidate_limit_is_422_and_adds_nothing(
    client: TestClient, peers: list[RTCPeerConnection]
) -> None:
    """550 unique candidates in one PATCH (what blocked the event loop for seconds) are refused whole."""
    call_id = await new_call(client, peers)
    before = len(remote_candidates(client, call_id))
    flood = "".join(cand(i) for i in range(550))
    r = await client.patch(f"/v1/calls/{call_id}", data=flood, headers=SDPFRAG_HEADERS)
    msg = await expect_error(r, 422, "too_many_candidates")
    assert "limit is 32" in msg
    assert len(remote_candidates(client, call_id)) == before
    # within the limit is fine, and the limit counts what the call already holds
    assert (await client.patch(f"/v1/calls/{call_id}", data=cand(1) + cand(2), headers=SDPFRAG_HEADERS)).status == 204
    assert len(remote_candidates(client, call_id)) == before + 2
    room = 32 - runtime(client).calls.get(call_id).ice.accepted  # type: ignore[union-attr]
    over = "".join(cand(i) for i in range(100, 100 + room + 1))
    await expect_error(
        await client.patch(f"/v1/calls/{call_id}", data=over, headers=SDPFRAG_HEADERS), 422, "too_many_candidates"
    )
    exact = "".join(cand(i) for i in range(100, 100 + room))
    assert (await client.patch(f"/v1/calls/{call_id}", data=exact, headers=SDPFRAG_HEADERS)).status == 204
    assert (await client.delete(f"/v1/calls/{call_id}")).status == 204


async def test_offer_candidates_are_capped_too(peers: list[RTCPeerConnection]) -> None:
    c = await start(max_ice_candidates=8)
    try:
        sdp = await trickle_offer(peers)
        flood = "".join(cand(i) for i in range(200))
        flooded = re.sub(r"(a=mid:0\r\n)", lambda m: m.group(1) + flood, sdp, count=1)
        call_id = await new_call(c, peers, sdp=flooded)
        assert len(remote_candidates(c, call_id)) <= 8
        await expect_error(
            await c.patch(f"/v1/calls/{call_id}", data=cand(999), headers=SDPFRAG_HEADERS), 422, "too_many_candidates"
        )
        assert (await c.delete(f"/v1/calls/{call_id}")).status == 204
    finally:
        await c.close()


LOCAL_TARGETS = ["127.0.0.1", "127.8.9.10", "::1", "169.254.1.1", "fe80::1", "0.0.0.0", "::", "224.0.0.251",
                 "255.255.255.255", "::ffff:127.0.0.1", "localhost"]  # fmt: skip


async def test_loopback_and_link_local_candidates_are_refused_by_default(
    client: TestClient, peers: list[RTCPeerConnection]
) -> None:
    """The server must not send STUN to its own local ports because a caller asked it to."""
    sdp = await trickle_offer(peers)
    in_offer = "".join(cand(900 + i, host) for i, host in enumerate(LOCAL_TARGETS))
    call_id = await new_call(client, peers, sdp=re.sub(r"(a=mid:0\r\n)", lambda m: m.group(1) + in_offer, sdp, count=1))
    frag = "".join(cand(i, host) for i, host in enumerate(LOCAL_TARGETS))
    assert (await client.patch(f"/v1/calls/{call_id}", data=frag, headers=SDPFRAG_HEADERS)).status == 204
    hosts = {x.ip for x in remote_candidates(client, call_id)}
    assert not hosts & set(LOCAL_TARGETS), hosts
    assert hosts, "the offer's real candidates are still there"
    assert (await client.delete(f"/v1/calls/{call_id}")).status == 204


async def test_loopback_candidates_are_allowed_by_the_setting(peers: list[RTCPeerConnection]) -> None:
    c = await start(allow_loopback_candidates=True)
    try:
        call_id = await new_call(c, peers)
        frag = cand(1, "127.0.0.1") + cand(2, "::1") + cand(3, "localhost")
        assert (await c.patch(f"/v1/calls/{call_id}", data=frag, headers=SDPFRAG_HEADERS)).status == 204
        hosts = {x.ip for x in remote_candidates(c, call_id)}
        assert {"127.0.0.1", "::1"} <= hosts and "localhost" not in hosts  # names other than mDNS: never
        assert (await c.delete(f"/v1/calls/{call_id}")).status == 204
    finally:
        await c.close()


async def test_mdns_lookups_are_capped_per_call(
    client: TestClient, peers: list[RTCPeerConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each `.local` name is a lookup that holds the request up to 1 s: at most 4 per call."""
    import aioice.mdns

    looked_up: list[str] = []

    async def resolve(self: Any, hostname: str, timeout: float | None = 1.0) -> str | None:
        looked_up.append(hostname)
        return None  # nobody answers (as for a made-up name)

    monkeypatch.setattr(aioice.mdns.MDnsProtocol, "resolve", resolve)
    call_id = await new_call(client, peers)
    names = [f"{i:08x}-aaaa-bbbb-cccc-dddddddddddd.local" for i in range(10)]
    frag = "".join(cand(i, name) for i, name in enumerate(names))
    assert (await client.patch(f"/v1/calls/{call_id}", data=frag, headers=SDPFRAG_HEADERS)).status == 204
    assert (await client.patch(f"/v1/calls/{call_id}", data=frag, headers=SDPFRAG_HEADERS)).status == 204
    assert len(looked_up) == 4 and len(set(looked_up)) == 4
    assert (await client.delete(f"/v1/calls/{call_id}")).status == 204


async def test_patch_is_rate_limited_per_call(client: TestClient, peers: list[RTCPeerConnection]) -> None:
    call_id = await new_call(client, peers)
    statuses = [
        (await client.patch(f"/v1/calls/{call_id}", data="", headers=SDPFRAG_HEADERS)).status for _ in range(60)
    ]
    assert statuses == [204] * 60
    r = await client.patch(f"/v1/calls/{call_id}", data="", headers=SDPFRAG_HEADERS)
    await expect_error(r, 429, "rate_limited")
    assert int(r.headers["Retry-After"]) >= 1
    other = await new_call(client, peers)  # another call has its own budget
    assert (await client.patch(f"/v1/calls/{other}", data="", headers=SDPFRAG_HEADERS)).status == 204
    for cid in (call_id, other):
        assert (await client.delete(f"/v1/calls/{cid}")).status == 204


async def test_anonymous_callers_hold_at_most_their_share_of_slots(peers: list[RTCPeerConnection]) -> None:
    """Two anonymous clients must not be able to hold every slot: with 4 slots and the 50%
    default they get 2, and API-key integrators still get in."""
    c = await start(max_sessions=4, anonymous_slot_share=0.5, max_calls_per_client=4, api_keys=["gw"])
    try:
        first = await new_call(c, peers)
        second = await new_call(c, peers)
        r = await post_call(c, await token(c), json={"sdp": await offer(peers), "type": "offer"})
        msg = await expect_error(r, 503, "anonymous_full")
        assert "all 2 of the 4 session slots" in msg and int(r.headers["Retry-After"]) >= 1
        api = await new_call(c, peers, tok="gw")
        minted = await c.post("/v1/sessions", headers={"Authorization": "Bearer gw"})  # an integrator's page token
        await new_call(c, peers, tok=(await minted.json())["token"])
        assert runtime(c).engine.stats().free == 0
        assert (await c.delete(f"/v1/calls/{first}")).status == 204
        third = await new_call(c, peers)  # an anonymous slot is free again
        assert runtime(c).calls.anonymous_count == 2
        await expect_error(
            await post_call(c, "gw", json={"sdp": await offer(peers), "type": "offer"}), 503, "engine_full"
        )
        for cid in (second, third, api):
            assert (await c.delete(f"/v1/calls/{cid}")).status == 204
        assert runtime(c).calls.anonymous_count == 0  # released with the calls
    finally:
        await c.close()


@pytest.mark.parametrize(
    ("share", "slots", "expected"), [(0.5, 8, 4), (0.5, 1, 1), (0.5, 3, 1), (1.0, 3, 3), (0.0, 8, 0)]
)
def test_anonymous_slot_arithmetic(share: float, slots: int, expected: int) -> None:
    from signaling.routes import anonymous_slots

    assert anonymous_slots(share, slots) == expected


async def test_forwarded_for_counts_only_behind_a_trusted_proxy() -> None:
    """Behind a TLS proxy every user is the proxy's address unless the proxy is trusted; a
    client that is not a trusted proxy cannot pick its identity with X-Forwarded-For."""
    direct = await start(rate_limit_per_min=1)
    proxied = await start(rate_limit_per_min=1, trusted_proxies=["127.0.0.1", "::1"])
    try:
        a, b = {"X-Forwarded-For": "203.0.113.5"}, {"X-Forwarded-For": "2001:db8:7:7::1"}
        assert (await direct.post("/v1/sessions", headers=a)).status == 201
        await expect_error(await direct.post("/v1/sessions", headers=b), 429, "rate_limited")  # same peer
        assert (await proxied.post("/v1/sessions", headers=a)).status == 201
        r = await proxied.post("/v1/sessions", headers=b)
        assert r.status == 201
        sub = runtime(proxied).auth.verify_token((await r.json())["token"]).client_id
        assert sub == "anon:2001:db8:7:7::/64"
        await expect_error(await proxied.post("/v1/sessions", headers=a), 429, "rate_limited")
        # another address in the same IPv6 /64 is the same client
        same64 = {"X-Forwarded-For": "2001:db8:7:7:abcd::99"}
        await expect_error(await proxied.post("/v1/sessions", headers=same64), 429, "rate_limited")
    finally:
        await direct.close()
        await proxied.close()


async def test_origin_is_checked_when_minting_anonymous_tokens() -> None:
    c = await start(api_keys=["gw"], allowed_origins=["https://app.example.com"])
    try:
        own = f"http://{c.server.host}:{c.server.port}"
        assert (await c.post("/v1/sessions", headers={"Origin": own})).status == 201
        assert (await c.post("/v1/sessions")).status == 201  # no Origin: not a browser
        assert (await c.post("/v1/sessions", headers={"Origin": "https://app.example.com"})).status == 201
        for evil in ("https://evil.example", "null", f"http://{c.server.host}:1", "https://app.example.com.evil"):
            r = await c.post("/v1/sessions", headers={"Origin": evil})
            await expect_error(r, 403, "origin_not_allowed")
        # an integrator's key is not a browser's ambient credential: Origin does not matter
        r = await c.post("/v1/sessions", headers={"Origin": "https://evil.example", "Authorization": "Bearer gw"})
        assert r.status == 201
    finally:
        await c.close()


@pytest.mark.parametrize("value", ["Bearer é", "Bearer ключ", "Bearer abc.déf", "Bearer " + "x" * 5000])
async def test_non_ascii_authorization_is_401_not_500(client: TestClient, value: str) -> None:
    for path in ("/v1/calls", "/v1/sessions"):
        r = await client.post(path, json={"sdp": "v=0", "type": "offer"}, headers={"Authorization": value})
        await expect_error(r, 401, "unauthorized")


async def test_non_utf8_authorization_bytes_are_401() -> None:
    """Raw bytes no client library would send, straight over a socket."""
    import asyncio

    c = await start()
    try:
        reader, writer = await asyncio.open_connection(c.server.host, c.server.port)
        writer.write(
            b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n"
            b"Authorization: Bearer \xff\xfe\xe9abc.d\xe9f\r\n\r\n"
        )
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        assert status_line.split()[1] in (b"400", b"401"), status_line  # never 500
    finally:
        await c.close()


async def test_tokens_of_another_server_without_a_configured_secret_are_401(peers: list[RTCPeerConnection]) -> None:
    """No MICROTURN_TOKEN_SECRET: each process has its own random key, not a shared constant."""
    a, b = await start(), await start()
    try:
        tok = await token(a)
        await expect_error(
            await post_call(b, tok, json={"sdp": await offer(peers), "type": "offer"}), 401, "unauthorized"
        )
        r = await post_call(a, tok, json={"sdp": await offer(peers), "type": "offer"})
        assert r.status == 201
        assert (await a.delete(r.headers["Location"])).status == 204
    finally:
        await a.close()
        await b.close()


async def test_an_idle_hour_buys_one_burst_not_1800_requests() -> None:
    from tests.signaling.test_auth import Clock

    c = await start(rate_limit_per_min=30)
    try:
        clock = Clock()
        runtime(c).limiter.clock = clock
        assert (await c.post("/v1/sessions")).status == 201
        clock.t += 3600.0
        statuses = [(await c.post("/v1/sessions")).status for _ in range(31)]
        assert statuses == [201] * 30 + [429]
    finally:
        await c.close()


async def test_api_keys_are_exempt_from_every_per_client_limit(peers: list[RTCPeerConnection]) -> None:
    """More API-key calls and mints than the per-client rate and call limits would allow."""
    c = await start(max_sessions=4, max_calls_per_client=1, rate_limit_per_min=2, api_keys=["gw"])
    try:
        locations = []
        for _ in range(4):
            r = await post_call(c, "gw", json={"sdp": await offer(peers), "type": "offer"})
            assert r.status == 201, await r.text()
            locations.append(r.headers["Location"])
        for _ in range(5):
            assert (await c.post("/v1/sessions", headers={"Authorization": "Bearer gw"})).status == 201
        for loc in locations:
            assert (await c.delete(loc)).status == 204
        assert_nothing_held(c)
    finally:
        await c.close()


def test_hardening_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded defaults are the safe ones (the fixtures above override some for speed)."""
    from infra.settings import Settings

    for name in ("ALLOW_LOOPBACK_CANDIDATES", "ANONYMOUS_SLOT_SHARE", "MAX_ICE_CANDIDATES", "TRUSTED_PROXIES",
                 "ALLOWED_ORIGINS", "TOKEN_SECRET", "OPS_KEY"):  # fmt: skip
        monkeypatch.delenv(f"MICROTURN_{name}", raising=False)
    s = Settings()
    assert s.allow_loopback_candidates is False
    assert s.anonymous_slot_share == 0.5
    assert s.max_ice_candidates == 32
    assert s.trusted_proxies == [] and s.allowed_origins == []
    assert s.token_secret is None  # -> a random key per process (tested above)
