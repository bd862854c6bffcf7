"""Any OpenAI-compatible `/v1/chat/completions` server as a backend: vLLM, SGLang, llama.cpp
server, Ollama, OpenAI.

One request per round with `stream: true`; the answer is read as Server-Sent Events (`data:`
lines, events ended by a blank line, `data: [DONE]` last) and each `choices[0].delta.content`
is passed on as it arrives. Tool calls stream as fragments (`delta.tool_calls[i]`: an index,
the id and function name once, the JSON arguments in pieces); when a round ends with them, the
built-in tools run, their results go back as `role: tool` messages and the conversation
continues — at most `max_tool_rounds` rounds, the last one without tools.

Every failure the user could see — connection refused, an HTTP error, a silence longer than
the timeout, a chunk that does not parse, a stream cut short — is a `BackendError` with a
short, safe message; the details go to the log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from aiohttp.http_exceptions import HttpProcessingError

from agents.backend import BackendError, TaskContext
from agents.context import SYSTEM_PROMPT
from agents.tools import clock
from agents.tools.functions import TOOL_SPECS, call_tool
from agents.tools.toolbox import Toolbox
from infra.logging import get_logger

log = get_logger(__name__)

MAX_LINE_BYTES = 1 << 20  # one SSE line; a chunk is a few hundred bytes
MAX_ANSWER_CHARS = 16_000
MAX_TOOL_CALLS_PER_ROUND = 8


@dataclass(frozen=True)
class OpenAIConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "default"
    api_key: str | None = None
    timeout_s: float = 60.0  # connect, and the longest silence inside a stream
    max_tool_rounds: int = 4
    max_tokens: int | None = 512
    temperature: float | None = None


# --- the stream's wire format (external JSON: validated, unknown fields ignored) --------------
class _FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    type: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct):
    role: str | None = None
    content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: str | None = None


class _Error(msgspec.Struct):
    message: str = ""


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    error: _Error | str | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


@dataclass
class _ToolCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class _Round:
    """What one streamed response left behind besides its text."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, _ToolCall] = field(default_factory=dict)
    finish_reason: str | None = None

    def add_tool_delta(self, d: _ToolCallDelta) -> None:
        index = d.index
        if index is None:  # servers that omit it send each call whole, with its own id
            same = self.calls and d.id in (None, self.calls[max(self.calls)].id)
            index = max(self.calls) if same else len(self.calls)
        call = self.calls.get(index)
        if call is None:
            if len(self.calls) >= MAX_TOOL_CALLS_PER_ROUND:
                raise BackendError("the model asked for too many tool calls at once")
            call = self.calls[index] = _ToolCall()
        if d.id:
            call.id = d.id
        if d.function is not None:
            if d.function.name and d.function.name != call.name:
                # Sent once (OpenAI, vLLM) or, by a few servers, in pieces.
                call.name = d.function.name if not call.name else call.name + d.function.name
            if d.function.arguments:
                call.arguments += d.function.arguments


