"""WorkerRegistry against a real redis-server: placement, expiry, drain, no overbooking."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from infra import keys
from infra.registry import WorkerRegistry
from tests.redis_server import RedisServer

Clients = Callable[[], aioredis.Redis]


@pytest.fixture
async def connect(redis_server: RedisServer) -> AsyncIterator[Clients]:
    """Each call: a new client (its own connection pool), like another process."""
    made: list[aioredis.Redis] = []

    def new() -> aioredis.Redis:
        c = aioredis.Redis.from_url(redis_server.url)
        made.append(c)
        return c

    yield new
    for c in made:
        await c.aclose()


async def test_reserve_picks_least_loaded_then_lowest_id_and_release_frees(connect: Clients) -> None:
    reg = WorkerRegistry(connect(), ttl_s=5)
    await reg.register("w2", 2)
    await reg.register("w1", 2)
    assert await reg.reserve("s1") == "w1"  # tie: lowest id
    assert await reg.reserve("s2") == "w2"  # least loaded
    assert await reg.reserve("s1") == "w1"  # retried placement: the same worker, no second slot
    assert await reg.reserve("s3") == "w1"
    assert await reg.reserve("s4") == "w2"
    assert await reg.reserve("s5") is None  # 2 + 2 slots taken
    assert await reg.sessions_of("w1") == {"s1", "s3"}
    await reg.release("w1", "s3")
    assert await reg.reserve("s5") == "w1"
    assert await reg.reserve("s6", exclude=("w1",)) is None
    info = {w.worker_id: w for w in await reg.live()}
    assert info["w1"].sessions == 2 and info["w1"].capacity == 2 and not info["w1"].draining


async def test_exclude_skips_a_worker(connect: Clients) -> None:
    reg = WorkerRegistry(connect(), ttl_s=5)
    await reg.register("a", 4)
    await reg.register("b", 4)
    assert await reg.reserve("s1", exclude=("a",)) == "b"
    assert await reg.reserve("s2", exclude=("a", "b")) is None


async def test_a_dead_workers_heartbeat_expires_and_it_leaves_placement(connect: Clients) -> None:
    dead = WorkerRegistry(connect(), ttl_s=0.3)  # registers, then never beats again
    reg = WorkerRegistry(connect(), ttl_s=30)
    await dead.register("dead", 8)
    await reg.register("alive", 1)
    assert {w.worker_id for w in await reg.live()} == {"dead", "alive"}
    async with asyncio.timeout(10):
        while len(await reg.live()) > 1:
            await asyncio.sleep(0.05)
    assert [w.worker_id for w in await reg.live()] == ["alive"]
    assert await reg.reserve("s1") == "alive"
    assert await reg.reserve("s2") is None  # "dead" had 8 free slots, but it is gone
    r = connect()
    assert await r.sismember(keys.workers(), "dead") == 0


async def test_draining_is_not_placed_on_and_a_heartbeat_revives_a_lost_entry(connect: Clients) -> None:
    reg = WorkerRegistry(connect(), ttl_s=5)
    await reg.register("w1", 4)
    await reg.register("w2", 4)
    await reg.reserve("x")  # w1
    await reg.heartbeat("w2", draining=True)
    assert await reg.reserve("s1") == "w1"  # w2 is emptier but draining
    assert [w.draining for w in await reg.live()] == [False, True]
    await reg.heartbeat("w2", draining=False)
    assert await reg.reserve("s2") == "w2"
    # the hash lost (a Redis restart, a long pause): the next beat puts the worker back whole
    r = connect()
    await r.delete(keys.worker("w1"), keys.worker_sessions("w1"))
    await reg.heartbeat("w1", sessions=("x", "s1"))
    info = {w.worker_id: w for w in await reg.live()}
    assert info["w1"].capacity == 4 and info["w1"].sessions == 2


async def test_deregister_removes_the_worker(connect: Clients) -> None:
    reg = WorkerRegistry(connect(), ttl_s=5)
    await reg.register("w1", 1)
    await reg.reserve("s")
    await reg.deregister("w1")
    assert await reg.live() == []
    assert await reg.sessions_of("w1") == set()
    assert await reg.reserve("t") is None


async def _place(regs: list[WorkerRegistry], n: int) -> list[str | None]:
    # interleave two edges' placements; each reserve is its own round trip
    return list(await asyncio.gather(*(regs[i % 2].reserve(f"s{i}") for i in range(n))))


async def test_two_edges_placing_50_sessions_concurrently_never_overbook(connect: Clients) -> None:
    await WorkerRegistry(connect()).register("w0", 10)
    worker_reg = WorkerRegistry(connect())
    await worker_reg.register("w1", 10)
    await worker_reg.register("w2", 10)
    # tight: 50 asks for 30 slots; the extras get None
    edges = [WorkerRegistry(connect()), WorkerRegistry(connect())]
    placed = await _place(edges, 50)
    counts = Counter(w for w in placed if w is not None)
    assert counts == {"w0": 10, "w1": 10, "w2": 10}
    assert placed.count(None) == 20
    for w in ("w0", "w1", "w2"):
        got = await worker_reg.sessions_of(w)
        assert len(got) == 10
        assert got == {f"s{i}" for i, p in enumerate(placed) if p == w}


async def test_two_edges_placing_50_sessions_with_room_spread_them(connect: Clients) -> None:
    reg = WorkerRegistry(connect())
    for w, cap in (("w0", 20), ("w1", 20), ("w2", 20)):
        await reg.register(w, cap)
    placed = await _place([WorkerRegistry(connect()), WorkerRegistry(connect())], 50)
    assert None not in placed
    counts = Counter(placed)
    # least-loaded placement: the loads never differ by more than one
    assert sorted(counts.values()) == [16, 17, 17]
    assert [len(await reg.sessions_of(w)) for w in ("w0", "w1", "w2")] == [counts[w] for w in ("w0", "w1", "w2")]
