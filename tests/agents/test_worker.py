"""AgentWorker against MemoryBus/MemoryTaskQueue and RedisBus/RedisTaskQueue (real server),
with the small backends of tests/agents/fake_backends.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from agents.client import BackgroundClient, ResultStream
from agents.settings import AgentSettings
from agents.worker import AgentWorker
from tests.agents.conftest import Stack, ask, collect, text_of
from tests.agents.fake_backends import EchoBackend, FailBackend, FlakyBackend, HangBackend

FAST = dict(retry_backoff_s=0.01, reclaim_every_s=0.05, read_block_s=0.1, give_up_s=2.0, drain_s=1.0)


def worker(stack: Stack, backend: EchoBackend, name: str = "a", **kw: object) -> AgentWorker:
    settings = AgentSettings(consumer=name, **{**FAST, **kw})  # type: ignore[arg-type]
    return AgentWorker(stack.queue, stack.bus, lambda fire: backend, settings)


@contextlib.asynccontextmanager
async def running(stack: Stack, w: AgentWorker) -> AsyncIterator[tuple[BackgroundClient, ResultStream]]:
    """`w` started, a client, and session s1's result stream ready; all of it stopped after."""
    client = BackgroundClient(stack.bus, stack.queue)
    await w.start()
    try:
        stream = client.results("s1")
        await stream.ready()
        yield client, stream
    finally:
        await client.aclose()
        await w.stop()


async def test_answer_streams_in_order_and_is_acked(stack: Stack) -> None:
    backend = EchoBackend()
    w = worker(stack, backend)
    async with running(stack, w) as (client, stream):
        await client.submit(ask("one two three four", "t1"))
        await client.submit(ask("five six", "t2"))
        events = await collect(stream, {"t1", "t2"})
        t1 = [e for e in events if e.task_id == "t1"]
        assert [(e.seq, e.kind, e.text) for e in t1] == [
            (0, "delta", "one "),
            (1, "delta", "two "),
            (2, "delta", "three "),
            (3, "delta", "four "),
            (4, "done", ""),
        ]
        assert text_of(events, "t2") == "five six "
        await asyncio.sleep(0.05)
        assert await stack.queue.pending() == 0
        assert client.open_tasks == 0
        assert w.stats.done == 2
    assert backend.closed


async def test_concurrency_is_bounded(stack: Stack) -> None:
    backend = EchoBackend(delay_s=0.02)
    w = worker(stack, backend, concurrency=2)
    client = BackgroundClient(stack.bus, stack.queue)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, w.running)
            await asyncio.sleep(0.005)

    await w.start()
    watcher = asyncio.create_task(watch())
    try:
        stream = client.results("s1")
        await stream.ready()
        ids = {f"t{i}" for i in range(6)}
        for tid in sorted(ids):
            await client.submit(ask("a b c d", tid))
        events = await collect(stream, ids, timeout=20)
        assert all(text_of(events, tid) == "a b c d " for tid in ids)
        assert peak == 2
    finally:
        watcher.cancel()
        await client.aclose()
        await w.stop()


async def test_retry_never_repeats_text_at_the_session(stack: Stack) -> None:
    backend = FlakyBackend()
    w = worker(stack, backend, max_attempts=3)
    async with running(stack, w) as (client, stream):
        await client.submit(ask("alpha beta gamma delta", "t1"))
        events = await collect(stream, {"t1"})
        # attempt 1 sent "alpha beta " then failed; attempt 2 sent everything again from seq 0
        assert backend.runs == ["t1", "t1"]
        assert text_of(events, "t1") == "alpha beta gamma delta "
        assert [e.seq for e in events] == [0, 1, 2, 3, 4]
        assert stream.duplicates == 2
        assert w.stats.retries == 1
        assert await stack.queue.dead_letters() == []


@pytest.mark.parametrize("failure", ["error", "timeout"])
async def test_failing_backend_is_dead_lettered_and_reported(stack: Stack, failure: str) -> None:
    backend: EchoBackend = FailBackend() if failure == "error" else HangBackend()
    w = worker(stack, backend, max_attempts=2, task_timeout_s=0.3)
    async with running(stack, w) as (client, stream):
        await client.submit(ask("please", "t1"))
        events = await collect(stream, {"t1"})
        word = "hmm " if failure == "error" else "thinking "
        assert [(e.kind, e.text) for e in events[:-1]] == [("delta", word)]  # said once, not per attempt
        last = events[-1]
        assert last.kind == "failed"
        assert last.error == ("the upstream model said no" if failure == "error" else "no answer within 0.3 s")
        assert backend.runs == ["t1", "t1"]
        [dead] = await stack.queue.dead_letters()
        assert dead.task.task_id == "t1" and dead.reason == last.error
        await asyncio.sleep(0.05)
        assert await stack.queue.pending() == 0
        assert w.stats.dead_lettered == 1


async def test_cancel_stops_a_running_task(stack: Stack) -> None:
    backend = HangBackend()
    w = worker(stack, backend)
    async with running(stack, w) as (client, stream):
        await client.submit(ask("x", "t1"))
        first = await asyncio.wait_for(stream.__anext__(), 5)
        assert first.text == "thinking "
        await client.cancel("s1", "t1")
        ev = await asyncio.wait_for(stream.__anext__(), 5)
        assert (ev.kind, ev.error) == ("failed", "cancelled")
        await asyncio.sleep(0.05)
        assert w.running == 0 and await stack.queue.pending() == 0
        assert await stack.queue.dead_letters() == []


