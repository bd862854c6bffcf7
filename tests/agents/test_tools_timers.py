"""Timers and reminders fire into the call that set them, and never after it ended."""

import asyncio

import pytest

from agents.backend import TaskContext
from agents.backends.tools import ToolsBackend
from agents.tools.timers import TimerError, Timers, parse_duration, say_duration
from agents.tools.toolbox import Toolbox, ToolLimits
from infra.messages import ChatMessage


class Recorder:
    def __init__(self) -> None:
        self.fired: list[tuple[str, str]] = []
        self.event = asyncio.Event()

    async def __call__(self, session_id: str, text: str) -> None:
        self.fired.append((session_id, text))
        self.event.set()

    async def wait(self, n: int) -> None:
        while len(self.fired) < n:
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), 5)


def ctx(session_id: str, text: str) -> TaskContext:
    return TaskContext("task-1", session_id, (ChatMessage("user", text),), 0.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("in 5 minutes", 300),
        ("for thirty seconds", 30),
        ("an hour and a half", 5400),
        ("1 hour 30 minutes", 5400),
        ("half a minute", 30),
        ("a five-minute timer", 300),
        ("0.1 seconds", 0.1),
        ("2.5 min", 150),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_no_duration() -> None:
    assert parse_duration("at five pm") is None
    assert say_duration(5400) == "1 hour 30 minutes"


async def test_timer_fires_into_the_call_that_set_it() -> None:
    rec = Recorder()
    backend = ToolsBackend(Toolbox(rec))
    try:
        said_a = "".join([p async for p in backend.run(ctx("call-a", "remind me in 0.05 seconds to stretch"))])
        said_b = "".join([p async for p in backend.run(ctx("call-b", "set a timer for 0.1 seconds"))])
        assert said_a == "Okay, I'll remind you in 0.05 seconds to stretch."
        assert said_b == "Okay, a timer for 0.1 seconds is running."
        await rec.wait(2)
        assert rec.fired == [("call-a", "Reminder: stretch."), ("call-b", "Your 0.1 seconds timer is done.")]
        assert backend.toolbox.timers.pending("call-a") == []
    finally:
        await backend.aclose()


async def test_never_fires_after_the_call_ended() -> None:
    rec = Recorder()
    timers = Timers(rec)
    ended = timers.schedule("ended-call", 0.05, "too late")
    live = timers.schedule("live-call", 0.05, "on time")  # same delay, scheduled after: fires after
    await timers.session_ended("ended-call")
    assert ended.task is not None and ended.task.cancelled()
    await rec.wait(1)
    await asyncio.sleep(0.05)
    assert rec.fired == [("live-call", "on time")]
    assert live.task is not None and live.task.done()
    # A task of the ended call still in flight cannot set a new one.
    with pytest.raises(TimerError, match="ended"):
        timers.schedule("ended-call", 0.01, "zombie")
    await timers.aclose()


async def test_session_ended_cancels_a_timer_caught_mid_fire() -> None:
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow_fire(session_id: str, text: str) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()  # e.g. a bus publish stuck in an outage
        except asyncio.CancelledError:
            cancelled.set()
            raise

    timers = Timers(slow_fire)
    timers.schedule("s", 0.01, "x")
    await asyncio.wait_for(entered.wait(), 5)
    await asyncio.wait_for(timers.session_ended("s"), 5)
    assert cancelled.is_set()
    assert timers.pending("s") == []


async def test_timers_are_bounded_per_call() -> None:
    rec = Recorder()
    tb = Toolbox(rec, ToolLimits(max_timers_per_session=2))
    try:
        assert tb.set_timer("s", 60).startswith("Okay")
        assert tb.set_timer("s", 60).startswith("Okay")
        assert "most I can keep" in tb.set_timer("s", 60)
        assert tb.set_timer("other", 60).startswith("Okay")  # per call, not global
        assert "at most 24 hours" in tb.set_timer("other", 2 * 86400)
        assert "longer than zero" in tb.set_timer("other", 0)
        assert tb.cancel_timers("s") == "Okay, I cancelled 2 timers."
        assert tb.timers.pending("s") == []
    finally:
        await tb.aclose()
    assert rec.fired == []


async def test_fire_errors_do_not_escape() -> None:
    calls: list[str] = []

    async def broken(session_id: str, text: str) -> None:
        calls.append(text)
        raise RuntimeError("bus down")

    timers = Timers(broken)
    t = timers.schedule("s", 0.01, "x")
    assert t.task is not None
    await asyncio.wait_for(t.task, 5)  # completes, does not raise
    assert calls == ["x"]
    assert timers.pending("s") == []
