"""Agents as real `python -m agents.cli` subprocesses against a real redis-server: kill -9
mid-task, a Redis restart mid-task, a failing backend, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agents.client import BackgroundClient, ResultStream
from infra.messages import TaskEvent
from infra.redis_bus import RedisBus, RedisSettings
from infra.taskqueue import RedisTaskQueue
from tests.agents.conftest import ask, collect, text_of
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
ANSWER = " ".join(f"w{i}" for i in range(12))  # 12 words, MICROTURN_TEST_DELAY_S apart
FULL = "".join(f"w{i} " for i in range(12))

pytestmark = pytest.mark.slow


class Agents:
    """Starts agent processes; every one still running is killed at teardown."""

    def __init__(self, url: str, logdir: Path) -> None:
        self.url = url
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, backend: str = "tests.agents.fake_backends:slow_echo", **env: str
    ) -> subprocess.Popen[bytes]:
        e = {
            **os.environ,
            "MICROTURN_TEST_DELAY_S": "0.15",
            "MICROTURN_AGENT_RECLAIM_IDLE_S": "1.0",
            "MICROTURN_AGENT_RECLAIM_EVERY_S": "0.2",
            "MICROTURN_AGENT_READ_BLOCK_S": "0.2",
            "MICROTURN_AGENT_RETRY_BACKOFF_S": "0.05",
            **env,
        }
        e.pop("MICROTURN_AGENT_BACKEND", None)
        log = open(self.logdir / f"agent-{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agents.cli",
                "--redis",
                self.url,
                "--backend",
                backend,
                "--consumer",
                name,
                "--concurrency",
                env.get("CONCURRENCY", "2"),
            ],
            cwd=ROOT,
            env=e,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logdir / f"agent-{name}.log").read_text(errors="replace")

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.fixture
def agents(redis_server: RedisServer, tmp_path: Path) -> Iterator[Agents]:
    a = Agents(redis_server.url, tmp_path)
    yield a
    a.kill_all()


@pytest.fixture
async def edge(redis_server: RedisServer) -> AsyncIterator[BackgroundClient]:
    """The edge side: its own bus and queue connections, like a separate process."""
    rs = RedisSettings.from_dsn(redis_server.url, block_ms=200, backoff_max_s=0.2)
    bus, queue = RedisBus(rs), RedisTaskQueue(rs)
    client = BackgroundClient(bus, queue, stall_s=15.0, max_resubmits=3, check_every_s=0.2)
    yield client
    await client.aclose()
    await bus.close()
    await queue.close()


async def next_events(stream: ResultStream, n: int, timeout: float = 20.0) -> list[TaskEvent]:
    out = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            out.append(await stream.__anext__())
    return out


def assert_exactly_once(events: list[TaskEvent], task_id: str, text: str) -> None:
    mine = [e for e in events if e.task_id == task_id]
    assert [e.seq for e in mine] == list(range(len(mine))), "every seq once, in order"
    assert mine[-1].kind == "done"
    assert text_of(mine, task_id) == text


async def test_kill_9_mid_task_another_agent_finishes_it_exactly_once(
    agents: Agents, edge: BackgroundClient, redis_server: RedisServer
) -> None:
    a = agents.start("a")
    stream = edge.results("s1")
    await stream.ready()
    await edge.submit(ask(ANSWER, "t1"))
    first = await next_events(stream, 3)  # agent a is a quarter of the way through
    a.send_signal(signal.SIGKILL)
    a.wait(10)
    agents.start("b")
    rest = await collect(stream, {"t1"}, timeout=30)
    events = first + rest
    assert_exactly_once(events, "t1", FULL)
    assert stream.duplicates >= 3  # b re-streamed from seq 0; the client dropped what a sent
    assert "agent.reclaimed" in agents.log("b")
    assert edge.resubmitted == 0  # the reclaim did it, not the edge
    q = RedisTaskQueue(RedisSettings.from_dsn(redis_server.url))
    try:
        async with asyncio.timeout(5):
            while await q.pending():
                await asyncio.sleep(0.05)
        assert await q.dead_letters() == []
    finally:
        await q.close()


async def test_redis_restart_mid_task_loses_nothing(
    agents: Agents, edge: BackgroundClient, redis_server: RedisServer
) -> None:
    agents.start("a", CONCURRENCY="1")
    stream = edge.results("s1")
    await stream.ready()
    await edge.submit(ask(ANSWER, "t1"))  # runs
    await edge.submit(ask("queued behind it", "t2"))  # waits in bg:tasks: the restart wipes it
    first = await next_events(stream, 2)
    await asyncio.to_thread(redis_server.restart, 0.5)
    rest = await collect(stream, {"t1", "t2"}, timeout=40)
    events = first + rest
    # each task ends, with its whole answer exactly once or an explicit failure; none vanish
    for tid, text in (("t1", FULL), ("t2", "queued behind it ")):
        mine = [e for e in events if e.task_id == tid]
        assert mine and mine[-1].kind in ("done", "failed")
        if mine[-1].kind == "done":
            assert_exactly_once(events, tid, text)
    assert [e.kind for e in events if e.task_id == "t2"][-1] == "done"  # re-submitted after the restart
    assert edge.restarts_seen == 1 and edge.resubmitted >= 2  # t1 and t2 re-sent on seeing the restart
    assert "bus.reconnected" in agents.log("a") or "agent.queue_back" in agents.log("a")


async def test_failing_backend_reports_and_dead_letters(
    agents: Agents, edge: BackgroundClient, redis_server: RedisServer
) -> None:
    agents.start("a", backend="tests.agents.fake_backends:fail", MICROTURN_AGENT_MAX_ATTEMPTS="2")
    stream = edge.results("s1")
    await stream.ready()
    await edge.submit(ask("anything", "t1"))
    events = await collect(stream, {"t1"}, timeout=20)
    assert [(e.kind, e.text or e.error) for e in events] == [
        ("delta", "hmm "),
        ("failed", "the upstream model said no"),
    ]
    q = RedisTaskQueue(RedisSettings.from_dsn(redis_server.url))
    try:
        [dead] = await q.dead_letters()
        assert dead.task.task_id == "t1" and dead.reason == "the upstream model said no"
    finally:
        await q.close()


async def test_sigterm_hands_running_tasks_to_another_agent(agents: Agents, edge: BackgroundClient) -> None:
    a = agents.start("a", MICROTURN_AGENT_DRAIN_S="0.2")
    stream = edge.results("s1")
    await stream.ready()
    await edge.submit(ask(ANSWER, "t1"))
    first = await next_events(stream, 2)
    a.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(a.wait, 20) == 0
    assert "agent.released" in agents.log("a")
    agents.start("b", MICROTURN_AGENT_RECLAIM_IDLE_S="60")  # no reclaim: the release hands it over
    rest = await collect(stream, {"t1"}, timeout=30)
    assert_exactly_once(first + rest, "t1", FULL)
