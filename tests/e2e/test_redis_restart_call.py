"""Redis restarted mid-call (issue 11's must-show): the call goes on, and every background task
ends — its whole answer exactly once, or a failure event — never silence.

Real parts throughout: the `microturn serve` app with MICROTURN_REDIS_URL pointing at a real
redis-server (background tasks over Redis, media in-process on the memory bus), a real aiortc
caller with its `events` data channel, and an agent process of its own
(`python -m agents.cli`, the code behind `microturn agent`) running a slow backend that
echoes the ask (the window around it holds the random-weights model's babble).

The agent runs one task at a time, so when Redis restarts one task is in flight in the agent
(it survives in the agent's memory: the agent publishes through the outage) and the other
still waits in bg:tasks (the restart wipes it: only the edge's re-submission brings it back).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from infra import keys
from infra.messages import MicroTurnInput
from signaling.app import RUNTIME, create_app
from signaling.background import CallBackground
from signaling.runtime import Runtime
from tests.e2e.aiortc_client import Caller
from tests.e2e.aiortc_server import ROOT, edge_settings, tiny_checkpoint, wait_until
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

DELAY_S = 0.25  # between the agent's words: a task of 14 words is in flight for 3.5 s
LONG = " ".join(f"w{i}" for i in range(14))
QUEUED = "queued behind it"
AFTER = "asked after the restart"
# the edge and the agent notice a dead connection and a server back quickly
FAST = "block_ms=200&backoff_max_s=0.2"


def answer(text: str) -> str:
    """What the ask-echo backend says when asked `text`."""
    return "".join(w + " " for w in text.split())


@pytest.fixture
def agent(redis_server: RedisServer, tmp_path: Path) -> Iterator[Path]:
    """One agent process, one task at a time; killed at teardown. Yields its log file."""
    log_path = tmp_path / "agent.log"
    env = {
        **os.environ,
        "MICROTURN_TEST_DELAY_S": str(DELAY_S),
        "MICROTURN_AGENT_READ_BLOCK_S": "0.2",
        "MICROTURN_AGENT_RECLAIM_EVERY_S": "0.2",
    }
    env.pop("MICROTURN_AGENT_BACKEND", None)
    cmd = [sys.executable, "-m", "agents.cli", "--redis", f"{redis_server.url}?{FAST}"]
    cmd += ["--backend", "tests.agents.fake_backends:slow_ask_echo", "--consumer", "a", "--concurrency", "1"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield log_path
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@contextlib.asynccontextmanager
async def serve(redis_url: str) -> AsyncIterator[tuple[Runtime, str, list[str]]]:
    """The app as `microturn serve` builds it with MICROTURN_REDIS_URL set; also yields what
    reaches the model as background text (MicroTurnInput.background), in order."""
    app = create_app(edge_settings(redis_url=f"{redis_url}?{FAST}"), checkpoint=tiny_checkpoint())
    server = TestServer(app)
    await server.start_server()
    rt: Runtime = app[RUNTIME]
    assert rt.worker is not None  # `serve`: the engine's worker runs in this process
    backgrounds: list[str] = []
    inputs = rt.bus.subscribe(keys.inputs(rt.worker.settings.worker_id), maxsize=4096)

    async def spy() -> None:  # next to the worker's own subscription
        async for data in inputs:
            inp = msgspec.msgpack.decode(data, type=MicroTurnInput)
            if inp.background:
                backgrounds.append(inp.background)

    spying = asyncio.create_task(spy())
    try:
        yield rt, str(server.make_url("")).rstrip("/"), backgrounds
    finally:
        spying.cancel()
        inputs.close()
        await server.close()


def create(task_id: str, text: str) -> dict[str, Any]:
    return {"type": "background.task.create", "task_id": task_id, "text": text}


def ended(task_id: str) -> Any:
    return lambda e: e.get("task_id") == task_id and e["type"] in ("background.task.done", "background.task.failed")


def deltas(caller: Caller, task_id: str) -> list[tuple[int, str]]:
    return [(e["seq"], e["delta"]) for e in caller.of_type("background.task.delta") if e["task_id"] == task_id]


def assert_whole_once_or_failed(caller: Caller, task_id: str, text: str) -> str:
    """The task ended exactly once; done means every piece once, in order, the whole answer."""
    ends = [e for e in caller.events if ended(task_id)(e)]
    assert len(ends) == 1, ends
    got = deltas(caller, task_id)
    if ends[0]["type"] == "background.task.done":
        assert [s for s, _ in got] == list(range(len(got))), "a piece repeated or missing"
        assert "".join(d for _, d in got) == answer(text)
        return "done"
    assert ends[0]["error"]
    return "failed"


def last_turn(caller: Caller) -> int:
    """The latest micro-turn the page heard of (captions, model text and latency carry it)."""
    return max(e["turn"] for e in caller.events if "turn" in e)


def fed_to_model(caller: Caller) -> str:
    """What the page's events say the session was fed: each piece, and failure notices."""
    out = []
    for e in caller.events:
        if e["type"] == "background.task.delta":
            out.append(e["delta"])
        elif e["type"] == "background.task.failed":
            out.append(f"(background task failed: {e['error']})")
    return "".join(out)


