"""Background tasks at the call: a real edge, a real aiortc caller, the test as the agent.

The app gets a BackgroundClient on a memory bus and queue of the test's own, so the test
reads the tasks the call submits (as an agent would) and publishes the TaskEvents it wants —
in order, duplicated, for a cancelled task, a timer firing — and checks what reaches the page
(data-channel events) and the model (MicroTurnInput.background on the worker's input topic).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from agents.client import BackgroundClient
from agents.local import start_local_agent
from infra import keys
from infra.bus import MemoryBus, Subscription
from infra.messages import (
    TURN_SAMPLES,
    ControlMessage,
    MicroTurnInput,
    MicroTurnOutput,
    SessionEnded,
    TaskCancel,
    TaskEvent,
)
from infra.redis_bus import RedisBus, RedisSettings
from infra.taskqueue import Delivery, MemoryTaskQueue, RedisTaskQueue
from signaling.app import RUNTIME, create_app
from signaling.call import MAX_BACKGROUND_TASKS, Call
from signaling.runtime import Runtime
from tests.e2e.aiortc_client import Caller
from tests.e2e.aiortc_server import call_tasks, edge_settings, tiny_checkpoint, wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(90)

_control = msgspec.msgpack.Decoder(ControlMessage)


@dataclass
class Rig:
    rt: Runtime
    url: str
    bus: MemoryBus  # the background bus (tasks' results and control)
    queue: MemoryTaskQueue
    client: BackgroundClient
    control: Subscription
    backgrounds: list[str] = field(default_factory=list)  # MicroTurnInput.background, in order

    async def take(self, n: int = 1) -> list[Delivery]:
        """Act as the agent: the next n tasks the edge queued."""
        got: list[Delivery] = []
        for _ in range(50):
            got += await self.queue.read("test-agent", n - len(got), 0.1)
            if len(got) >= n:
                return got
        raise TimeoutError(f"only {len(got)} of {n} tasks were queued")

    async def publish(self, session: str, *events: TaskEvent) -> None:
        for ev in events:
            await self.bus.publish_struct(keys.bg_results(session), ev)

    async def control_messages(self, n: int) -> list[ControlMessage]:
        return [_control.decode(await self.control.get(timeout=5.0)) for _ in range(n)]

    def background_text(self) -> str:
        return "".join(self.backgrounds)


@contextlib.asynccontextmanager
async def rig(queue: MemoryTaskQueue | None = None, redis_url: str | None = None) -> AsyncIterator[Rig]:
    """`redis_url`: the app wires itself to Redis from its settings (the rig's own bus and
    queue then stand idle); otherwise it gets a client on the rig's memory bus and queue."""
    bus, queue = MemoryBus(), queue or MemoryTaskQueue()
    client = BackgroundClient(bus, queue)
    if redis_url is None:
        app = create_app(edge_settings(), background=client, checkpoint=tiny_checkpoint())
    else:
        app = create_app(edge_settings(redis_url=redis_url), checkpoint=tiny_checkpoint())
    server = TestServer(app)
    await server.start_server()
    rt = app[RUNTIME]
    r = Rig(rt, str(server.make_url("")).rstrip("/"), bus, queue, client, bus.subscribe(keys.bg_control()))
    inputs = rt.bus.subscribe(keys.inputs(rt.worker.settings.worker_id), maxsize=4096)

    async def spy() -> None:  # what reaches the worker, next to the worker's own subscription
        async for data in inputs:
            inp = msgspec.msgpack.decode(data, type=MicroTurnInput)
            if inp.background:
                r.backgrounds.append(inp.background)

    spying = asyncio.create_task(spy())
    try:
        yield r
    finally:
        spying.cancel()
        inputs.close()
        await server.close()
        await client.aclose()
        await bus.close()


@contextlib.asynccontextmanager
async def live_call(r: Rig) -> AsyncIterator[tuple[Caller, Call]]:
    async with aiohttp.ClientSession() as http:
        # silence, looped: the uplink keeps the call's micro-turns (and so its inputs) going
        caller = Caller(r.url, http, np.zeros(16000, np.float32), loop_audio=True)
        try:
            await caller.mint_token()
            assert (await caller.connect()).status == 201
            await caller.wait_event(lambda e: e["type"] == "session.created", 20)
            call = r.rt.calls.get(caller.call_id or "")
            assert call is not None
            yield caller, call
        finally:
            await caller.close()


