"""The `events` data channel: JSON events in both directions (DESIGN.md §8).

This is an external boundary (a browser or gateway writes whatever it likes), so client
events are validated with pydantic and every failure becomes a `ClientEventError` with a
stable `code` that the call turns into an `error` event; nothing a client sends can raise
anything else. Server events are pydantic models too, so the wire format of both directions
lives in this one module. Names follow the OpenAI Realtime API where one fits.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

# --- client -> server ------------------------------------------------------------------------


class InputTextAppend(BaseModel):
    """Typed user text; it rides on the next micro-turn's user-text stream."""

    model_config = ConfigDict(extra="ignore", strict=True)  # e.g. an `event_id` is fine

    type: Literal["input_text.append"]
    text: str


ClientEvent = InputTextAppend
CLIENT_EVENTS: dict[str, type[ClientEvent]] = {"input_text.append": InputTextAppend}


class ClientEventError(ValueError):
    """A client event the server refuses; `code` is what the error event carries."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_client_event(data: str | bytes, max_bytes: int) -> ClientEvent:
    """Validate one data-channel message; raises ClientEventError and nothing else."""
    if isinstance(data, bytes):
        raise ClientEventError("unsupported_binary", "events are JSON text messages, not binary")
    # a str of n chars is at most 4n UTF-8 bytes: only encode when the cheap bound is exceeded
    size = len(data) if len(data) * 4 <= max_bytes else len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ClientEventError("event_too_large", f"event is {size} bytes; the limit is {max_bytes}")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:  # deeply nested arrays raise RecursionError
        raise ClientEventError("malformed_json", f"event is not valid JSON: {str(e)[:100]}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ClientEventError("invalid_event", "an event is a JSON object with a string `type`")
    model = CLIENT_EVENTS.get(obj["type"])
    if model is None:
        known = ", ".join(sorted(CLIENT_EVENTS))
        raise ClientEventError("unknown_event_type", f"unknown event type {obj['type'][:64]!r}; known: {known}")
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'event'}: {err['msg']}" for err in e.errors())
        raise ClientEventError("invalid_event", f"{obj['type']}: {problems[:200]}") from None


# --- server -> client ------------------------------------------------------------------------


class _ServerEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    def to_json(self) -> str:
        return self.model_dump_json()


class SessionCreated(_ServerEvent):
    type: Literal["session.created"] = "session.created"
    call_id: str
    model: str
    trained: bool


class TranscriptUserDelta(_ServerEvent):
    """Live caption of the user's words (the model's caption head)."""

    type: Literal["transcript.user.delta"] = "transcript.user.delta"
    turn: int
    delta: str


class ResponseTextDelta(_ServerEvent):
    """The model's own text stream for one micro-turn."""

    type: Literal["response.text.delta"] = "response.text.delta"
    turn: int
    delta: str


class BackgroundTaskDelta(_ServerEvent):
    """A piece of a background task's answer; (task_id, seq) orders and de-duplicates."""

    type: Literal["background.task.delta"] = "background.task.delta"
    task_id: str
    seq: int
    delta: str


class MetricsLatency(_ServerEvent):
    """server_ms: last input sample of the turn in -> first output sample handed to the output
    track; step_ms: the model compute inside it."""

    type: Literal["metrics.latency"] = "metrics.latency"
    turn: int
    server_ms: float
    step_ms: float


class ErrorEvent(_ServerEvent):
    type: Literal["error"] = "error"
    code: str
    message: str


ServerEvent = (
    SessionCreated | TranscriptUserDelta | ResponseTextDelta | BackgroundTaskDelta | MetricsLatency | ErrorEvent
)
