"""One contract, two buses: everything here holds for MemoryBus and for RedisBus on a real
redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from infra.bus import Bus, BusClosed, MemoryBus
from infra.messages import MicroTurnOutput, TaskCancel, TaskEvent
from infra.redis_bus import RedisBus, RedisSettings
from tests.redis_server import RedisServer


@pytest.fixture(params=["memory", "redis"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    if request.param == "memory":
        b: Bus = MemoryBus()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        b = RedisBus(RedisSettings.from_dsn(server.url, block_ms=200))
    yield b
    await b.close()


async def until(cond: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_every_subscriber_gets_every_message_in_order(bus: Bus) -> None:
    a, b = bus.subscribe("t"), bus.subscribe("t")
    other = bus.subscribe("u")
    for i in range(5):
        await bus.publish("t", bytes([i]))
    assert [await a.get(5) for _ in range(5)] == [bytes([i]) for i in range(5)]
    assert [await b.get(5) for _ in range(5)] == [bytes([i]) for i in range(5)]
    with pytest.raises(TimeoutError):
        await other.get(0.3)


async def test_only_messages_published_after_subscribing(bus: Bus) -> None:
    await bus.publish("t", b"before")
    sub = bus.subscribe("t")
    await sub.ready()
    await bus.publish("t", b"after")
    assert await sub.get(5) == b"after"
    with pytest.raises(TimeoutError):
        await sub.get(0.3)


async def test_publish_right_after_subscribe_is_not_missed(bus: Bus) -> None:
    # no ready() here: the bus itself must not lose what follows subscribe()
    sub = bus.subscribe("t")
    await bus.publish("t", b"x")
    assert await sub.get(5) == b"x"


async def test_slow_subscriber_is_bounded_and_keeps_the_newest(bus: Bus) -> None:
    sub = bus.subscribe("t", maxsize=3)
    for i in range(10):
        await bus.publish("t", bytes([i]))
    await until(lambda: sub.dropped == 7)
    assert [await sub.get(5) for _ in range(3)] == [bytes([7]), bytes([8]), bytes([9])]


async def test_close_ends_iteration_and_unsubscribes(bus: Bus) -> None:
    sub = bus.subscribe("t")
    got: list[bytes] = []

    async def consume() -> None:
        async for data in sub:
            got.append(data)

    task = asyncio.create_task(consume())
    await bus.publish("t", b"x")
    await until(lambda: got == [b"x"])
    sub.close()
    await asyncio.wait_for(task, 5)
    await bus.publish("t", b"y")  # no subscriber left: nothing held for it
    assert bus._subs == {}  # type: ignore[attr-defined]
    await bus.close()
    with pytest.raises(BusClosed):
        await bus.publish("t", b"z")
    with pytest.raises(BusClosed):
        bus.subscribe("t")


async def test_bus_close_ends_every_subscription(bus: Bus) -> None:
    subs = [bus.subscribe("t"), bus.subscribe("u")]
    await bus.close()
    for sub in subs:
        with pytest.raises(StopAsyncIteration):
            await sub.__anext__()


async def test_struct_round_trip(bus: Bus) -> None:
    sub = bus.subscribe("o")
    out = MicroTurnOutput(session_id="s", turn=3, audio=b"\x00" * 8, text="hi", text_tokens=[1, 2])
    ev = TaskEvent(task_id="t1", seq=2, kind="delta", text="héllo")
    await bus.publish_struct("o", out)
    await bus.publish_struct("o", ev)
    await bus.publish_struct("o", TaskCancel(task_id="t1", session_id="s"))
    assert msgspec.msgpack.decode(await sub.get(5), type=MicroTurnOutput) == out
    assert msgspec.msgpack.decode(await sub.get(5), type=TaskEvent) == ev
    assert msgspec.msgpack.decode(await sub.get(5), type=TaskCancel) == TaskCancel(task_id="t1", session_id="s")


async def test_many_topics_stay_separate_and_ordered(bus: Bus) -> None:
    subs = {f"s{i}": bus.subscribe(f"s{i}") for i in range(4)}
    for n in range(20):
        for topic in subs:
            await bus.publish(topic, f"{topic}:{n}".encode())
    for topic, sub in subs.items():
        assert [await sub.get(5) for _ in range(20)] == [f"{topic}:{n}".encode() for n in range(20)]
