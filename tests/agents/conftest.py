"""Bus + task queue pairs for agent tests: in memory, and on a real redis-server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from agents.client import ResultStream
from infra.bus import Bus, MemoryBus
from infra.messages import BackgroundTask, ChatMessage, TaskEvent
from infra.redis_bus import RedisBus, RedisSettings
from infra.taskqueue import MemoryTaskQueue, RedisTaskQueue, TaskQueue
from tests.redis_server import RedisServer


@dataclass
class Stack:
    kind: str
    bus: Bus
    queue: TaskQueue
    url: str | None = None


@pytest.fixture(params=["memory", "redis"])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    if request.param == "memory":
        s = Stack("memory", MemoryBus(), MemoryTaskQueue())
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        rs = RedisSettings.from_dsn(server.url, block_ms=200, backoff_max_s=0.2)
        s = Stack("redis", RedisBus(rs), RedisTaskQueue(rs), server.url)
    yield s
    await s.bus.close()
    await s.queue.close()


def ask(text: str, task_id: str = "t1", session_id: str = "s1") -> BackgroundTask:
    return BackgroundTask(
        task_id=task_id, session_id=session_id, messages=[ChatMessage("user", text)], created_at=time.time()
    )


async def collect(stream: ResultStream, task_ids: set[str], timeout: float = 10.0) -> list[TaskEvent]:
    """Events until every task in `task_ids` is done or failed."""
    import asyncio

    got: list[TaskEvent] = []
    left = set(task_ids)
    async with asyncio.timeout(timeout):
        async for ev in stream:
            got.append(ev)
            if ev.kind in ("done", "failed"):
                left.discard(ev.task_id)
                if not left:
                    return got
    return got


def text_of(events: list[TaskEvent], task_id: str) -> str:
    return "".join(e.text for e in events if e.task_id == task_id and e.kind == "delta")
