"""Per-call notes: saved, read back, bounded, forgotten when the call ends."""

import pytest

from agents.backend import TaskContext
from agents.backends.tools import ToolsBackend
from agents.tools.notes import MAX_NOTE_CHARS, NoteError, Notes, extract_note
from agents.tools.toolbox import Toolbox, ToolLimits
from infra.messages import ChatMessage


async def _nofire(session_id: str, text: str) -> None:
    raise AssertionError("no timer here")


async def ask(backend: ToolsBackend, session_id: str, *said: str) -> str:
    messages = tuple(ChatMessage("user", s) for s in said)
    return "".join([p async for p in backend.run(TaskContext("t", session_id, messages, 0.0))])


@pytest.mark.parametrize(
    ("text", "note"),
    [
        ("Remember that my locker number is 42.", "my locker number is 42"),
        ("please remember the wifi password is tulip", "the wifi password is tulip"),
        ("note: buy milk", "buy milk"),
        ("can you make a note that the meeting moved to Friday", "the meeting moved to Friday"),
        ("don't forget I parked on level 3", "I parked on level 3"),
        ("what is twelve times seven", None),
        ("remember what I told you?", None),
    ],
)
def test_extract_note(text: str, note: str | None) -> None:
    assert extract_note(text) == note


async def test_save_and_list_per_call() -> None:
    backend = ToolsBackend(Toolbox(_nofire))
    assert await ask(backend, "a", "Remember that my locker number is 42.") == "Got it, I'll remember that."
    assert await ask(backend, "a", "remember the car is blue") == "Got it, I'll remember that."
    assert await ask(backend, "a", "remember that my locker number is 42") == "I already have that noted."
    listed = await ask(backend, "a", "What did I ask you to remember?")
    assert listed == "You asked me to remember 2 things. 1. your locker number is 42. 2. the car is blue."
    assert "haven't asked me to remember" in await ask(backend, "b", "what did I ask you to remember")
    await backend.session_ended("a")
    assert "haven't asked me to remember" in await ask(backend, "a", "what did I ask you to remember")
    assert "ended" in await ask(backend, "a", "remember that this is too late")
    await backend.aclose()


async def test_notes_come_back_from_the_window_on_another_agent() -> None:
    # The note was saved by a task that ran on another agent process: this backend never saw
    # it, but the conversation window carries the caller's words.
    fresh = ToolsBackend(Toolbox(_nofire))
    listed = await ask(
        fresh, "a", "okay. Remember that my locker number is 42.", "and what's the time", "what do you remember?"
    )
    assert listed == "You asked me to remember: your locker number is 42."
    await fresh.aclose()


def test_notes_are_bounded() -> None:
    notes = Notes(max_per_session=2)
    assert notes.add("s", "one")
    assert notes.add("s", "two")
    with pytest.raises(NoteError, match="already keeping 2"):
        notes.add("s", "three")
    with pytest.raises(NoteError, match="too long"):
        notes.add("t", "x" * (MAX_NOTE_CHARS + 1))
    assert notes.clear("s") == 2
    assert notes.get("s") == []


async def test_forget_clears() -> None:
    tb = Toolbox(_nofire, ToolLimits(max_notes_per_session=4))
    backend = ToolsBackend(tb)
    await ask(backend, "a", "remember that x is 1")
    assert await ask(backend, "a", "forget everything") == "Okay, I forgot everything you asked me to remember."
    assert tb.notes.get("a") == []
    await backend.aclose()
