"""The seam where the background model plugs into a call (DESIGN.md §7).

When the interaction model emits `<delegate>` (`MicroTurnOutput.delegate`), the call hands a
`DelegateRequest` with the recent conversation to a `BackgroundAgent`. The agent streams its
answer back through the `BackgroundSink` it was given, as ordered `(task_id, seq, delta)`
pieces; the call forwards each to the page as a `background.task.delta` event and feeds the
text into the `background` field of the next micro-turn inputs, so the model — not a harness —
decides when to say it.

Today no agent is wired in (`Runtime.background` is None) and delegations are only logged. The
agents issue plugs in here: an implementation that publishes the request on `bg:tasks` and
relays `bg:results:{session}` into the sink, or the built-in tools agent in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class DelegateRequest:
    session_id: str
    turn: int  # the micro-turn whose output carried <delegate>
    transcript: str  # recent user captions and model text, oldest first (bounded)


class BackgroundSink(Protocol):
    def task_delta(self, task_id: str, seq: int, delta: str) -> None:
        """Deliver one piece of an answer; a repeated (task_id, seq) is ignored."""


class BackgroundAgent(Protocol):
    async def delegate(self, request: DelegateRequest, sink: BackgroundSink) -> None:
        """Run one task to completion, streaming its answer into `sink`.

        Runs as a task owned by the call: cancelled when the call ends, so it must release
        whatever it holds on CancelledError.
        """
