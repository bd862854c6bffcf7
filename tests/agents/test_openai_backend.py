"""The openai backend against a local server speaking the real chat-completions SSE stream.

The fake server answers each POST /v1/chat/completions with the next scripted response:
a list of SSE `data:` payloads (dicts are JSON-encoded, strings go out raw), an HTTP error,
or a stall. It records every request body, so the tool round trip can be checked on the wire.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from agents.backend import BackendError, TaskContext, make_backend
from agents.backends.openai import OpenAIBackend, OpenAIConfig
from agents.context import SYSTEM_PROMPT
from agents.tools.toolbox import Toolbox
from infra.messages import ChatMessage
from infra.settings import Settings

NOW = datetime(2026, 3, 3, 12, 5, tzinfo=UTC)


def chunk(content: str | None = None, *, role: str | None = None, tool_calls: list[Any] | None = None,
          finish: str | None = None) -> dict[str, Any]:  # fmt: skip
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def text_stream(*pieces: str) -> list[Any]:
    return [chunk("", role="assistant"), *(chunk(p) for p in pieces), chunk(finish="stop"), "[DONE]"]


@dataclass
class Stall:
    after: list[Any] = field(default_factory=list)  # payloads sent before going silent


@dataclass
class FakeServer:
    script: list[Any]
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""
    crlf: bool = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        step = self.script.pop(0)
        if isinstance(step, int):
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=step)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        payloads = step.after if isinstance(step, Stall) else step
        nl = "\r\n" if self.crlf else "\n"
        await resp.write(f": keep-alive{nl}{nl}".encode())
        for p in payloads:
            data = p if isinstance(p, str) else json.dumps(p)
            sep = "" if self.crlf else " "  # the space after "data:" is optional in SSE
            await resp.write(f"data:{sep}{data}{nl}{nl}".encode())
        if isinstance(step, Stall):
            await asyncio.sleep(30)
        return resp


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    fake = FakeServer(script=[])
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}/v1"
    yield fake
    await runner.cleanup()


class Fired:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.event = asyncio.Event()

    async def __call__(self, session_id: str, text: str) -> None:
        self.calls.append((session_id, text))
        self.event.set()


@pytest.fixture
async def fired() -> Fired:
    return Fired()


def make(server: FakeServer, fired: Fired, **kw: Any) -> OpenAIBackend:
    config = OpenAIConfig(base_url=server.url, model="test-model", api_key="sk-test", **kw)
    return OpenAIBackend(config, Toolbox(fired, now=lambda: NOW))


def ctx(text: str, session_id: str = "call-1") -> TaskContext:
    return TaskContext(
        "task-1", session_id, (ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", text)), 0.0, "Asia/Tokyo"
    )


async def collect(backend: OpenAIBackend, c: TaskContext) -> list[str]:
    return [p async for p in backend.run(c)]


async def test_streams_content_deltas(server: FakeServer, fired: Fired) -> None:
    server.script = [text_stream("Twelve times seven", " is ", "84.")]
    b = make(server, fired)
    try:
        assert await collect(b, ctx("what is twelve times seven")) == ["Twelve times seven", " is ", "84."]
    finally:
        await b.aclose()
    body = server.requests[0]
    assert body["stream"] is True and body["model"] == "test-model"
    assert {t["function"]["name"] for t in body["tools"]} >= {
        "calculate", "current_time", "convert_units", "set_timer", "save_note", "list_notes",
    }  # fmt: skip
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][0]["content"].startswith(SYSTEM_PROMPT)
    assert "Tuesday, March 3, 2026, 9:05 PM (Asia/Tokyo)" in body["messages"][0]["content"]
    assert body["messages"][-1] == {"role": "user", "content": "what is twelve times seven"}
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


async def test_tool_call_round_trip(server: FakeServer, fired: Fired) -> None:
    # Fragments as OpenAI and vLLM send them: id and name once, the arguments in pieces.
    first = [
        chunk(role="assistant", tool_calls=[
            {"index": 0, "id": "call_abc", "type": "function", "function": {"name": "calculate", "arguments": ""}}
        ]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"expres'}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": 'sion": "2**100 + 1/3"}'}}]),
        chunk(tool_calls=[
            {"index": 1, "id": "call_def", "type": "function", "function": {"name": "convert_units", "arguments": ""}}
        ]),
        chunk(tool_calls=[{"index": 1, "function": {"arguments": '{"value": 5, "from_unit": "miles", '}}]),
        chunk(tool_calls=[{"index": 1, "function": {"arguments": '"to_unit": "km"}'}}]),
        chunk(finish="tool_calls"),
        "[DONE]",
    ]  # fmt: skip
    server.script = [first, text_stream("Done: ", "both answers.")]
    b = make(server, fired)
    try:
        assert "".join(await collect(b, ctx("two things please"))) == "Done: both answers."
    finally:
        await b.aclose()
    assert len(server.requests) == 2
    msgs = server.requests[1]["messages"]
    assistant, tool_a, tool_b = msgs[-3:]
    assert assistant["role"] == "assistant"
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_abc", "call_def"]
    assert assistant["tool_calls"][0]["function"] == {
        "name": "calculate",
        "arguments": '{"expression": "2**100 + 1/3"}',
    }
    assert tool_a == {
        "role": "tool",
        "tool_call_id": "call_abc",
        "content": "2**100 + 1/3 is 3802951800684688204490109616129/3 (about 1.26765e+30).",
    }
    assert tool_b == {"role": "tool", "tool_call_id": "call_def", "content": "5 miles is 8.04672 kilometers."}


async def test_timer_tool_fires_into_the_call(server: FakeServer, fired: Fired) -> None:
    call = {"index": 0, "id": "c1", "type": "function",
            "function": {"name": "set_timer", "arguments": '{"seconds": 0.05, "reminder": "stretch"}'}}  # fmt: skip
    server.script = [[chunk(tool_calls=[call]), chunk(finish="tool_calls"), "[DONE]"], text_stream("Timer set.")]
    b = make(server, fired)
    try:
        assert await collect(b, ctx("remind me to stretch", session_id="call-7")) == ["Timer set."]
        assert server.requests[1]["messages"][-1]["content"] == "Okay, I'll remind you in 0.05 seconds to stretch."
        await asyncio.wait_for(fired.event.wait(), 5)
        assert fired.calls == [("call-7", "Reminder: stretch.")]
    finally:
        await b.aclose()


async def test_bad_tool_arguments_go_back_to_the_model(server: FakeServer, fired: Fired) -> None:
    calls = [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": "calculate", "arguments": "{oops"}},
        {"index": 1, "id": "c2", "type": "function", "function": {"name": "rm_rf", "arguments": "{}"}},
        {"index": 2, "id": "c3", "type": "function", "function": {"name": "calculate",
                                                                   "arguments": '{"expression": "__import__(1)"}'}},
    ]  # fmt: skip
    server.script = [[chunk(tool_calls=calls), chunk(finish="tool_calls"), "[DONE]"], text_stream("Sorry.")]
    b = make(server, fired)
    try:
        assert await collect(b, ctx("x")) == ["Sorry."]
    finally:
        await b.aclose()
    results = [m["content"] for m in server.requests[1]["messages"] if m["role"] == "tool"]
    assert results[0] == "error: arguments are not valid JSON"
    assert results[1].startswith("error: unknown tool 'rm_rf'")
    assert "not allowed" in results[2]


async def test_tool_rounds_are_bounded(server: FakeServer, fired: Fired) -> None:
    call = {"index": 0, "id": "c", "type": "function", "function": {"name": "list_notes", "arguments": "{}"}}
    loop = [chunk(tool_calls=[call]), chunk(finish="tool_calls"), "[DONE]"]
    server.script = [list(loop) for _ in range(3)]
    b = make(server, fired, max_tool_rounds=2)
    try:
        with pytest.raises(BackendError, match="kept calling tools"):
            await collect(b, ctx("x"))
    finally:
        await b.aclose()
    assert len(server.requests) == 3
    assert "tools" in server.requests[1] and "tools" not in server.requests[2]  # last round: answer now


async def test_malformed_chunk_is_a_clean_failure(server: FakeServer, fired: Fired) -> None:
    server.script = [[chunk("Hello"), "{not json"], [chunk("Hi"), {"choices": "not a list"}]]
    b = make(server, fired)
    try:
        got: list[str] = []
        with pytest.raises(BackendError, match="malformed stream chunk") as e:
            async for p in b.run(ctx("x")):
                got.append(p)
        assert got == ["Hello"]
        assert e.value.__traceback__ is not None and str(e.value) == "the model server sent a malformed stream chunk"
        with pytest.raises(BackendError, match="malformed stream chunk"):
            await collect(b, ctx("x"))
    finally:
        await b.aclose()


async def test_http_500_is_a_clean_failure(server: FakeServer, fired: Fired) -> None:
    server.script = [500]
    b = make(server, fired)
    try:
        with pytest.raises(BackendError, match="HTTP 500"):
            await collect(b, ctx("x"))
    finally:
        await b.aclose()


async def test_timeout_is_a_clean_failure(server: FakeServer, fired: Fired) -> None:
    server.script = [Stall(after=[chunk("partial")])]
    b = make(server, fired, timeout_s=0.3)
    try:
        with pytest.raises(BackendError, match="did not answer in time"):
            await collect(b, ctx("x"))
    finally:
        await b.aclose()


async def test_unreachable_server_is_a_clean_failure(fired: Fired) -> None:
    b = OpenAIBackend(OpenAIConfig(base_url="http://127.0.0.1:9/v1", timeout_s=2), Toolbox(fired))
    try:
        with pytest.raises(BackendError, match="could not reach"):
            await collect(b, ctx("x"))
    finally:
        await b.aclose()


async def test_stream_cut_short_is_a_failure(server: FakeServer, fired: Fired) -> None:
    server.script = [[chunk("Hel")]]  # no finish_reason, no [DONE]
    b = make(server, fired)
    try:
        with pytest.raises(BackendError, match="ended the answer early"):
            await collect(b, ctx("x"))
    finally:
        await b.aclose()


async def test_error_event_mid_stream(server: FakeServer, fired: Fired) -> None:
    server.script = [[chunk("Hel"), {"error": {"message": "CUDA out of memory", "code": 500}}]]
    b = make(server, fired)
    try:
        with pytest.raises(BackendError, match="reported an error") as e:
            await collect(b, ctx("x"))
        assert "CUDA" not in str(e.value)  # details go to the log, not to the caller
    finally:
        await b.aclose()


async def test_crlf_and_no_space_after_colon(server: FakeServer, fired: Fired) -> None:
    server.crlf = True
    server.script = [text_stream("a", "b")]
    b = make(server, fired)
    try:
        assert await collect(b, ctx("x")) == ["a", "b"]
    finally:
        await b.aclose()


async def test_empty_answer_is_a_failure(server: FakeServer, fired: Fired) -> None:
    server.script = [text_stream()]
    b = make(server, fired)
    try:
        with pytest.raises(BackendError, match="empty answer"):
            await collect(b, ctx("x"))
    finally:
        await b.aclose()


async def test_make_backend_reads_settings(server: FakeServer, fired: Fired) -> None:
    settings = Settings(
        agent_backend="openai", agent_openai_base_url=server.url, agent_openai_model="m", agent_openai_api_key="k"
    )
    server.script = [text_stream("ok")]
    b = make_backend(settings, fired)
    try:
        assert b.name == "openai"
        assert [p async for p in b.run(ctx("x"))] == ["ok"]
    finally:
        await b.aclose()
    assert server.requests[0]["model"] == "m"
    assert server.headers[0]["Authorization"] == "Bearer k"
