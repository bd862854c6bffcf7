"""`microturn worker` as a real subprocess against a real redis-server: control requests and
replies, a full worker, binary micro-turns over Streams, SIGTERM drain; plus the reservation
leak guard in-process."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import numpy as np
import pytest
import redis.asyncio as aioredis

from infra import keys
from infra.bus import BusUnavailable, Subscription
from infra.messages import (
    WORKER_DRAINING,
    ControlReply,
    MicroTurnInput,
    MicroTurnOutput,
    SessionClose,
    SessionOpen,
)
from infra.redis_bus import DATA, RedisBus, RedisSettings
from infra.registry import WorkerRegistry
from tests.redis_server import RedisServer
from tests.worker_proc import TTL_S, WorkerProc

pytestmark = pytest.mark.slow


class Edge:
    """The edge's side of the protocol, on its own connections."""

    def __init__(self, url: str) -> None:
        rs = RedisSettings.from_dsn(url, block_ms=200, backoff_max_s=0.2)
        self.bus = RedisBus(rs)
        self.redis = rs.client()
        self.registry = WorkerRegistry(self.redis, ttl_s=TTL_S)
        self.edge_id = "edge-" + secrets.token_hex(3)
        self.replies: Subscription = self.bus.subscribe(keys.replies(self.edge_id))

    async def request(self, worker_id: str, msg: SessionOpen | SessionClose, timeout: float = 30) -> ControlReply:
        await self.replies.ready()
        await self.bus.publish_struct(keys.worker_ctl(worker_id), msg)
        async with asyncio.timeout(timeout):
            while True:
                reply = msgspec.msgpack.decode(await self.replies.get(), type=ControlReply)
                if reply.request_id == msg.request_id:
                    return reply

    async def open(self, worker_id: str, session_id: str, seed: int = 0, timeout: float = 30) -> ControlReply:
        rid = secrets.token_hex(4)
        return await self.request(
            worker_id,
            SessionOpen(request_id=rid, session_id=session_id, seed=seed, reply_to=keys.replies(self.edge_id)),
            timeout,
        )

    async def close(self, worker_id: str, session_id: str) -> ControlReply:
        rid = secrets.token_hex(4)
        return await self.request(
            worker_id, SessionClose(request_id=rid, session_id=session_id, reply_to=keys.replies(self.edge_id))
        )

    async def wait_live(self, worker_id: str, proc: WorkerProc, timeout: float = 120) -> None:
        async with asyncio.timeout(timeout):
            while worker_id not in {w.worker_id for w in await self.registry.live()}:
                assert proc.proc.poll() is None, proc.log()
                await asyncio.sleep(0.2)

    async def aclose(self) -> None:
        await self.bus.close()
        await self.redis.aclose()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[WorkerProc]]:
    made: list[WorkerProc] = []
    yield made
    for p in made:
        p.kill()


@pytest.fixture
async def edge(redis_server: RedisServer) -> AsyncIterator[Edge]:
    e = Edge(redis_server.url)
    yield e
    await e.aclose()


def turn_input(session_id: str, turn: int) -> MicroTurnInput:
    audio = (0.1 * np.sin(np.arange(3200) * (turn + 1) / 50)).astype(np.float32)
    return MicroTurnInput.from_arrays(audio, session_id=session_id, turn=turn)


async def test_open_close_full_and_binary_micro_turns(
    redis_server: RedisServer, edge: Edge, procs: list[WorkerProc], tmp_path: Path
) -> None:
    w = WorkerProc(redis_server.url, tmp_path, "wa", max_sessions=1, drain_s=5)
    procs.append(w)
    await edge.wait_live("wa", w)
    assert [(i.capacity, i.sessions, i.draining) for i in await edge.registry.live()] == [(1, 0, False)]

    assert await edge.registry.reserve("s1") == "wa"
    reply = await edge.open("wa", "s1", seed=3)
    assert (reply.ok, reply.worker_id, reply.code) == (True, "wa", "")
    # a second open without a reservation: the one slot is taken
    full = await edge.open("wa", "s2")
    assert (full.ok, full.code) == (False, "full")
    assert await edge.registry.sessions_of("wa") == {"s1"}  # the refused one is not counted

    outs = edge.bus.subscribe(keys.outputs("s1"))
    await outs.ready()
    sent = [turn_input("s1", t) for t in range(2)]
    for inp in sent:
        await edge.bus.publish_struct(keys.inputs("wa"), inp)
    got: list[MicroTurnOutput] = []
    async with asyncio.timeout(60):
        while len(got) < 2:
            got.append(msgspec.msgpack.decode(await outs.get(), type=MicroTurnOutput))
    assert [o.turn for o in got] == [0, 1]
    assert all(o.session_id == "s1" and len(o.audio) == 3200 * 4 and not o.error for o in got)
    # on the wire: one binary msgpack field per entry, the float32 audio verbatim (no base64/JSON)
    entries: Any = await edge.redis.xrange(keys.outputs("s1"))
    fields = entries[0][1]
    assert set(fields) == {DATA}
    raw: bytes = fields[DATA]
    assert raw[0] & 0xF0 == 0x80 or raw[0] in (0xDE, 0xDF)  # a msgpack map
    assert got[0].audio in raw
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(raw)

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{w.port}/healthz") as r:
            health = await r.json()
            assert r.status == 200 and health["sessions"] == 1 and health["capacity"] == 1
        async with http.get(f"http://127.0.0.1:{w.port}/metrics") as r:
            text = await r.text()
            assert "microturn_active_sessions 1.0" in text
            assert "microturn_worker_capacity 1.0" in text
            assert "s1" not in text  # never a session id as a label

    closed = await edge.close("wa", "s1")
    assert closed.ok
    assert await edge.registry.sessions_of("wa") == set()
    assert (await edge.close("wa", "s1")).ok  # idempotent
    assert (await edge.open("wa", "s2")).ok  # the slot is free again
    w.proc.send_signal(signal.SIGTERM)