async def _sse_data(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The `data` of each Server-Sent Event (multi-line data joined with newlines)."""
    data: list[str] = []
    while True:
        try:
            # Bounded by the reader's high-water mark (2 * read_bufsize = MAX_LINE_BYTES).
            raw = await content.readuntil(b"\n")
        except (ValueError, HttpProcessingError) as e:  # a line beyond that bound
            raise BackendError("the model server sent a malformed stream (a line too long)") from e
        if not raw:
            break
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue  # a comment / keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
        # "event", "id", "retry": nothing to do for chat completions
    if data:
        yield "\n".join(data)


class OpenAIBackend:
    name = "openai"

    def __init__(self, config: OpenAIConfig, toolbox: Toolbox) -> None:
        self.config = config
        self.toolbox = toolbox
        self._http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self.config.base_url.rstrip("/") + "/chat/completions"

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.config.timeout_s, sock_read=self.config.timeout_s
                ),
                read_bufsize=MAX_LINE_BYTES // 2,
            )
        return self._http

    async def run(self, ctx: TaskContext) -> AsyncIterator[str]:
        messages = self._wire_messages(ctx)
        said = 0
        for round_no in range(self.config.max_tool_rounds + 1):
            with_tools = round_no < self.config.max_tool_rounds
            rnd = _Round()
            async for piece in self._stream(messages, rnd, with_tools=with_tools):
                if said + len(piece) > MAX_ANSWER_CHARS:
                    piece = piece[: MAX_ANSWER_CHARS - said]
                    log.warning("openai.answer_truncated", task_id=ctx.task_id, chars=MAX_ANSWER_CHARS)
                if piece:
                    said += len(piece)
                    yield piece
                if said >= MAX_ANSWER_CHARS:
                    return
            if not rnd.calls:
                if said == 0:
                    raise BackendError("the model returned an empty answer")
                return
            if not with_tools:
                raise BackendError("the model kept calling tools without answering")
            calls = [rnd.calls[i] for i in sorted(rnd.calls)]
            for n, call in enumerate(calls):
                call.id = call.id or f"call_{round_no}_{n}"
            messages.append(
                {
                    "role": "assistant",
                    "content": "".join(rnd.text) or None,
                    "tool_calls": [
                        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments or "{}"}}
                        for c in calls
                    ],
                }
            )
            for c in calls:
                result = call_tool(self.toolbox, ctx, c.name, c.arguments)
                log.info("openai.tool_call", task_id=ctx.task_id, tool=c.name, result=result[:200])
                messages.append({"role": "tool", "tool_call_id": c.id, "content": result})

    def _wire_messages(self, ctx: TaskContext) -> list[dict[str, Any]]:
        now = self.toolbox.now()
        zone = clock.user_zone(ctx.timezone)
        local = now.astimezone(zone) if zone else now
        when = f"Now it is {clock.say_date(local.date())}, {clock.say_time(local)} ({ctx.timezone or 'UTC'})."
        messages: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in ctx.messages]
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n{when}"}
        else:
            messages.insert(0, {"role": "system", "content": f"{SYSTEM_PROMPT}\n{when}"})
        return messages

    async def _stream(self, messages: list[dict[str, Any]], rnd: _Round, *, with_tools: bool) -> AsyncIterator[str]:
        body: dict[str, Any] = {"model": self.config.model, "messages": messages, "stream": True}
        if with_tools:
            body["tools"] = TOOL_SPECS
            body["tool_choice"] = "auto"
        if self.config.max_tokens is not None:
            body["max_tokens"] = self.config.max_tokens
        if self.config.temperature is not None:
            body["temperature"] = self.config.temperature
        headers = {"Accept": "text/event-stream"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        done = False
        try:
            headers["Content-Type"] = "application/json"
            async with self._session().post(self.url, data=msgspec.json.encode(body), headers=headers) as resp:
                if resp.status != 200:
                    detail = (await resp.content.read(2000)).decode("utf-8", errors="replace")
                    log.warning("openai.http_error", status=resp.status, url=self.url, detail=detail[:500])
                    raise BackendError(f"the model server answered with HTTP {resp.status}")
                async for data in _sse_data(resp.content):
                    if data.strip() == "[DONE]":
                        done = True
                        break
                    try:
                        chunk = _decode_chunk(data)
                    except (msgspec.DecodeError, msgspec.ValidationError) as e:
                        log.warning("openai.malformed_chunk", error=str(e), data=data[:300])
                        raise BackendError("the model server sent a malformed stream chunk") from e
                    if chunk.error is not None:
                        message = chunk.error if isinstance(chunk.error, str) else chunk.error.message
                        log.warning("openai.stream_error", error=message[:500])
                        raise BackendError("the model server reported an error mid-answer")
                    for choice in chunk.choices:
                        if choice.index != 0:
                            continue  # n > 1 is never requested
                        if choice.delta.tool_calls:
                            for tc in choice.delta.tool_calls:
                                rnd.add_tool_delta(tc)
                        if choice.finish_reason:
                            rnd.finish_reason = choice.finish_reason
                        if choice.delta.content:
                            rnd.text.append(choice.delta.content)
                            yield choice.delta.content
        except TimeoutError as e:
            log.warning("openai.timeout", url=self.url, timeout_s=self.config.timeout_s)
            raise BackendError("the model server did not answer in time") from e
        except aiohttp.ClientError as e:
            log.warning("openai.connection_error", url=self.url, error=repr(e))
            raise BackendError("could not reach the model server") from e
        if not done and rnd.finish_reason is None:
            raise BackendError("the model server ended the answer early")

    async def session_ended(self, session_id: str) -> None:
        await self.toolbox.session_ended(session_id)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self.toolbox.aclose()
