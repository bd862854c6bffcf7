"""Notes the caller asks to keep for the rest of the call: "remember that my locker is 42",
"what did I ask you to remember?".

Kept per session, bounded in count, length and number of sessions, and forgotten when the
call ends. The tools backend also reads notes back out of the conversation window it is given
(`extract_note` over earlier user messages), so a note saved on one agent process is still
there when the next task of the call lands on another.
"""

from __future__ import annotations

import re
from collections import OrderedDict

MAX_NOTE_CHARS = 300
MAX_SESSIONS = 10_000

_SAVE = re.compile(
    r"^(?:(?:hey|ok(?:ay)?|so|and|please)[,\s]+)*"
    r"(?:can you |could you |would you |please )?"
    r"(?:remember|memori[sz]e|note down|make a note|take a note|write down|jot down|note|don't forget|do not forget)"
    r"(?:\s+(?:that|this|of|:))?[:,]?\s+(?P<note>.+?)[.!]?$",
    re.IGNORECASE | re.DOTALL,
)


class NoteError(ValueError):
    """A note that can't be kept; the message is user-safe."""


def extract_note(text: str) -> str | None:
    """The note in "remember that X" / "note: X" / "don't forget X", else None."""
    m = _SAVE.match(text.strip())
    if m is None:
        return None
    note = m.group("note").strip()
    # "remember what I told you" is a question about notes, not a note.
    if re.match(r"^(?:what|which|everything|anything|my notes)\b", note, re.IGNORECASE):
        return None
    return note or None


def _same(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return re.sub(r"[^\w]+", " ", s.lower()).strip()

    return norm(a) == norm(b)


class Notes:
    def __init__(self, *, max_per_session: int = 32) -> None:
        self.max_per_session = max_per_session
        self._by_session: OrderedDict[str, list[str]] = OrderedDict()

    def add(self, session_id: str, note: str) -> bool:
        """Keep `note`; False when the same note is already kept (a retried task saves twice)."""
        note = note.strip()
        if not note:
            raise NoteError("there is nothing to remember")
        if len(note) > MAX_NOTE_CHARS:
            raise NoteError(f"that note is too long to keep (over {MAX_NOTE_CHARS} characters)")
        notes = self._by_session.setdefault(session_id, [])
        self._by_session.move_to_end(session_id)
        while len(self._by_session) > MAX_SESSIONS:  # calls that never said goodbye
            self._by_session.popitem(last=False)
        if any(_same(n, note) for n in notes):
            return False
        if len(notes) >= self.max_per_session:
            raise NoteError(f"I'm already keeping {len(notes)} notes for this call, which is the most I can")
        notes.append(note)
        return True

    def get(self, session_id: str) -> list[str]:
        return list(self._by_session.get(session_id, ()))

    def clear(self, session_id: str) -> int:
        return len(self._by_session.pop(session_id, ()))

    @staticmethod
    def merge(*lists: list[str]) -> list[str]:
        """Notes from several places, first occurrence first, duplicates dropped."""
        out: list[str] = []
        for notes in lists:
            for n in notes:
                if not any(_same(n, o) for o in out):
                    out.append(n)
        return out


def say_notes(notes: list[str]) -> str:
    if not notes:
        return "You haven't asked me to remember anything in this call yet."
    if len(notes) == 1:
        return f"You asked me to remember: {_sentence(notes[0])}"
    items = " ".join(f"{i}. {_sentence(n)}" for i, n in enumerate(notes, 1))
    return f"You asked me to remember {len(notes)} things. {items}"


def _sentence(s: str) -> str:
    s = s.strip()
    s = re.sub(r"\bmy\b", "your", s, flags=re.IGNORECASE)
    s = re.sub(r"\bI am\b|\bI'm\b", "you're", s)
    s = re.sub(r"\bI\b", "you", s)
    return s if s.endswith((".", "!", "?")) else s + "."
