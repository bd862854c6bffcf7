"""Test-side helpers for a real edge: one random-weights tiny model per process, a running app,
raw aiortc offers, and the check that a call left nothing behind."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender

from infra.settings import Settings
from model.checkpoint import Checkpoint, load_or_random
from signaling.app import RUNTIME, Runtime, create_app
from signaling.call import Call

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def tiny_checkpoint() -> Checkpoint:
    """Random-weights tiny preset, built once per test process (an app per test stays cheap)."""
    return load_or_random(Path("/nonexistent/microturn-test-checkpoint"), "tiny")


def edge_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"checkpoint": None, "max_sessions": 2, "connect_timeout_s": 10.0, "idle_timeout_s": 10.0}
    # tests place several anonymous calls at once on 2 slots (the 50% default is tested on its own)
    base["anonymous_slot_share"] = 1.0
    return Settings(**{**base, **overrides})


@dataclass
class Edge:
    app: web.Application
    server: TestServer
    url: str

    @property
    def rt(self) -> Runtime:
        return self.app[RUNTIME]


@asynccontextmanager
async def running_edge(settings: Settings) -> AsyncIterator[Edge]:
    app = create_app(settings, checkpoint=tiny_checkpoint())
    server = TestServer(app)
    await server.start_server()
    try:
        yield Edge(app, server, str(server.make_url("")).rstrip("/"))
    finally:
        await server.close()


async def make_offer(
    codec: str = "opus", *, video: bool = False, audio: str = "sendrecv"
) -> tuple[RTCPeerConnection, str]:
    """A real aiortc offer (candidates included) and its peer connection (close it!)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("events")
    t = pc.addTransceiver("audio", direction=audio)
    if codec != "opus":
        t.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == f"audio/{codec.upper()}"]
        )
    if video:
        pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    assert pc.localDescription is not None
    return pc, pc.localDescription.sdp


def call_tasks(call_id: str) -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if call_id in t.get_name()]


def assert_released(rt: Runtime, call: Call) -> None:
    """Nothing of `call` is held: registry entry, tasks, peer connection, engine slot."""
    assert call.id not in rt.calls
    assert call.state == "closed"
    assert call_tasks(call.id) == []
    assert call.pc.connectionState == "closed"
    assert not call.engine_open and call.id not in rt.engine
    assert call.output.readyState == "ended"


async def wait_until(pred: Any, timeout: float, interval: float = 0.05) -> float:
    """Poll `pred()` until true; returns the seconds it took (raises on timeout)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not pred():
        if loop.time() - start > timeout:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
    return loop.time() - start
