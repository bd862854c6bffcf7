"""The conversation window a background task carries (DESIGN.md §7, issue 11 item 4).

A call feeds its window as things happen — the user's live captions, typed text, the
interaction model's own text, background answers that came back — and `to_messages(ask)`
turns it into chat messages for a task: a system prompt, then the conversation oldest first,
then the ask. Streaming deltas of one kind merge into one entry (captions arrive a few
characters per micro-turn); the window is bounded in entries and characters, oldest dropped
first, so a long call never grows a task.

The messages keep strict user/assistant alternation after the system prompt (some chat
templates reject anything else): consecutive entries of one role merge with a newline, and
the ask is the last line of the last user message (`TaskContext.last_user_text()`).

Imports neither `model` nor torch: the edge builds tasks with it.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from infra.messages import ChatMessage

SYSTEM_PROMPT = (
    "You are the background assistant of a live voice call. The conversation so far is below: "
    "the caller's words (live captions, so expect missing punctuation and misheard words, and "
    "typed messages) and what the voice assistant said. Answer the caller's last request. "
    "Your answer is handed to the voice assistant, which says it aloud in its own words: be "
    "brief and exact, use plain sentences, no markdown, lists or code. Use the tools for "
    "arithmetic, times and dates, unit conversion, timers, reminders and notes instead of "
    "guessing. If you can't help, say so in one sentence."
)
RESULT_PREFIX = "[background answer] "


@dataclass
class _Entry:
    role: str  # "user" | "assistant"
    kind: str  # "caption" | "text" | "model" | "result"
    text: str
    task_id: str = ""


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


class ConversationWindow:
    def __init__(
        self,
        *,
        max_entries: int = 48,
        max_chars: int = 6000,
        max_entry_chars: int = 2000,
        max_ask_chars: int = 1000,
        system_prompt: str = SYSTEM_PROMPT,
    ) -> None:
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.max_entry_chars = max_entry_chars
        self.max_ask_chars = max_ask_chars
        self.system_prompt = system_prompt
        self._entries: deque[_Entry] = deque()
        self._chars = 0

    # --- feeding the window -------------------------------------------------------------------
    def append_user_caption(self, delta: str) -> None:
        """A piece of the live caption of the user's speech (consecutive pieces join)."""
        self._append("user", "caption", delta, merge=True)

    def append_user_text(self, text: str) -> None:
        """A message the user typed: an entry of its own."""
        self._append("user", "text", _one_line(text), merge=False)

    def append_model_text(self, delta: str) -> None:
        """A piece of the interaction model's own text (consecutive pieces join)."""
        self._append("assistant", "model", delta, merge=True)

    def append_result(self, task_id: str, delta: str) -> None:
        """A piece of a background answer; pieces of one task join while its entry is in view."""
        if not delta:
            return
        for e in reversed(self._entries):
            if e.kind == "result" and e.task_id == task_id:
                self._grow(e, delta)
                self._trim()
                return
        self._entries.append(_Entry("assistant", "result", delta, task_id))
        self._chars += len(delta)
        self._trim()

    def clear(self) -> None:
        self._entries.clear()
        self._chars = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def chars(self) -> int:
        return self._chars

    # --- building a task ----------------------------------------------------------------------
    def to_messages(self, ask: str | None = None) -> list[ChatMessage]:
        """System prompt, the window oldest first, then `ask` (a typed or clicked request) as
        the last line of the last user message; without `ask` the caller's latest words are it.
        Leading and trailing assistant messages are dropped: the conversation starts with the
        caller and ends with the request."""
        turns: list[tuple[str, list[str]]] = []
        for e in self._entries:
            text = e.text.strip()
            if not text:
                continue
            if e.kind == "result":
                text = RESULT_PREFIX + _one_line(text)
            elif e.kind in ("caption", "model"):
                text = _one_line(text)
            if turns and turns[-1][0] == e.role:
                turns[-1][1].append(text)
            else:
                turns.append((e.role, [text]))
        if ask is not None and _one_line(ask):
            line = _one_line(ask)[: self.max_ask_chars]
            if turns and turns[-1][0] == "user":
                turns[-1][1].append(line)
            else:
                turns.append(("user", [line]))
        while turns and turns[0][0] != "user":
            turns.pop(0)
        while turns and turns[-1][0] != "user":
            turns.pop()
        messages = [ChatMessage("system", self.system_prompt)] if self.system_prompt else []
        messages.extend(ChatMessage(role, "\n".join(lines)) for role, lines in turns)
        return messages

    # --- bounds -------------------------------------------------------------------------------
    def _append(self, role: str, kind: str, text: str, *, merge: bool) -> None:
        if not text:
            return
        last = self._entries[-1] if self._entries else None
        if merge and last is not None and last.kind == kind:
            self._grow(last, text)
        else:
            if len(text) > self.max_entry_chars:
                text = text[-self.max_entry_chars :]
            self._entries.append(_Entry(role, kind, text))
            self._chars += len(text)
        self._trim()

    def _grow(self, entry: _Entry, delta: str) -> None:
        before = len(entry.text)
        entry.text += delta
        if len(entry.text) > self.max_entry_chars:
            # The newest words of a long monologue matter most: keep the tail.
            entry.text = entry.text[-self.max_entry_chars :]
        self._chars += len(entry.text) - before

    def _trim(self) -> None:
        while self._entries and (len(self._entries) > self.max_entries or self._chars > self.max_chars):
            if len(self._entries) == 1:
                e = self._entries[0]
                cut = self._chars - self.max_chars
                e.text = e.text[cut:]
                self._chars -= cut
                break
            self._chars -= len(self._entries.popleft().text)
