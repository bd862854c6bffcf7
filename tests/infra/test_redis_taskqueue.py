"""What only the Redis task queue has: real trimming, the group surviving a restart."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from infra import keys
from infra.bus import BusUnavailable
from infra.messages import BackgroundTask, ChatMessage
from infra.redis_bus import RedisSettings
from infra.taskqueue import RedisTaskQueue
from tests.redis_server import RedisServer


def task(i: int) -> BackgroundTask:
    return BackgroundTask(task_id=f"t{i}", session_id="s", messages=[ChatMessage("user", "q")], created_at=time.time())


async def test_trim_drops_acked_entries_only(redis_server: RedisServer) -> None:
    q = RedisTaskQueue(RedisSettings.from_dsn(redis_server.url))
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        for i in range(10):
            await q.submit(task(i))
        got = await q.read("a", count=6, block_s=0.1)
        for d in got[:2] + got[3:4]:  # ack t0, t1, t3; t2 stays pending
            await q.ack(d.entry_id)
        assert await q.trim() == 2  # t0, t1: everything before the oldest pending entry
        assert await r.xlen(keys.bg_tasks()) == 8
        for d in got[2:3] + got[4:]:
            await q.ack(d.entry_id)
        # nothing pending: trimmed up to the last delivered entry (t5 itself is kept)
        assert await q.trim() == 3  # t2, t3, t4
        left = await r.xrange(keys.bg_tasks())
        assert left[0][0].decode() == got[5].entry_id
        assert len(left) == 5  # t5 (acked, kept as the marker) + t6..t9 never delivered
    finally:
        await r.aclose()
        await q.close()


async def test_restart_is_seen_and_the_group_comes_back(redis_server: RedisServer) -> None:
    q = RedisTaskQueue(RedisSettings.from_dsn(redis_server.url))
    try:
        g0 = await q.generation()
        await q.submit(task(1))
        redis_server.stop(kill=True)
        with pytest.raises(BusUnavailable):
            await q.submit(task(2))
        assert await q.generation() == g0  # down: unknown, unchanged
        redis_server.start()
        assert await q.generation() == g0 + 1
        assert await q.generation() == g0 + 1
        # the stream and group are gone with the old server; reads recreate them
        assert await q.read("a", count=10, block_s=0.1) == []
        await q.submit(task(3))
        [d] = await q.read("a", count=10, block_s=0.1)
        assert d.task.task_id == "t3"
    finally:
        await q.close()


async def test_group_deleted_under_a_blocked_reader(redis_server: RedisServer) -> None:
    q = RedisTaskQueue(RedisSettings.from_dsn(redis_server.url))
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await q.read("a", count=1, block_s=0.05) == []
        await r.delete(keys.bg_tasks())
        await q.submit(task(1))  # a fresh stream, no group: NOGROUP is handled
        reader = await asyncio.wait_for(q.read("a", count=1, block_s=0.5), 5)
        assert [d.task.task_id for d in reader] == ["t1"]
    finally:
        await r.aclose()
        await q.close()
