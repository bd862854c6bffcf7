"""One contract, two task queues: MemoryTaskQueue and RedisTaskQueue on a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from infra.messages import BackgroundTask, ChatMessage
from infra.redis_bus import RedisSettings
from infra.taskqueue import MemoryTaskQueue, QueueFull, RedisTaskQueue, TaskQueue
from tests.redis_server import RedisServer


@pytest.fixture(params=["memory", "redis"])
async def queue(request: pytest.FixtureRequest) -> AsyncIterator[TaskQueue]:
    if request.param == "memory":
        q: TaskQueue = MemoryTaskQueue(max_tasks=50)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        q = RedisTaskQueue(RedisSettings.from_dsn(server.url), max_tasks=50)
    yield q
    await q.close()


def task(i: int, session: str = "s1") -> BackgroundTask:
    return BackgroundTask(
        task_id=f"t{i}", session_id=session, messages=[ChatMessage("user", f"ask {i}")], created_at=time.time()
    )


async def test_each_task_goes_to_one_consumer_in_order(queue: TaskQueue) -> None:
    for i in range(3):
        await queue.submit(task(i))
    got = await queue.read("a", count=2, block_s=0.1)
    assert [d.task.task_id for d in got] == ["t0", "t1"]
    assert all(d.deliveries == 1 for d in got)
    got_b = await queue.read("b", count=10, block_s=0.1)
    assert [d.task.task_id for d in got_b] == ["t2"]
    assert await queue.read("b", count=10, block_s=0.1) == []
    assert await queue.pending() == 3


async def test_task_round_trips_intact(queue: TaskQueue) -> None:
    t = BackgroundTask(
        task_id="x",
        session_id="s",
        messages=[ChatMessage("system", "be brief"), ChatMessage("user", "what is 2+2? é")],
        created_at=123.5,
        source="delegate",
        timezone="Europe/Paris",
    )
    await queue.submit(t)
    [d] = await queue.read("a", count=1, block_s=0.1)
    assert d.task == t


async def test_read_waits_for_a_submit(queue: TaskQueue) -> None:
    reader = asyncio.create_task(queue.read("a", count=1, block_s=5))
    await asyncio.sleep(0.1)
    assert not reader.done()
    await queue.submit(task(1))
    [d] = await asyncio.wait_for(reader, 5)
    assert d.task.task_id == "t1"


async def test_acked_task_is_never_handed_out_again(queue: TaskQueue) -> None:
    await queue.submit(task(1))
    [d] = await queue.read("a", count=1, block_s=0.1)
    await queue.ack(d.entry_id)
    assert await queue.pending() == 0
    await asyncio.sleep(0.05)
    assert await queue.reclaim("b", min_idle_s=0.0, count=10) == []
    assert await queue.read("b", count=10, block_s=0.1) == []


async def test_abandoned_task_is_reclaimed_with_its_delivery_count(queue: TaskQueue) -> None:
    await queue.submit(task(1))
    [d] = await queue.read("dead-agent", count=1, block_s=0.1)
    assert await queue.reclaim("b", min_idle_s=0.2, count=10) == []  # not idle long enough yet
    await asyncio.sleep(0.25)
    [r] = await queue.reclaim("b", min_idle_s=0.2, count=10)
    assert (r.entry_id, r.task, r.deliveries) == (d.entry_id, d.task, 2)
    await asyncio.sleep(0.25)
    # the cursor wrapped or not, a second reclaim finds it again (b died too)
    found = await queue.reclaim("c", min_idle_s=0.2, count=10) or await queue.reclaim("c", min_idle_s=0.2, count=10)
    assert [(x.entry_id, x.deliveries) for x in found] == [(d.entry_id, 3)]
    await queue.ack(d.entry_id)
    assert await queue.pending() == 0


async def test_touch_keeps_a_live_consumer_task(queue: TaskQueue) -> None:
    await queue.submit(task(1))
    [d] = await queue.read("a", count=1, block_s=0.1)
    for _ in range(3):
        await asyncio.sleep(0.1)
        await queue.touch("a", [d.entry_id])
    assert await queue.reclaim("b", min_idle_s=0.2, count=10) == []
    assert await queue.reclaim("b", min_idle_s=0.2, count=10) == []


async def test_release_hands_the_task_to_the_next_reader(queue: TaskQueue) -> None:
    await queue.submit(task(1))
    [d] = await queue.read("a", count=1, block_s=0.1)
    await queue.release(d)
    [r] = await queue.read("b", count=1, block_s=1)
    assert r.task == d.task and r.deliveries == 1
    assert await queue.pending() == 1


async def test_dead_letters_keep_the_task_and_reason(queue: TaskQueue) -> None:
    await queue.submit(task(1))
    [d] = await queue.read("a", count=1, block_s=0.1)
    await queue.dead_letter(d, "backend failed 3 times: boom")
    await queue.ack(d.entry_id)
    [dl] = await queue.dead_letters()
    assert (dl.entry_id, dl.task, dl.reason, dl.deliveries) == (d.entry_id, d.task, "backend failed 3 times: boom", 1)


async def test_queue_is_bounded(queue: TaskQueue) -> None:
    for i in range(50):
        await queue.submit(task(i))
    with pytest.raises(QueueFull):
        await queue.submit(task(99))


async def test_trim_never_drops_an_unacked_task(queue: TaskQueue) -> None:
    for i in range(10):
        await queue.submit(task(i))
    got = await queue.read("a", count=6, block_s=0.1)  # t0..t5 pending
    for d in got:
        if d.task.task_id in ("t0", "t1", "t3"):
            await queue.ack(d.entry_id)
    await queue.trim()
    # t2, t4, t5 are still pending (reclaimable), t6..t9 still to be read
    await asyncio.sleep(0.05)
    reclaimed: list[str] = []
    for _ in range(2):  # at most one cursor wrap
        reclaimed += [d.task.task_id for d in await queue.reclaim("b", min_idle_s=0.0, count=10)]
    assert sorted(set(reclaimed)) == ["t2", "t4", "t5"]
    assert [d.task.task_id for d in await queue.read("b", count=10, block_s=0.1)] == ["t6", "t7", "t8", "t9"]
