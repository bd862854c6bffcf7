"""The built-in tools behind one object, shared by both backends: the tools backend calls them
from its phrase rules, the openai backend from the model's function calls. Every method
returns the sentence to say; a refusal (bad expression, unknown unit, too many timers) is a
sentence too, never an exception, so a model can read it and recover.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from fractions import Fraction

from agents.backend import FireCallback
from agents.tools import arith, clock, units
from agents.tools.notes import NoteError, Notes, say_notes
from agents.tools.timers import MAX_DELAY_S, TimerError, Timers, say_duration


@dataclass(frozen=True)
class ToolLimits:
    max_timers_per_session: int = 8
    max_notes_per_session: int = 32
    max_timer_s: float = MAX_DELAY_S


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Toolbox:
    def __init__(
        self,
        fire: FireCallback,
        limits: ToolLimits | None = None,
        *,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.limits = limits or ToolLimits()
        self.now = now  # aware datetime; injectable so tests can pin the date
        self.timers = Timers(
            fire, max_per_session=self.limits.max_timers_per_session, max_delay_s=self.limits.max_timer_s
        )
        self.notes = Notes(max_per_session=self.limits.max_notes_per_session)

    # --- arithmetic ---------------------------------------------------------------------------
    def calculate(self, expression: str) -> str:
        try:
            value = arith.evaluate(expression)
        except arith.CalcError as e:
            return f"Sorry, I can't calculate that: {e}."
        return f"{expression.strip()} is {arith.format_number(value)}."

    # --- clock --------------------------------------------------------------------------------
    def current_time(self, place: str | None, timezone: str | None) -> str:
        try:
            return clock.time_answer(self.now(), place, timezone)
        except clock.ClockError as e:
            return f"Sorry, {e}."

    def today(self, timezone: str | None) -> str:
        today = clock.today_in(self.now(), timezone)
        return f"Today is {clock.say_date(today)}."

    def weekday(self, text: str, timezone: str | None) -> str:
        found = self._date_in(text, timezone, future=False)
        return found if isinstance(found, str) else clock.weekday_answer(*found)

    def days_until(self, text: str, timezone: str | None) -> str:
        found = self._date_in(text, timezone, future=True)
        return found if isinstance(found, str) else clock.days_until_answer(*found)

    def date_info(self, text: str, timezone: str | None) -> str:
        """Weekday and distance in days of the date in `text` (without a year: the next one)."""
        found = self._date_in(text, timezone, future=True)
        if isinstance(found, str):
            return found
        return f"{clock.weekday_answer(*found)} {clock.days_until_answer(*found)}"

    def _date_in(self, text: str, timezone: str | None, *, future: bool) -> tuple[date, date] | str:
        """(the date named in `text`, today) — or the sentence that says why there is none."""
        today = clock.today_in(self.now(), timezone)
        try:
            d = clock.find_date(text, today, future=future)
        except clock.ClockError as e:
            return f"Sorry, {e}."
        if d is None:
            return "Sorry, I couldn't tell which date you mean; try something like December 25, 2026."
        return d, today

    # --- units --------------------------------------------------------------------------------
    def convert_units(self, value: Fraction, from_unit: str, to_unit: str) -> str:
        try:
            return units.answer(value, from_unit, to_unit)
        except units.UnitError as e:
            return f"Sorry, {e}."

    # --- timers -------------------------------------------------------------------------------
    def set_timer(self, session_id: str, seconds: float, reminder: str | None = None) -> str:
        what = reminder.strip().rstrip(".!") if reminder else ""
        message = f"Reminder: {what}." if what else f"Your {say_duration(seconds)} timer is done."
        try:
            self.timers.schedule(session_id, seconds, message)
        except TimerError as e:
            return f"Sorry, {e}."
        if what:
            return f"Okay, I'll remind you in {say_duration(seconds)} to {what}."
        return f"Okay, a timer for {say_duration(seconds)} is running."

    def cancel_timers(self, session_id: str) -> str:
        n = self.timers.cancel_session(session_id)
        if n == 0:
            return "There are no timers running."
        return f"Okay, I cancelled {n} timer{'s' if n != 1 else ''}."

    # --- notes --------------------------------------------------------------------------------
    def save_note(self, session_id: str, note: str) -> str:
        if self.timers.ended(session_id):
            return "Sorry, this call has ended, so I can't keep notes for it."
        try:
            added = self.notes.add(session_id, note)
        except NoteError as e:
            return f"Sorry, {e}."
        return "Got it, I'll remember that." if added else "I already have that noted."

    def list_notes(self, session_id: str, also: list[str] | None = None) -> str:
        return say_notes(Notes.merge(self.notes.get(session_id), also or []))

    def clear_notes(self, session_id: str) -> str:
        n = self.notes.clear(session_id)
        return "Okay, I forgot everything you asked me to remember." if n else "There was nothing to forget."

    # --- lifecycle ----------------------------------------------------------------------------
    async def session_ended(self, session_id: str) -> None:
        self.notes.clear(session_id)
        await self.timers.session_ended(session_id)

    async def aclose(self) -> None:
        await self.timers.aclose()
