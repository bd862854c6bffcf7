"""The edge's drain (signaling/app.py `drain`, used by `microturn edge` on SIGTERM): new calls
are refused with Retry-After at once, running calls may end by themselves until the deadline,
whatever is still up afterwards is counted (and closed by the shutdown that follows)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from signaling.app import RUNTIME, create_app, drain
from tests.e2e.aiortc_server import edge_settings, make_offer, tiny_checkpoint

pytestmark = pytest.mark.timeout(30)
KEY = "drain-test-key"


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    c = TestClient(TestServer(create_app(edge_settings(api_keys=[KEY]), checkpoint=tiny_checkpoint())))
    await c.start_server()
    yield c
    await c.close()


async def post_call(c: TestClient) -> tuple[int, dict[str, str], dict[str, object]]:
    pc, sdp = await make_offer()
    try:
        r = await c.post("/v1/calls", json={"sdp": sdp, "type": "offer"}, headers={"Authorization": f"Bearer {KEY}"})
        return r.status, dict(r.headers), await r.json()
    finally:
        await pc.close()


async def test_drain_refuses_new_calls_and_waits_for_running_ones_to_end(client: TestClient) -> None:
    rt = client.server.app[RUNTIME]
    status, _, body = await post_call(client)
    assert status == 201, body
    (call,) = list(rt.calls)
    draining = asyncio.create_task(drain(client.server.app, 20.0))
    await asyncio.sleep(0.3)
    status, headers, body = await post_call(client)
    assert status == 503 and body["error"]["code"] == "shutting_down" and int(headers["Retry-After"]) > 0  # type: ignore[index]
    r = await client.get("/readyz")
    assert r.status == 503 and (await r.json())["status"] == "stopping"
    assert not draining.done()  # the running call holds the drain open
    await call.close("hangup")  # it ends by itself: the drain is over at once
    assert await asyncio.wait_for(draining, 5) == 0


async def test_drain_gives_up_at_its_deadline_or_when_told(client: TestClient) -> None:
    rt = client.server.app[RUNTIME]
    assert (await post_call(client))[0] == 201
    assert await asyncio.wait_for(drain(client.server.app, 0.3), 5) == 1
    assert len(rt.calls) == 1  # left for the shutdown to close
    abort = asyncio.Event()
    abort.set()
    assert await asyncio.wait_for(drain(client.server.app, 60.0, abort=abort), 5) == 1
