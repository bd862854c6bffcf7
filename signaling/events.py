"""The `events` data channel: JSON events in both directions (DESIGN.md §8).

This is an external boundary (a browser or gateway writes whatever it likes), so client
events are validated with pydantic and every failure becomes a `ClientEventError` with a
stable `code` that the call turns into an `error` event; nothing a client sends can raise
anything else. Server events are pydantic models too, so the wire format of both directions
lives in this one module. Names follow the OpenAI Realtime API where one fits.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# --- client -> server ------------------------------------------------------------------------


class InputTextAppend(BaseModel):
    """Typed user text; it rides on the next micro-turn's user-text stream."""

    model_config = ConfigDict(extra="ignore", strict=True)  # e.g. an `event_id` is fine

    type: Literal["input_text.append"]
    text: str


MAX_TASK_TEXT = 2000  # characters of one background ask (the conversation window rides along anyway)
# task ids travel into Redis keys' payloads and the page's DOM: a small safe alphabet
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TIMEZONE = re.compile(r"[A-Za-z0-9_+\-/]{1,64}")
TIMER_PREFIX = "timer-"  # ids of timer/reminder firings, made by the agents


def _check_task_id(v: str) -> str:
    if not _TASK_ID.fullmatch(v):
        raise ValueError("must be 1-64 characters of A-Z a-z 0-9 _ -")
    return v


class BackgroundTaskCreate(BaseModel):
    """Ask the background model something; the conversation so far rides along as context."""

    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["background.task.create"]
    task_id: str | None = None  # chosen by the client, or made by the server
    text: str = Field(max_length=MAX_TASK_TEXT)
    timezone: str | None = None  # the page's IANA zone, for "what time is it" and timers

    @field_validator("task_id")
    @classmethod
    def _task_id(cls, v: str | None) -> str | None:
        if v is None:
            return v
        _check_task_id(v)
        if v.startswith(TIMER_PREFIX):
            raise ValueError(f"ids starting with {TIMER_PREFIX!r} are reserved for timers")
        return v

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str | None) -> str | None:
        if v is not None and not _TIMEZONE.fullmatch(v):
            raise ValueError("must be an IANA time zone name such as Europe/Paris")
        return v


class BackgroundTaskCancel(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["background.task.cancel"]
    task_id: str

    @field_validator("task_id")
    @classmethod
    def _task_id(cls, v: str) -> str:
        return _check_task_id(v)


ClientEvent = InputTextAppend | BackgroundTaskCreate | BackgroundTaskCancel
CLIENT_EVENTS: dict[str, type[ClientEvent]] = {
    "input_text.append": InputTextAppend,
    "background.task.create": BackgroundTaskCreate,
    "background.task.cancel": BackgroundTaskCancel,
}


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


class BackgroundTaskCreated(_ServerEvent):
    """A task was queued: asked by the client, delegated by the model, or a timer that fired."""

    type: Literal["background.task.created"] = "background.task.created"
    task_id: str
    source: Literal["client", "delegate", "timer"]
    text: str = ""  # the ask (client tasks); empty for delegations and timers


class BackgroundTaskDelta(_ServerEvent):
    """A piece of a background task's answer; (task_id, seq) orders and de-duplicates."""

    type: Literal["background.task.delta"] = "background.task.delta"
    task_id: str
    seq: int
    delta: str


class BackgroundTaskDone(_ServerEvent):
    type: Literal["background.task.done"] = "background.task.done"
    task_id: str


class BackgroundTaskFailed(_ServerEvent):
    type: Literal["background.task.failed"] = "background.task.failed"
    task_id: str
    error: str  # human-readable, safe to show


class BackgroundTaskCancelled(_ServerEvent):
    type: Literal["background.task.cancelled"] = "background.task.cancelled"
    task_id: str


class MetricsLatency(_ServerEvent):
    """server_ms: last input sample of the turn in -> first output sample handed to the output
    track; step_ms: the model compute inside it; playout_ms: the model audio queued ahead of
    that sample in the call's playout buffer (it plays after them: latency on top of server_ms)."""

    type: Literal["metrics.latency"] = "metrics.latency"
    turn: int
    server_ms: float
    step_ms: float
    playout_ms: float = 0.0


class SessionMoved(_ServerEvent):
    """The model's session moved to another worker (one drained or died): the caller may have
    heard `gap_ms` of silence; the conversation goes on. Worker names stay on the server."""

    type: Literal["session.moved"] = "session.moved"
    reason: Literal["worker_draining", "worker_lost"]
    gap_ms: float


class ErrorEvent(_ServerEvent):
    type: Literal["error"] = "error"
    code: str
    message: str


ServerEvent = (
    SessionCreated
    | TranscriptUserDelta
    | ResponseTextDelta
    | BackgroundTaskCreated
    | BackgroundTaskDelta
    | BackgroundTaskDone
    | BackgroundTaskFailed
    | BackgroundTaskCancelled
    | MetricsLatency
    | SessionMoved
    | ErrorEvent
)
