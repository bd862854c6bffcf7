from __future__ import annotations

import asyncio

import pytest

from infra.bus import BusClosed, MemoryBus
from infra.messages import MicroTurnOutput


async def test_every_subscriber_gets_every_message_in_order() -> None:
    bus = MemoryBus()
    a, b = bus.subscribe("t"), bus.subscribe("t")
    other = bus.subscribe("u")
    for i in range(5):
        await bus.publish("t", bytes([i]))
    assert [await a.get(1) for _ in range(5)] == [bytes([i]) for i in range(5)]
    assert [await b.get(1) for _ in range(5)] == [bytes([i]) for i in range(5)]
    with pytest.raises(TimeoutError):
        await other.get(0.01)


async def test_slow_subscriber_is_bounded_and_keeps_the_newest() -> None:
    bus = MemoryBus()
    sub = bus.subscribe("t", maxsize=3)
    for i in range(10):
        await bus.publish("t", bytes([i]))
    assert sub.dropped == 7
    assert [await sub.get(1) for _ in range(3)] == [bytes([7]), bytes([8]), bytes([9])]


async def test_close_ends_iteration_and_unsubscribes() -> None:
    bus = MemoryBus()
    sub = bus.subscribe("t")
    got: list[bytes] = []

    async def consume() -> None:
        async for data in sub:
            got.append(data)

    task = asyncio.create_task(consume())
    await bus.publish("t", b"x")
    await asyncio.sleep(0)
    sub.close()
    await asyncio.wait_for(task, 1)
    assert got == [b"x"]
    await bus.publish("t", b"y")  # no subscriber left: nothing held
    assert bus._subs == {}
    await bus.close()
    with pytest.raises(BusClosed):
        await bus.publish("t", b"z")


async def test_struct_round_trip() -> None:
    import msgspec

    bus = MemoryBus()
    sub = bus.subscribe("o")
    msg = MicroTurnOutput(session_id="s", turn=3, audio=b"\x00" * 8, text="hi", text_tokens=[1, 2])
    await bus.publish_struct("o", msg)
    assert msgspec.msgpack.decode(await sub.get(1), type=MicroTurnOutput) == msg
