"""Backends for worker tests: they implement agents.backend.Backend and nothing else.

Each has a `factory(settings, fire)` so an agent subprocess can load it with
`--backend tests.agents.fake_backends:slow_echo`. Their output is a pure function of the
ask, like the tools backend's, which is what lets a retry re-stream without duplicates.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from agents.backend import BackendError, FireCallback, TaskContext


def words(ctx: TaskContext) -> list[str]:
    """The answer to an ask: its words echoed back, each with a trailing space."""
    return [w + " " for w in ctx.last_user_text().split()]


class EchoBackend:
    name = "echo"

    def __init__(self, delay_s: float = 0.0, fire: FireCallback | None = None) -> None:
        self.delay_s = delay_s
        self.fire = fire
        self.runs: list[str] = []  # task ids, one per attempt
        self.ended: list[str] = []
        self.closed = False

    async def run(self, ctx: TaskContext) -> AsyncIterator[str]:
        self.runs.append(ctx.task_id)
        for w in words(ctx):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield w

    async def session_ended(self, session_id: str) -> None:
        self.ended.append(session_id)

    async def aclose(self) -> None:
        self.closed = True


class HangBackend(EchoBackend):
    """Says one word, then never finishes."""

    name = "hang"

    async def run(self, ctx: TaskContext) -> AsyncIterator[str]:
        self.runs.append(ctx.task_id)
        yield "thinking "
        await asyncio.Event().wait()


class FailBackend(EchoBackend):
    """Says one word, then fails cleanly."""

    name = "fail"

    async def run(self, ctx: TaskContext) -> AsyncIterator[str]:
        self.runs.append(ctx.task_id)
        yield "hmm "
        raise BackendError("the upstream model said no")


class FlakyBackend(EchoBackend):
    """Fails the first attempt of each task halfway through, then answers."""

    name = "flaky"

    async def run(self, ctx: TaskContext) -> AsyncIterator[str]:
        first = ctx.task_id not in self.runs
        self.runs.append(ctx.task_id)
        for i, w in enumerate(words(ctx)):
            if first and i == 2:
                raise BackendError("transient upstream error")
            yield w


def slow_echo(settings: object, fire: FireCallback) -> EchoBackend:
    """For agent subprocesses: MICROTURN_TEST_DELAY_S between words (default 0.1 s)."""
    return EchoBackend(float(os.environ.get("MICROTURN_TEST_DELAY_S", "0.1")), fire)


def fail(settings: object, fire: FireCallback) -> FailBackend:
    return FailBackend(fire=fire)


class AskEchoBackend(EchoBackend):
    """Echoes only the ask (the last line of the last user message), not the window around it:
    the answer is known to a test whose call's window holds model babble."""

    name = "ask-echo"

    async def run(self, ctx: TaskContext) -> AsyncIterator[str]:
        self.runs.append(ctx.task_id)
        lines = ctx.last_user_text().splitlines() or [""]
        for w in lines[-1].split():
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield w + " "


def slow_ask_echo(settings: object, fire: FireCallback) -> AskEchoBackend:
    """For agent subprocesses: like slow_echo, answering the ask only."""
    return AskEchoBackend(float(os.environ.get("MICROTURN_TEST_DELAY_S", "0.1")), fire)
