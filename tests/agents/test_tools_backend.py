"""The tools backend end to end: spoken and typed phrasings in, a few deltas out."""

from datetime import UTC, datetime

import pytest

from agents.backend import TaskContext, make_backend
from agents.backends.tools import REFUSAL, ToolsBackend, _candidates, spoken_expression
from agents.context import ConversationWindow
from agents.tools.toolbox import Toolbox
from infra.messages import ChatMessage
from infra.settings import Settings

NOW = datetime(2026, 3, 3, 12, 5, tzinfo=UTC)  # a Tuesday


async def _fire(session_id: str, text: str) -> None:
    pass


@pytest.fixture
async def backend():  # type: ignore[no-untyped-def]
    b = ToolsBackend(Toolbox(_fire, now=lambda: NOW))
    yield b
    await b.aclose()


async def run(b: ToolsBackend, *said: str, timezone: str | None = None) -> list[str]:
    messages = (ChatMessage("system", "prompt"), *(ChatMessage("user", s) for s in said))
    return [p async for p in b.run(TaskContext("t", "s", messages, 0.0, timezone))]


@pytest.mark.parametrize(
    ("said", "answer"),
    [
        ("what is twelve times seven?", "12 times 7 is 84."),
        ("What's 1/3 + 1/6", "1/3 + 1/6 is 0.5."),
        ("calculate 2**100", "2**100 is 1267650600228229401496703205376."),
        ("one hundred and five divided by seven", "105 divided by 7 is 15."),
        ("what's fifteen percent of eighty", "15 percent of 80 is 12."),
        ("what is the square root of 144", "The square root of 144 is 12."),
        ("hey, could you tell me what's 2.5 plus 0.25?", "2.5 plus 0.25 is 2.75."),
        ("what is seven squared minus one", "7 squared minus 1 is 48."),
        ("okay so um what's twelve times seven", "12 times 7 is 84."),
        ("what time is it in Tokyo?", "It's 9:05 PM on Tuesday, March 3, 2026 in Tokyo (UTC+9)."),
        ("what day is 2026-12-25", "December 25, 2026 is a Friday."),
        ("what day of the week is December twenty-fifth twenty twenty-six?", "December 25, 2026 is a Friday."),
        ("how many days until Christmas?", "Friday, December 25, 2026 is 297 days from today."),
        ("what's the date today", "Today is Tuesday, March 3, 2026."),
        ("convert 5 miles to kilometers", "5 miles is 8.04672 kilometers."),
        ("how many feet in a mile", "1 mile is 5280 feet."),
        ("how many ounces are in two pounds", "2 pounds is 32 ounces."),
        ("what's 100 degrees fahrenheit in celsius", "100 degrees Fahrenheit is about 37.7778 degrees Celsius."),
        ("5 inches in cm", "5 inches is 12.7 centimeters."),
    ],
)
async def test_phrasings(backend: ToolsBackend, said: str, answer: str) -> None:
    assert "".join(await run(backend, said)) == answer


async def test_time_uses_the_callers_zone(backend: ToolsBackend) -> None:
    said = "".join(await run(backend, "what time is it", timezone="Europe/Berlin"))
    assert said == "It's 1:05 PM on Tuesday, March 3, 2026 (UTC+1)."


@pytest.mark.parametrize(
    "said",
    [
        "calculate __import__('os').system('touch /tmp/pwned')",
        "what is (1).__class__.__bases__",
        "compute open('/etc/passwd').read()",
        "what's 9**9**9",
    ],
)
async def test_code_and_bombs_get_a_clear_refusal(backend: ToolsBackend, said: str) -> None:
    answer = "".join(await run(backend, said))
    assert answer.startswith("Sorry, I can't calculate that:")
    assert "not allowed" in answer or "too large" in answer


@pytest.mark.parametrize("said", ["write me a poem about the sea", "what is the capital of France", "who won"])
async def test_anything_else_is_politely_refused(backend: ToolsBackend, said: str) -> None:
    assert "".join(await run(backend, said)) == REFUSAL


async def test_answers_stream_as_a_few_deltas(backend: ToolsBackend) -> None:
    pieces = await run(backend, "write me a poem")
    assert 2 <= len(pieces) <= 6
    assert "".join(pieces) == REFUSAL
    assert all(pieces)


async def test_empty_ask(backend: ToolsBackend) -> None:
    assert "didn't catch" in "".join(await run(backend))


async def test_reads_the_ask_from_a_conversation_window(backend: ToolsBackend) -> None:
    window = ConversationWindow()
    for piece in ["remember that ", "my locker ", "is 42"]:
        window.append_user_caption(piece)
    window.append_model_text("Sure, noted.")
    window.append_user_caption("so what's twelve times seven")
    window.append_model_text("Let me check.")
    ctx = TaskContext("t", "s", tuple(window.to_messages()), 0.0)
    assert "".join([p async for p in backend.run(ctx)]) == "12 times 7 is 84."
    ctx = TaskContext("t", "s", tuple(window.to_messages("what did I ask you to remember?")), 0.0)
    assert "".join([p async for p in backend.run(ctx)]) == "You asked me to remember: your locker is 42."


def test_spoken_expression() -> None:
    assert spoken_expression("12 times 7") == "12 * 7"
    assert spoken_expression("2 to the power of 10") == "2 ** 10"
    assert spoken_expression("the cube root of 27 plus 1") == "(27)**(1/3) + 1"
    assert spoken_expression("10 mod 3 equals") == "10 % 3"


def test_candidates_find_the_request_in_run_on_captions() -> None:
    cands = _candidates("okay thanks. so um what's twelve times seven")
    assert cands[0] == "okay thanks. so um what's twelve times seven"
    assert "what's twelve times seven" in cands


async def test_make_backend_builds_tools_by_default() -> None:
    b = make_backend(Settings(), _fire)
    assert b.name == "tools"
    ctx = TaskContext("t", "s", (ChatMessage("user", "what is six times seven"),), 0.0)
    assert "".join([p async for p in b.run(ctx)]) == "6 times 7 is 42."
    await b.aclose()
    with pytest.raises(ValueError, match="unknown agent backend"):
        make_backend(Settings(), _fire, name="nope")
