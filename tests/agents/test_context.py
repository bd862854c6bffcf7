"""The conversation window a task carries: merged deltas, alternation, bounds."""

import subprocess
import sys

from agents.context import RESULT_PREFIX, SYSTEM_PROMPT, ConversationWindow
from infra.messages import ChatMessage


def test_deltas_merge_and_roles_alternate() -> None:
    w = ConversationWindow()
    w.append_model_text("Hi! How can I help?")  # before the caller spoke: dropped
    for piece in ["what's ", "the time ", "in Tokyo"]:
        w.append_user_caption(piece)
    w.append_model_text("Let me ")
    w.append_model_text("check.")
    w.append_result("task-1", "It's 9 PM ")
    w.append_user_caption("thanks and")
    w.append_result("task-1", "in Tokyo.")  # a late piece of the same answer joins its entry
    w.append_user_text("also convert 5 miles\nto km")
    msgs = w.to_messages()
    assert msgs == [
        ChatMessage("system", SYSTEM_PROMPT),
        ChatMessage("user", "what's the time in Tokyo"),
        ChatMessage("assistant", f"Let me check.\n{RESULT_PREFIX}It's 9 PM in Tokyo."),
        ChatMessage("user", "thanks and\nalso convert 5 miles to km"),
    ]


def test_ask_is_the_last_line_of_the_last_user_message() -> None:
    w = ConversationWindow()
    w.append_user_caption("remember that my locker is 42")
    w.append_model_text("Got it.")
    msgs = w.to_messages("what did I ask you to remember?")
    assert msgs[-1] == ChatMessage("user", "what did I ask you to remember?")
    w.append_user_caption("um")
    msgs = w.to_messages("  what is\n two plus two ")
    assert msgs[-1] == ChatMessage("user", "um\nwhat is two plus two")
    assert [m.role for m in msgs] == ["system", "user", "assistant", "user"]


def test_trailing_model_text_is_dropped() -> None:
    w = ConversationWindow()
    w.append_user_caption("what's twelve times seven")
    w.append_model_text("let me work that out")
    msgs = w.to_messages()
    assert msgs[-1] == ChatMessage("user", "what's twelve times seven")


def test_empty_window() -> None:
    w = ConversationWindow()
    assert w.to_messages() == [ChatMessage("system", SYSTEM_PROMPT)]
    assert w.to_messages("hello") == [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", "hello")]
    assert ConversationWindow(system_prompt="").to_messages("x") == [ChatMessage("user", "x")]


def test_bounded_in_characters_oldest_first() -> None:
    w = ConversationWindow(max_chars=200, max_entries=100)
    for i in range(100):
        w.append_user_text(f"message number {i:03d}")
        w.append_model_text(f"reply {i:03d}")
        assert w.chars <= 200
    msgs = w.to_messages()
    text = "\n".join(m.content for m in msgs[1:])
    assert "message number 099" in text
    assert "message number 000" not in text
    assert sum(len(m.content) for m in msgs[1:]) <= 200 + len(msgs)


def test_bounded_in_entries() -> None:
    w = ConversationWindow(max_entries=4)
    for i in range(10):
        w.append_user_text(f"u{i}")
        w.append_model_text(f"m{i}")
    assert len(w) == 4
    assert [m.content for m in w.to_messages()[1:]] == ["u8", "m8", "u9"]


def test_a_long_monologue_keeps_its_tail() -> None:
    w = ConversationWindow(max_entry_chars=50, max_chars=1000)
    for i in range(100):
        w.append_user_caption(f"word{i} ")
    (msg,) = w.to_messages()[1:]
    assert len(msg.content) <= 50
    assert msg.content.endswith("word99")
    w2 = ConversationWindow(max_chars=30, max_entry_chars=1000)
    w2.append_user_text("x" * 100 + "the end")
    assert w2.chars == 30
    assert w2.to_messages()[-1].content.endswith("the end")


def test_ask_is_bounded() -> None:
    w = ConversationWindow(max_ask_chars=10)
    assert w.to_messages("a" * 100)[-1].content == "a" * 10


def test_imports_neither_model_nor_torch() -> None:
    code = (
        "import sys, agents.context, agents.backend, agents.backends.tools, agents.backends.openai; "
        "bad = [m for m in sys.modules if m == 'torch' or m == 'model' or m.startswith(('torch.', 'model.'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
