"""Timers and reminders that go off later in the same call.

"Set a timer for 30 seconds", "remind me in 5 minutes to stretch". A timer is a task owned by
`Timers`, keyed by session; when it goes off it calls `fire(session_id, text)`, which the
agent turns into a background result for that call. A call's timers die with the call:
`session_ended` cancels them — including one caught mid-fire — and remembers the session
(bounded), so a task of that call still in flight cannot set a new one.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction

from agents.backend import FireCallback
from agents.tools.numbers import words_to_digits
from infra.logging import get_logger

log = get_logger(__name__)

MAX_DELAY_S = 24 * 3600.0
_ENDED_MEMORY = 4096


class TimerError(ValueError):
    """A timer that can't be set; the message is user-safe."""


_UNIT_SECONDS = {
    "second": 1, "seconds": 1, "sec": 1, "secs": 1, "s": 1,
    "minute": 60, "minutes": 60, "min": 60, "mins": 60,
    "hour": 3600, "hours": 3600, "hr": 3600, "hrs": 3600, "h": 3600,
}  # fmt: skip
_DURATION = re.compile(
    r"(?P<n>\d+(?:\.\d+)?|an?|half an?|a half)\s*-?\s*(?P<unit>seconds?|secs?|minutes?|mins?|hours?|hrs?|[smh])\b"
    r"(?P<half>\s+and\s+a\s+half)?",
    re.IGNORECASE,
)


def parse_duration(text: str) -> float | None:
    """Seconds in "5 minutes", "an hour and a half", "1 hour 30 minutes", "half a minute",
    "ninety seconds"; None when `text` names no duration."""
    total = Fraction(0)
    found = False
    for m in _DURATION.finditer(words_to_digits(text)):
        n = m.group("n").lower()
        value = Fraction(1, 2) if n.startswith("half") or n == "a half" else Fraction(1) if n in ("a", "an") else None
        if value is None:
            value = Fraction(n)
        if m.group("half"):
            value += Fraction(1, 2)
        total += value * _UNIT_SECONDS[m.group("unit").lower()]
        found = True
    return float(total) if found else None


def say_duration(seconds: float) -> str:
    """ "1 hour 30 minutes", "45 seconds", "2.5 seconds"."""
    if seconds < 60 and seconds != int(seconds):
        return f"{seconds:g} seconds"
    s = round(seconds)
    parts = []
    for name, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        n, s = divmod(s, size)
        if n:
            parts.append(f"{n} {name}{'s' if n != 1 else ''}")
    return " ".join(parts) or "0 seconds"


@dataclass
class Timer:
    timer_id: str
    session_id: str
    delay_s: float
    message: str  # what to say when it goes off
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Timers:
    def __init__(
        self,
        fire: FireCallback,
        *,
        max_per_session: int = 8,
        max_delay_s: float = MAX_DELAY_S,
    ) -> None:
        self._fire = fire
        self.max_per_session = max_per_session
        self.max_delay_s = max_delay_s
        self._by_session: dict[str, dict[str, Timer]] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._ids = itertools.count(1)
        self.fired = 0

    def schedule(self, session_id: str, delay_s: float, message: str) -> Timer:
        if self.ended(session_id):
            raise TimerError("this call has ended, so I can't set a timer for it")
        if not delay_s > 0:
            raise TimerError("a timer needs a duration longer than zero")
        if delay_s > self.max_delay_s:
            raise TimerError(f"I can set timers for at most {say_duration(self.max_delay_s)}")
        timers = self._by_session.setdefault(session_id, {})
        if len(timers) >= self.max_per_session:
            raise TimerError(f"you already have {len(timers)} timers running, which is the most I can keep")
        timer = Timer(f"t{next(self._ids)}", session_id, delay_s, message)
        timer.task = asyncio.create_task(self._run(timer), name=f"timer-{timer.timer_id}")
        timers[timer.timer_id] = timer
        return timer

    def pending(self, session_id: str) -> list[Timer]:
        return list(self._by_session.get(session_id, {}).values())

    def cancel_session(self, session_id: str) -> int:
        """Cancel the call's timers (without ending the call); returns how many there were."""
        timers = self._by_session.pop(session_id, {})
        for t in timers.values():
            if t.task is not None:
                t.task.cancel()
        return len(timers)

    def ended(self, session_id: str) -> bool:
        return session_id in self._ended

    async def session_ended(self, session_id: str) -> None:
        self._ended[session_id] = None
        self._ended.move_to_end(session_id)
        while len(self._ended) > _ENDED_MEMORY:
            self._ended.popitem(last=False)
        tasks = [t.task for t in self._by_session.get(session_id, {}).values() if t.task is not None]
        self.cancel_session(session_id)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        tasks = [t.task for ts in self._by_session.values() for t in ts.values() if t.task is not None]
        for s in list(self._by_session):
            self.cancel_session(s)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, timer: Timer) -> None:
        try:
            await asyncio.sleep(timer.delay_s)
            if self.ended(timer.session_id):
                return
            self.fired += 1
            await self._fire(timer.session_id, timer.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("timer.fire_failed", session_id=timer.session_id, timer_id=timer.timer_id)
        finally:
            timers = self._by_session.get(timer.session_id)
            if timers is not None:
                timers.pop(timer.timer_id, None)
                if not timers:
                    del self._by_session[timer.session_id]