async def test_redis_restart_mid_call(redis_server: RedisServer, agent: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the random-weights model's <delegate>s would take the one agent's time and the call's
    # task slots: this test is about the tasks it asks for itself
    monkeypatch.setattr(CallBackground, "delegate", lambda self, turn: None)
    async with serve(redis_server.url) as (rt, url, backgrounds), aiohttp.ClientSession() as http:
        # silence, looped: the uplink keeps the call's micro-turns going
        caller = Caller(url, http, np.zeros(16000, np.float32), loop_audio=True)
        try:
            await caller.mint_token()
            assert (await caller.connect()).status == 201
            await caller.wait_event(lambda e: e["type"] == "session.created", 20)
            call = rt.calls.get(caller.call_id or "")
            assert call is not None and rt.background is not None
            await caller.wait_event(lambda e: "turn" in e, 20)  # the model's turns come back

            caller.send(create("r1", LONG))  # the agent takes it
            caller.send(create("r2", QUEUED))  # waits in bg:tasks behind it
            # the agent process may still be starting
            await caller.wait_event(lambda e: e["type"] == "background.task.delta" and e["task_id"] == "r1", 30)

            # -- Redis goes away and comes back empty, while r1 streams and r2 waits ----------
            turn, turns_out = last_turn(caller), call.transport.turns_out
            await asyncio.to_thread(redis_server.restart, 0.5)
            back = time.monotonic()
            assert len(deltas(caller, "r1")) < len(LONG.split()), "r1 was not in flight at the restart"

            # the call goes on: turns keep completing and model audio keeps arriving
            await wait_until(lambda: call.transport.turns_out >= turns_out + 10, 15)
            await caller.wait_event(lambda e: e.get("turn", -1) >= turn + 10, 15)
            await wait_until(lambda: sum(t > back for t in caller.received.arrivals) >= 50, 10)

            # every task ends, bounded: the in-flight one and the one the restart wiped
            await caller.wait_event(ended("r1"), 25)
            await caller.wait_event(ended("r2"), 25)
            outcomes = {"r1": assert_whole_once_or_failed(caller, "r1", LONG)}
            # the edge re-submitted it on seeing the restart (not the 60 s stall timer)
            outcomes["r2"] = assert_whole_once_or_failed(caller, "r2", QUEUED)
            assert outcomes["r2"] == "done"
            assert rt.background.restarts_seen == 1 and rt.background.resubmitted >= 1

            # -- a new task after the restart is answered -----------------------------------
            caller.send(create("r3", AFTER))
            await caller.wait_event(ended("r3"), 15)
            outcomes["r3"] = assert_whole_once_or_failed(caller, "r3", AFTER)
            assert outcomes["r3"] == "done"

            # the session heard each answer once, in the order the page did
            await wait_until(lambda: "".join(backgrounds) == fed_to_model(caller), 10)
            for tid, text in (("r1", LONG), ("r2", QUEUED), ("r3", AFTER)):
                assert "".join(backgrounds).count(answer(text)) == (outcomes[tid] == "done")

            # the call was never closed nor told of an error
            assert call.state == "connected" and rt.calls.get(call.id) is call
            assert caller.of_type("error") == []
            await caller.wait_event(lambda e: e.get("turn", -1) >= turn + 20, 15)
            assert await caller.hangup() == 204
        finally:
            await caller.close()
    log = agent.read_text(errors="replace")
    assert "agent.queue_back" in log or "bus.reconnected" in log, log[-2000:]
