"""BackgroundClient against a real redis-server that restarts right after a submission, before
the client's watchdog ever looked: the task the old server took with it is re-sent."""

from __future__ import annotations

import asyncio

import pytest

from agents.client import BackgroundClient
from agents.local import start_local_agent
from agents.settings import AgentSettings
from infra.bus import BusUnavailable
from infra.redis_bus import RedisBus, RedisSettings
from infra.taskqueue import RedisTaskQueue
from tests.agents.conftest import ask, collect, text_of
from tests.agents.fake_backends import EchoBackend
from tests.redis_server import RedisServer


async def test_restart_before_the_first_watchdog_look_is_noticed(redis_server: RedisServer) -> None:
    rs = RedisSettings.from_dsn(redis_server.url, block_ms=200, backoff_max_s=0.2)
    bus, queue = RedisBus(rs), RedisTaskQueue(rs)
    # the watchdog's first look comes 2 s after the submission, long after the restart
    client = BackgroundClient(bus, queue, stall_s=60.0, check_every_s=2.0)
    agent_bus, agent_queue = RedisBus(rs), RedisTaskQueue(rs)
    try:
        stream = client.results("s1")
        await stream.ready()
        await client.submit(ask("still here", "t1"))
        await asyncio.to_thread(redis_server.restart)  # the queued task is gone with the server
        agent = await start_local_agent(
            agent_bus, agent_queue, backend=lambda fire: EchoBackend(), settings=AgentSettings(read_block_s=0.2)
        )
        try:
            events = await collect(stream, {"t1"}, timeout=15)
        finally:
            await agent.aclose()
        assert [e.kind for e in events][-1] == "done"
        assert text_of(events, "t1") == "still here "
        assert client.restarts_seen == 1 and client.resubmitted == 1
    finally:
        await client.aclose()
        await bus.close()
        await queue.close()
        await agent_bus.close()


async def test_a_task_queued_before_the_server_was_identified_is_re_sent(redis_server: RedisServer) -> None:
    """Redis down at the first submission (the client's look at the server fails, the task is
    refused); back for the next one, which goes in before anyone learned which server took
    it; then a restart. The queue counts the first server it sees after such an entry as a
    restart, so the task is re-sent."""
    rs = RedisSettings.from_dsn(redis_server.url, block_ms=200, backoff_max_s=0.2, connect_timeout_s=0.5)
    bus, queue = RedisBus(rs), RedisTaskQueue(rs)
    client = BackgroundClient(bus, queue, stall_s=60.0, check_every_s=2.0)
    agent_bus, agent_queue = RedisBus(rs), RedisTaskQueue(rs)
    try:
        stream = client.results("s1")
        await stream.ready()
        await asyncio.to_thread(redis_server.stop, True)
        with pytest.raises(BusUnavailable):
            await client.submit(ask("too early", "t0"))
        await asyncio.to_thread(redis_server.start)
        await client.submit(ask("still here", "t1"))
        await asyncio.to_thread(redis_server.restart)
        agent = await start_local_agent(
            agent_bus, agent_queue, backend=lambda fire: EchoBackend(), settings=AgentSettings(read_block_s=0.2)
        )
        try:
            events = await collect(stream, {"t1"}, timeout=15)
        finally:
            await agent.aclose()
        assert [e.kind for e in events][-1] == "done"
        assert text_of(events, "t1") == "still here "
        assert client.resubmitted == 1
    finally:
        await client.aclose()
        await bus.close()
        await queue.close()
        await agent_bus.close()