async def test_sigterm_drains_hands_sessions_back_and_exits_0(
    redis_server: RedisServer, edge: Edge, procs: list[WorkerProc], tmp_path: Path
) -> None:
    w = WorkerProc(redis_server.url, tmp_path, "wd", max_sessions=2, drain_s=2)
    procs.append(w)
    await edge.wait_live("wd", w)
    assert await edge.registry.reserve("s1") == "wd"
    assert (await edge.open("wd", "s1")).ok
    outs = edge.bus.subscribe(keys.outputs("s1"))
    await outs.ready()
    await edge.bus.publish_struct(keys.inputs("wd"), turn_input("s1", 0))
    async with asyncio.timeout(60):
        first = msgspec.msgpack.decode(await outs.get(), type=MicroTurnOutput)
    assert first.turn == 0 and not first.error

    w.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):  # the registry hears it first: no new placements
        while not any(i.draining for i in await edge.registry.live()):
            await asyncio.sleep(0.05)
    assert await edge.registry.reserve("s2") is None  # its one free slot is not offered
    refused = await edge.open("wd", "s3")  # an edge that placed before the drain
    assert (refused.ok, refused.code) == (False, "draining")
    assert w.proc.poll() is None  # s1 goes on until the deadline

    async with asyncio.timeout(60):
        while True:
            last = msgspec.msgpack.decode(await outs.get(), type=MicroTurnOutput)
            if last.error:
                break
    assert last.error == WORKER_DRAINING and last.session_id == "s1"
    assert w.proc.wait(60) == 0, w.log()
    assert await edge.registry.live() == []
    assert await edge.registry.sessions_of("wd") == set()
    assert "worker.session_handed_back" in w.log()


async def test_a_reservation_whose_open_never_comes_is_released(redis_server: RedisServer) -> None:
    """An edge that reserved a slot and died before sending the open must not leak the slot."""
    from model.config import get_preset  # noqa: F401 - torch loads here, not at collection
    from model.engine import Engine
    from model.interaction import InteractionModel
    from model.service import ServiceSettings, WorkerService
    from model.tokenizer import Tokenizer
    from tests.model.conftest import micro_config

    cfg = micro_config()
    engine = Engine(InteractionModel(cfg).eval(), Tokenizer.default(cfg.vocab_size), 2)
    rs = RedisSettings.from_dsn(redis_server.url, block_ms=200)
    bus, r = RedisBus(rs), rs.client()
    svc = WorkerService(
        engine, bus, WorkerRegistry(r, ttl_s=0.6), ServiceSettings(worker_id="wr", ttl_s=0.6, reserve_grace_s=0.5)
    )
    edge_r = aioredis.Redis.from_url(redis_server.url)
    reg = WorkerRegistry(edge_r, ttl_s=0.6)
    try:
        await svc.start()
        assert await reg.reserve("ghost") == "wr"
        assert await reg.reserve("ghost2") == "wr"
        assert await reg.reserve("nope") is None  # full: two reservations on two slots
        async with asyncio.timeout(10):
            while await reg.sessions_of("wr"):
                await asyncio.sleep(0.05)
        assert await reg.reserve("real") == "wr"
    finally:
        await svc.stop()
        await bus.close()
        await r.aclose()
        await edge_r.aclose()


async def test_after_a_redis_restart_the_worker_is_placeable_again_with_its_sessions(
    redis_server: RedisServer,
) -> None:
    """A Redis restart without persistence forgets the registry: the next heartbeats put the
    worker back, its open sessions counted, and control requests reach it again."""
    from model.engine import Engine
    from model.interaction import InteractionModel
    from model.service import ServiceSettings, WorkerService
    from model.tokenizer import Tokenizer
    from tests.model.conftest import micro_config

    cfg = micro_config()
    engine = Engine(InteractionModel(cfg).eval(), Tokenizer.default(cfg.vocab_size), 2)
    rs = RedisSettings.from_dsn(redis_server.url, block_ms=200, backoff_max_s=0.2)
    bus, r = RedisBus(rs), rs.client()
    svc = WorkerService(engine, bus, WorkerRegistry(r, ttl_s=0.6), ServiceSettings(worker_id="wr", ttl_s=0.6))
    edge = Edge(redis_server.url)
    try:
        await svc.start()
        assert (await edge.open("wr", "s1")).ok
        redis_server.restart()
        async with asyncio.timeout(20):
            while [(w.worker_id, w.sessions) for w in await edge.registry.live()] != [("wr", 1)]:
                await asyncio.sleep(0.1)
        assert await edge.registry.reserve("s2") == "wr"
        assert await edge.registry.reserve("s3") is None  # s1 still holds the other slot
        async with asyncio.timeout(20):  # the control stream is read again (the request may need a retry
            while True:  # while the reader is still backing off)
                with contextlib.suppress(TimeoutError, BusUnavailable):  # a stale pooled connection
                    if (await edge.open("wr", "s2", timeout=1)).ok:
                        break
        assert svc.sessions() == {"s1", "s2"}
    finally:
        await svc.stop()
        await edge.aclose()
        await bus.close()
        await r.aclose()