def delta(task_id: str, seq: int, text: str) -> TaskEvent:
    return TaskEvent(task_id=task_id, seq=seq, kind="delta", text=text)


def done(task_id: str, seq: int) -> TaskEvent:
    return TaskEvent(task_id=task_id, seq=seq, kind="done")


def bg_events(caller: Caller, task_id: str | None = None) -> list[tuple[Any, ...]]:
    """The page's background events, compactly: (type suffix, task_id, seq/source/error, delta/text)."""
    out = []
    for e in caller.events:
        t = str(e.get("type", ""))
        if not t.startswith("background.task.") or (task_id is not None and e["task_id"] != task_id):
            continue
        kind = t.removeprefix("background.task.")
        extra = {"created": ("source", "text"), "delta": ("seq", "delta"), "failed": ("error",)}.get(kind, ())
        out.append((kind, e["task_id"], *(e[k] for k in extra)))
    return out


def create(task_id: str, text: str, **kw: Any) -> dict[str, Any]:
    return {"type": "background.task.create", "task_id": task_id, "text": text, **kw}


async def error_event(caller: Caller, code: str) -> dict[str, Any]:
    return await caller.wait_event(lambda e: e["type"] == "error" and e["code"] == code)


async def test_ask_stream_cancel_timer_caps_and_hangup() -> None:
    async with rig() as r, live_call(r) as (caller, call):
        sid = call.id

        # -- a client ask becomes a task carrying the conversation window ---------------------
        caller.send({"type": "input_text.append", "text": "my name is Ada"})
        caller.send(create("t1", "what is 2+2", timezone="Europe/Paris"))
        await caller.wait_event(lambda e: e["type"] == "background.task.created")
        [d] = await r.take()
        task = d.task
        assert (task.task_id, task.session_id, task.source, task.timezone) == ("t1", sid, "client", "Europe/Paris")
        assert task.messages[0].role == "system"
        last = task.messages[-1]
        assert last.role == "user" and last.content.endswith("what is 2+2")
        assert any("my name is Ada" in m.content for m in task.messages if m.role == "user")

        # -- its answer: in order, a retried piece once, to the page and into the model --------
        await r.publish(sid, delta("t1", 0, "The answer"), delta("t1", 0, "The answer"))
        await r.publish(sid, delta("t1", 1, " is 4."), done("t1", 2))
        await caller.wait_event(lambda e: e["type"] == "background.task.done")
        assert bg_events(caller, "t1") == [
            ("created", "t1", "client", "what is 2+2"),
            ("delta", "t1", 0, "The answer"),
            ("delta", "t1", 1, " is 4."),
            ("done", "t1"),
        ]
        await wait_until(lambda: r.background_text() == "The answer is 4.", 10)

        # -- the next task carries the earlier result; a cancel stops it everywhere -----------
        caller.send(create("t2", "and times 3?"))
        [d2] = await r.take()
        assert "The answer is 4." in "\n".join(m.content for m in d2.task.messages)
        caller.send({"type": "background.task.cancel", "task_id": "t2"})
        await caller.wait_event(lambda e: e["type"] == "background.task.cancelled")
        [msg] = await r.control_messages(1)
        assert msg == TaskCancel(task_id="t2", session_id=sid)
        # the agent had not heard yet and answers anyway; then a timer goes off
        await r.publish(sid, delta("t2", 0, "12"), done("t2", 1))
        await r.publish(sid, delta("timer-7", 0, " Your tea is ready."), done("timer-7", 1))
        await caller.wait_event(lambda e: e["type"] == "background.task.done" and e["task_id"] == "timer-7")
        assert bg_events(caller, "t2") == [("created", "t2", "client", "and times 3?"), ("cancelled", "t2")]
        assert bg_events(caller, "timer-7") == [
            ("created", "timer-7", "timer", ""),
            ("delta", "timer-7", 0, " Your tea is ready."),
            ("done", "timer-7"),
        ]
        await wait_until(lambda: r.background_text() == "The answer is 4. Your tea is ready.", 10)

        # -- caps and refusals --------------------------------------------------------------
        for i in range(MAX_BACKGROUND_TASKS):
            caller.send(create(f"c{i}", f"question {i}"))
        await r.take(MAX_BACKGROUND_TASKS)
        caller.send(create("over", "one too many"))
        err = await error_event(caller, "too_many_background_tasks")
        assert str(MAX_BACKGROUND_TASKS) in err["message"]
        assert ("failed", "over", err["message"]) in bg_events(caller, "over")
        caller.send(create("c0", "same id again"))
        await error_event(caller, "duplicate_task_id")
        caller.send({"type": "background.task.cancel", "task_id": "nope"})
        await error_event(caller, "unknown_task")
        caller.send(create("empty", "   "))
        await error_event(caller, "invalid_event")
        # one finishes (failed, from the agent): there is room again
        await r.publish(sid, TaskEvent(task_id="c0", seq=0, kind="failed", error="backend timed out"))
        await caller.wait_event(lambda e: e["type"] == "background.task.failed" and e["task_id"] == "c0")
        caller.send(create("again", "room now?"))
        await r.take()
        await caller.wait_event(lambda e: e["type"] == "background.task.created" and e["task_id"] == "again")
        # the session hears about the failure too, after what it already had
        await wait_until(lambda: "backend timed out" in r.background_text(), 10)
        assert r.background_text().startswith("The answer is 4. Your tea is ready.")
        assert "12" not in r.background_text()  # the cancelled task's late answer never reached it
        assert call.background is not None and call.background.refused == 1

        # -- hang-up: the agents hear the session ended; no subscription is left behind --------
        assert keys.bg_results(sid) in r.bus._subs
        assert await caller.hangup() == 204
        msgs = await r.control_messages(1)
        assert msgs == [SessionEnded(session_id=sid)]
        assert keys.bg_results(sid) not in r.bus._subs
        assert sid not in r.client._streams
        assert call_tasks(sid) == []