async def test_cancel_from_another_session_is_ignored(stack: Stack) -> None:
    w = worker(stack, HangBackend())
    client = BackgroundClient(stack.bus, stack.queue)
    await w.start()
    try:
        stream = client.results("s1")
        await stream.ready()
        await client.submit(ask("x", "t1"))
        await asyncio.wait_for(stream.__anext__(), 5)
        await client.cancel("intruder", "t1")
        await asyncio.sleep(0.3)
        assert w.running == 1
    finally:
        await client.aclose()
        await w.stop(drain_s=0)


async def test_cancel_before_pickup_skips_the_task(stack: Stack) -> None:
    backend = EchoBackend()
    w = worker(stack, backend)
    client = BackgroundClient(stack.bus, stack.queue)
    await w.start()
    w._loops[0].cancel()  # the worker hears control messages but takes no task yet
    await asyncio.sleep(0.05)
    try:
        stream = client.results("s1")
        await stream.ready()
        await client.submit(ask("never run", "t1"))
        await client.cancel("s1", "t1")
        await asyncio.sleep(0.2)
        w._loops[0] = asyncio.create_task(w._loop())
        events = await collect(stream, {"t1"})
        assert [(e.kind, e.error) for e in events] == [("failed", "cancelled")]
        assert backend.runs == []
    finally:
        await client.aclose()
        await w.stop()


async def test_session_end_stops_its_tasks_quietly_and_tells_the_backend(stack: Stack) -> None:
    backend = HangBackend()
    w = worker(stack, backend)
    async with running(stack, w) as (client, stream):
        await client.submit(ask("x", "t1"))
        await asyncio.wait_for(stream.__anext__(), 5)
        await client.session_ended("s1")
        async with asyncio.timeout(5):
            while backend.ended != ["s1"] or w.running:
                await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):  # no failed event for a session that is gone
            await asyncio.wait_for(stream.__anext__(), 0.3)
        assert await stack.queue.pending() == 0


async def test_dead_agents_task_is_reclaimed(stack: Stack) -> None:
    await stack.queue.submit(ask("left behind here", "t1"))
    [_taken] = await stack.queue.read("dead-agent", 1, 0.1)  # an agent took it, then died
    backend = EchoBackend()
    w = worker(stack, backend, reclaim_idle_s=0.3)
    client = BackgroundClient(stack.bus, stack.queue)
    stream = client.results("s1")
    await stream.ready()
    await w.start()
    try:
        events = await collect(stream, {"t1"})
        assert text_of(events, "t1") == "left behind here "
        assert w.stats.reclaimed == 1
        await asyncio.sleep(0.05)
        assert await stack.queue.pending() == 0
    finally:
        await client.aclose()
        await w.stop()


async def test_a_task_that_keeps_killing_agents_is_dead_lettered(stack: Stack) -> None:
    await stack.queue.submit(ask("poison", "t1"))
    await stack.queue.read("dead-1", 1, 0.1)
    for i in range(2, 4):  # two more agents took it and died
        await asyncio.sleep(0.06)
        got = await stack.queue.reclaim(f"dead-{i}", 0.05, 1) or await stack.queue.reclaim(f"dead-{i}", 0.05, 1)
        assert got[0].deliveries == i
    backend = EchoBackend()
    w = worker(stack, backend, reclaim_idle_s=0.05, max_deliveries=3)
    client = BackgroundClient(stack.bus, stack.queue)
    stream = client.results("s1")
    await stream.ready()
    await w.start()
    try:
        events = await collect(stream, {"t1"})
        assert [e.kind for e in events] == ["failed"]
        assert "3 deliveries" in events[0].error
        assert backend.runs == []  # never run a fourth time
        [dead] = await stack.queue.dead_letters()
        assert dead.deliveries == 4
    finally:
        await client.aclose()
        await w.stop()


async def test_timer_fires_into_the_session(stack: Stack) -> None:
    backend = EchoBackend()
    w = worker(stack, backend)
    async with running(stack, w) as (client, stream):
        assert backend.fire is None
        await w._fire("s1", "Your tea is ready.")
        a = await asyncio.wait_for(stream.__anext__(), 5)
        b = await asyncio.wait_for(stream.__anext__(), 5)
        assert a.task_id.startswith("timer-") and a.task_id == b.task_id
        assert [(a.seq, a.kind, a.text), (b.seq, b.kind)] == [(0, "delta", "Your tea is ready."), (1, "done")]
        await client.session_ended("s1")
        async with asyncio.timeout(5):
            while backend.ended != ["s1"]:
                await asyncio.sleep(0.01)
        await w._fire("s1", "too late")  # after the call ended: nothing
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.__anext__(), 0.2)


async def test_stop_hands_unfinished_tasks_to_another_agent(stack: Stack) -> None:
    a = worker(stack, HangBackend(), "a")
    b_backend = EchoBackend()
    b = worker(stack, b_backend, "b")
    client = BackgroundClient(stack.bus, stack.queue)
    await a.start()
    try:
        stream = client.results("s1")
        await stream.ready()
        await client.submit(ask("finish me", "t1"))
        await asyncio.wait_for(stream.__anext__(), 5)  # a is on it
        await a.stop(drain_s=0.1)
        assert a.stats.released == 1
        await b.start()
        events = await collect(stream, {"t1"})
        assert b_backend.runs == ["t1"]
        assert events[-1].kind == "done"
    finally:
        await client.aclose()
        await b.stop()
