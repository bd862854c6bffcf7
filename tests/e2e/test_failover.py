"""Failover, worker side, with real processes: `kill -9` of a worker mid-call; the session is
placed on the other worker with restore=True, which rebuilds it from the dead worker's turn log
and goes on answering. The edge's part (noticing the expired heartbeat, re-placing, telling the
page) is tests/e2e/test_scale.py; this one drives the protocol by hand, so it shows what the
new worker does and prints the gap the caller hears."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest

from infra import keys
from infra.messages import TURN_SAMPLES, MicroTurnOutput, SessionOpen
from tests.model.test_service import Edge, turn_input
from tests.redis_server import RedisServer
from tests.worker_proc import WorkerProc

pytestmark = pytest.mark.slow


async def test_kill_9_mid_call_the_session_is_restored_from_its_log(redis_server: RedisServer, tmp_path: Path) -> None:
    edge = Edge(redis_server.url)
    a = WorkerProc(redis_server.url, tmp_path, "wa", max_sessions=2, drain_s=5)
    b = WorkerProc(redis_server.url, tmp_path, "wb", max_sessions=2, drain_s=5)
    outs = edge.bus.subscribe(keys.outputs("call"))
    try:
        await edge.wait_live("wa", a)
        await edge.wait_live("wb", b)
        await outs.ready()
        assert await edge.registry.reserve("call", exclude=("wb",)) == "wa"
        assert (await edge.open("wa", "call", seed=3)).ok

        async def turn(worker: str, k: int) -> MicroTurnOutput:
            await edge.bus.publish_struct(keys.inputs(worker), turn_input("call", k))
            async with asyncio.timeout(60):
                return msgspec.msgpack.decode(await outs.get(), type=MicroTurnOutput)

        n = 8
        for k in range(n):
            assert (await turn("wa", k)).turn == k
        last_out = time.monotonic()
        async with asyncio.timeout(30):
            while await edge.redis.xlen(keys.session_log("call")) < n:
                await asyncio.sleep(0.05)

        a.kill()  # SIGKILL: no drain, no hand-back, its KV cache is gone
        killed = time.monotonic()
        async with asyncio.timeout(30):  # what the edge waits for: the heartbeat expires
            while "wa" in {w.worker_id for w in await edge.registry.live()}:
                await asyncio.sleep(0.05)
        expired = time.monotonic()
        assert await edge.registry.reserve("call", exclude=("wa",)) == "wb"
        open_msg = SessionOpen(
            request_id="r", session_id="call", seed=3, reply_to=keys.replies(edge.edge_id), restore=True
        )
        assert (await edge.request("wb", open_msg)).ok
        restored = time.monotonic()
        out = await turn("wb", n)  # the caller's next turn, now on wb
        first_out = time.monotonic()
        assert out.turn == n and not out.error and len(out.audio_array()) == TURN_SAMPLES
        assert f"restored_turns={n} " in b.log(), b.log()  # rebuilt from all n logged turns, not opened fresh
        for k in range(n + 1, n + 3):  # and it goes on
            assert (await turn("wb", k)).turn == k
        print(
            "\nfailover gap (last output on the killed worker -> first on the new one):"
            f" {(first_out - last_out) * 1000:.0f} ms"
            f" = heartbeat expiry {(expired - killed) * 1000:.0f} ms (TTL 1.5 s) + restore open"
            f" {(restored - expired) * 1000:.0f} ms + first step {(first_out - restored) * 1000:.0f} ms"
        )
    finally:
        outs.close()
        a.kill()
        b.kill()
        await edge.aclose()