async def test_delegate_queues_the_window_and_a_failed_submit_is_reported() -> None:
    # a queue that holds one task: the second submission fails like an unreachable Redis would
    async with rig(MemoryTaskQueue(max_tasks=1)) as r, live_call(r) as (caller, call):
        sid = call.id
        caller.send({"type": "input_text.append", "text": "how far is the moon"})
        await wait_until(lambda: len(call.transport.window) > 0, 10)
        # the model emits <delegate> in a micro-turn's output
        out = MicroTurnOutput(
            session_id=sid, turn=10**6, audio=np.zeros(TURN_SAMPLES, np.float32).tobytes(), delegate=True
        )
        await r.rt.bus.publish_struct(keys.outputs(sid), out)
        [d] = await r.take()
        assert d.task.source == "delegate" and d.task.session_id == sid
        assert d.task.messages[-1].role == "user" and "how far is the moon" in d.task.messages[-1].content
        created = await caller.wait_event(lambda e: e["type"] == "background.task.created")
        assert created["source"] == "delegate" and created["task_id"] == d.task.task_id

        caller.send(create("full", "the queue is full now"))
        failed = await caller.wait_event(lambda e: e["type"] == "background.task.failed")
        assert failed["task_id"] == "full" and "unavailable" in failed["error"]
        assert call.background is not None and call.background.running == 1  # the delegation still runs


async def test_with_a_redis_url_tasks_go_over_redis_to_agents_elsewhere(redis_server: RedisServer) -> None:
    """MICROTURN_REDIS_URL set: the call's task waits on Redis (no agent runs in the edge)
    until an agent with its own connection starts; its answer reaches page and model."""
    async with rig(redis_url=redis_server.url) as r, live_call(r) as (caller, _):
        assert r.rt.background is not None and isinstance(r.rt.background.bus, RedisBus)
        caller.send(create("r1", "what is 12345678901234567890 times 3"))
        await caller.wait_event(lambda e: e["type"] == "background.task.created")
        await asyncio.sleep(1.0)
        assert bg_events(caller, "r1") == [("created", "r1", "client", "what is 12345678901234567890 times 3")]

        rs = RedisSettings.from_dsn(redis_server.url)
        agent_bus, agent_queue = RedisBus(rs), RedisTaskQueue(rs)
        agent = await start_local_agent(agent_bus, agent_queue)
        try:
            await caller.wait_event(lambda e: e["type"] == "background.task.done", 20)
            answer = "".join(e[3] for e in bg_events(caller, "r1") if e[0] == "delta")
            assert "37037036703703703670" in answer
            await wait_until(lambda: "37037036703703703670" in r.background_text(), 10)
        finally:
            await agent.aclose()
            await agent_bus.close()
