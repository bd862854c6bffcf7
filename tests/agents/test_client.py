"""BackgroundClient: what the session sees is de-duplicated and in order, and nothing it
submitted is forgotten; plus the in-process agent `microturn serve` runs and the settings."""

from __future__ import annotations

import asyncio

import pytest

from agents.client import BackgroundClient
from agents.local import start_local_agent
from agents.settings import AgentSettings
from infra import keys
from infra.bus import MemoryBus
from infra.messages import TaskEvent
from infra.taskqueue import MemoryTaskQueue
from tests.agents.conftest import Stack, ask, collect


async def publish(stack: Stack, session: str, *events: TaskEvent) -> None:
    for ev in events:
        await stack.bus.publish_struct(keys.bg_results(session), ev)


def delta(seq: int, text: str, task_id: str = "t1") -> TaskEvent:
    return TaskEvent(task_id=task_id, seq=seq, kind="delta", text=text)


async def test_results_are_deduplicated_and_ordered(stack: Stack) -> None:
    client = BackgroundClient(stack.bus, stack.queue)
    stream = client.results("s1")
    await stream.ready()
    done = TaskEvent(task_id="t1", seq=3, kind="done")
    await publish(
        stack, "s1",
        delta(0, "a "), delta(2, "c "), delta(0, "a "), done, delta(1, "b "),  # out of order, a repeat
        delta(1, "b "), delta(2, "c "), done,  # a retry re-streaming everything
        delta(0, "x ", "t2"), TaskEvent(task_id="t2", seq=1, kind="done"),
    )  # fmt: skip
    events = await collect(stream, {"t1", "t2"}, timeout=5)
    assert [(e.task_id, e.seq, e.kind) for e in events] == [
        ("t1", 0, "delta"), ("t1", 1, "delta"), ("t1", 2, "delta"), ("t1", 3, "done"),
        ("t2", 0, "delta"), ("t2", 1, "done"),
    ]  # fmt: skip
    assert stream.duplicates == 4
    stream.close()
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    assert client._streams == {}
    await client.aclose()


async def test_failed_ends_a_task_whatever_its_seq(stack: Stack) -> None:
    client = BackgroundClient(stack.bus, stack.queue)
    stream = client.results("s1")
    await stream.ready()
    failed = TaskEvent(task_id="t1", seq=1, kind="failed", error="boom")
    # a sent 0..2, the agent that took over failed at its seq 1: still the end of the task
    await publish(stack, "s1", delta(0, "a "), delta(1, "b "), delta(2, "c "), failed, delta(3, "late "))
    events = await collect(stream, {"t1"}, timeout=5)
    assert [(e.seq, e.kind) for e in events] == [(0, "delta"), (1, "delta"), (2, "delta"), (1, "failed")]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(stream.__anext__(), 0.2)
    await client.aclose()


async def test_sessions_do_not_see_each_other(stack: Stack) -> None:
    client = BackgroundClient(stack.bus, stack.queue)
    s1, s2 = client.results("s1"), client.results("s2")
    await s1.ready()
    await s2.ready()
    await publish(stack, "s2", delta(0, "for s2 "))
    assert (await asyncio.wait_for(s2.__anext__(), 5)).text == "for s2 "
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(s1.__anext__(), 0.2)
    await client.aclose()


async def test_unanswered_task_is_resubmitted_then_failed_locally() -> None:
    bus, queue = MemoryBus(), MemoryTaskQueue()
    client = BackgroundClient(bus, queue, stall_s=0.2, max_resubmits=2, check_every_s=0.05)
    stream = client.results("s1")
    await client.submit(ask("anyone there?", "t1"))  # no agent runs
    events = await collect(stream, {"t1"}, timeout=5)
    assert [(e.kind, e.error) for e in events] == [("failed", "no background agent answered; try again")]
    assert client.resubmitted == 2
    assert [d.task.task_id for d in await queue.read("x", 10, 0.1)] == ["t1", "t1", "t1"]
    assert client.open_tasks == 0
    await client.aclose()


async def test_progress_keeps_a_slow_task_from_being_resubmitted() -> None:
    bus, queue = MemoryBus(), MemoryTaskQueue()
    client = BackgroundClient(bus, queue, stall_s=0.3, check_every_s=0.05)
    stream = client.results("s1")
    await client.submit(ask("slow", "t1"))
    for i in range(8):  # a delta every 0.1 s: never stalled
        await bus.publish_struct(keys.bg_results("s1"), delta(i, "x "))
        await asyncio.wait_for(stream.__anext__(), 5)
        await asyncio.sleep(0.1)
    assert client.resubmitted == 0
    await client.aclose()


async def test_local_agent_answers_with_the_tools_backend() -> None:
    bus = MemoryBus()
    agent = await start_local_agent(bus)
    try:
        stream = agent.client.results("s1")
        await stream.ready()
        await agent.client.submit(ask("what is 2**100 + 1/3?", "t1"))
        events = await collect(stream, {"t1"}, timeout=10)
        assert events[-1].kind == "done"
        assert f"{3 * 2**100 + 1}/3" in "".join(e.text for e in events)  # exact, not a float
    finally:
        await agent.aclose()
        await bus.close()


def test_settings_from_env_and_flags() -> None:
    env = {
        "MICROTURN_REDIS_URL": "redis://r:6379/0",
        "MICROTURN_AGENT_CONCURRENCY": "8",
        "MICROTURN_AGENT_TASK_TIMEOUT_S": "2.5",
        "MICROTURN_AGENT_BACKEND": "openai",
    }
    s = AgentSettings.from_env(env, concurrency=None, consumer="c1")
    assert (s.redis_url, s.concurrency, s.task_timeout_s, s.backend, s.consumer) == (
        "redis://r:6379/0", 8, 2.5, "openai", "c1",
    )  # fmt: skip
    assert AgentSettings.from_env(env, concurrency=3).concurrency == 3
    with pytest.raises(ValueError, match="MICROTURN_AGENT_CONCURRENCY"):
        AgentSettings.from_env({"MICROTURN_AGENT_CONCURRENCY": "many"})
    with pytest.raises(ValueError):
        AgentSettings(concurrency=0)
    assert AgentSettings.from_dsn("redis://h/1", concurrency=2).redis_url == "redis://h/1"
