"""Typed messages that cross a process boundary (edge <-> worker <-> agent).

msgspec structs, never ad-hoc dicts. Audio travels as little-endian float32 bytes and video
as raw uint8 RGB bytes so a message encodes to msgpack without copies of Python lists;
`audio_array()` / `video_array()` give numpy views.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

TURN_SAMPLES = 3200  # 200 ms at 16 kHz; the model config checks it agrees
FRAME_SHAPE = (120, 160, 3)  # (H, W, C) uint8 RGB


class InputError(ValueError):
    """Bad input from a client: the message names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class MicroTurnInput(msgspec.Struct, kw_only=True):
    """200 ms of everything a session received: user audio, at most one frame, typed text,
    and background-model result text that arrived since the last turn."""

    audio: bytes  # float32 LE, TURN_SAMPLES samples, 16 kHz mono in [-1, 1]
    session_id: str = ""
    turn: int = 0
    video: bytes | None = None  # uint8 RGB, FRAME_SHAPE
    text: str = ""  # typed user text
    background: str = ""  # background-model result text
    gap: bool = False  # audio was (partly) missing and zero-filled

    @classmethod
    def from_arrays(
        cls,
        audio: np.ndarray,
        *,
        video: np.ndarray | None = None,
        text: str = "",
        background: str = "",
        session_id: str = "",
        turn: int = 0,
        gap: bool = False,
    ) -> MicroTurnInput:
        audio = np.asarray(audio)
        if audio.ndim != 1 or audio.shape[0] != TURN_SAMPLES:
            raise InputError("audio", f"expected shape ({TURN_SAMPLES},) mono float32, got {audio.shape}")
        msg = cls(
            audio=audio.astype("<f4", copy=False).tobytes(),
            video=None if video is None else _frame_bytes(video),
            text=text,
            background=background,
            session_id=session_id,
            turn=turn,
            gap=gap,
        )
        msg.validate()
        return msg

    def validate(self) -> None:
        """Raise InputError naming the field for anything the model cannot take."""
        if len(self.audio) != TURN_SAMPLES * 4:
            raise InputError(
                "audio",
                f"expected {TURN_SAMPLES} float32 samples ({TURN_SAMPLES * 4} bytes), got {len(self.audio)} bytes",
            )
        a = self.audio_array()
        if not np.isfinite(a).all():
            raise InputError("audio", "contains NaN or infinite samples")
        if self.video is not None and len(self.video) != math.prod(FRAME_SHAPE):
            raise InputError("video", f"expected a uint8 RGB frame of shape {FRAME_SHAPE}, got {len(self.video)} bytes")
        if self.turn < 0:
            raise InputError("turn", f"must be >= 0, got {self.turn}")

    def audio_array(self) -> np.ndarray:
        return np.frombuffer(self.audio, dtype="<f4")

    def video_array(self) -> np.ndarray | None:
        if self.video is None:
            return None
        return np.frombuffer(self.video, dtype=np.uint8).reshape(FRAME_SHAPE)


class MicroTurnOutput(msgspec.Struct, kw_only=True):
    """What the model produced for one micro-turn of one session."""

    session_id: str
    turn: int
    audio: bytes  # float32 LE, TURN_SAMPLES samples
    text: str = ""  # the model's own text stream (inner monologue / what it says)
    caption: str = ""  # live caption of the user's words
    text_tokens: list[int] = msgspec.field(default_factory=list)
    caption_tokens: list[int] = msgspec.field(default_factory=list)
    delegate: bool = False  # the model emitted <delegate> this turn
    gap: bool = False  # the input of this turn was missing or late and stepped as silence
    step_ms: float = 0.0  # model compute time for the batch this turn ran in
    text_dropped: int = 0  # typed-text tokens dropped this turn because the session's backlog was full
    # set on the session's last message: its step raised, the worker closed it (a readable reason)
    error: str = ""

    def audio_array(self) -> np.ndarray:
        return np.frombuffer(self.audio, dtype="<f4")


def _frame_bytes(frame: np.ndarray) -> bytes:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.shape != FRAME_SHAPE:
        raise InputError("video", f"expected uint8 RGB of shape {FRAME_SHAPE}, got {frame.dtype} {frame.shape}")
    return frame.tobytes()


# --- background agents (DESIGN.md §7) ---------------------------------------------------------


class ChatMessage(msgspec.Struct, frozen=True):
    role: str  # "system" | "user" | "assistant" | "tool"
    content: str


class BackgroundTask(msgspec.Struct, kw_only=True):
    """One ask for the background model: the conversation window, oldest first; the last
    "user" message is the ask."""

    task_id: str  # unique, made by the edge (secrets.token_hex) or the session
    session_id: str
    messages: list[ChatMessage]
    created_at: float  # unix seconds
    source: str = "client"  # "client" (background.task.create) | "delegate" (<delegate>)
    timezone: str | None = None  # IANA name from the page, if known


class TaskCancel(msgspec.Struct, kw_only=True, tag=True):
    task_id: str
    session_id: str


class SessionEnded(msgspec.Struct, kw_only=True, tag=True):
    session_id: str


# What travels on bg:control: every agent hears every message and picks what concerns it
# (tagged structs, so one decoder tells them apart).
ControlMessage = TaskCancel | SessionEnded


class TaskEvent(msgspec.Struct, kw_only=True):
    """One piece of a task's outcome on bg:results:{session}.

    `seq` counts 0, 1, 2, ... per task_id and a repeated (task_id, seq) is a duplicate: a
    retried task streams again from seq 0 and the receiver drops what it already has, so the
    session hears every piece exactly once (this relies on a retry producing the same text,
    which holds for the tools backend and for a deterministic LLM setting)."""

    task_id: str
    seq: int
    kind: str  # "delta" | "done" | "failed"
    text: str = ""  # delta text (kind == "delta")
    error: str = ""  # human-readable reason (kind == "failed")


# --- horizontal scale: edge <-> worker control (DESIGN.md §9; issue 12) ------------------------

# MicroTurnOutput.error of a session's last output when its worker drains (SIGTERM) or hands it
# back: not a failure of the call, the edge places it again (SessionOpen restore=True).
WORKER_DRAINING = "worker_draining"


class SessionOpen(msgspec.Struct, kw_only=True, tag="open"):
    request_id: str
    session_id: str
    seed: int
    reply_to: str  # the stream the ControlReply goes to (keys.replies(edge_id))
    restore: bool = False  # rebuild the session's window from keys.session_log (failover)


class SessionClose(msgspec.Struct, kw_only=True, tag="close"):
    request_id: str
    session_id: str
    reply_to: str


# What travels on keys.worker_ctl(worker_id) (tagged, so one decoder tells them apart).
ControlRequest = SessionOpen | SessionClose


class ControlReply(msgspec.Struct, kw_only=True):
    request_id: str
    ok: bool
    worker_id: str
    error: str = ""  # human-readable
    code: str = ""  # "full" | "draining" | "bad_request" | "error"


class SessionMoved(msgspec.Struct, kw_only=True):
    """A session now runs on another worker (edge -> page event "session.moved")."""

    session_id: str
    from_worker: str
    to_worker: str
    gap_ms: float


# --- failover: what a session's sequence holds, one record per micro-turn (DESIGN.md §9) ------


class TurnRecord(msgspec.Struct, kw_only=True):
    """One micro-turn of a session as its sequence holds it, appended to keys.session_log.

    The positions themselves, not the raw input: the dMel bins the model read (exact whatever
    the featurizer's state, and 20x smaller than the float32 audio), the text and background
    tokens that made it into IN_k, and each output position's text token and bins (what the
    next position was fed). A new worker rebuilds the session's KV window from these with a
    chunked prefill (model/engine.py `Engine.restore`). Bins are uint8 bytes (dmel_bins <= 256),
    row-major (positions_per_turn, frames_per_position, n_mels).
    """

    session_id: str
    seed: int
    turn: int  # the engine's step count (what the time embeddings and noise keys use)
    input_turn: int  # the MicroTurnInput.turn (the edge's numbering; the worker resumes after it)
    start_pos: int  # absolute position of IN_k's first position
    in_bins: bytes  # the user-audio positions' dMel bins
    video: bytes | None = None  # the frame, raw uint8 RGB (patches are recomputed from it)
    text_ids: list[int] = msgspec.field(default_factory=list)  # typed tokens fed this turn
    bg_ids: list[int] = msgspec.field(default_factory=list)  # background tokens fed this turn
    prev_token: int = 0  # what output slot 0 was fed (the previous turn's last output)
    prev_bins: bytes = b""
    out_tokens: list[int] = msgspec.field(default_factory=list)
    out_bins: bytes = b""  # each output position's mel as bins
    speaking: bool = False  # the speak gate's state after the turn
    audio_tail: bytes = b""  # float32 LE: the featurizer's overlap after this turn's audio
    # typed / background tokens still queued after the turn (usually empty)
    pending_text: list[int] = msgspec.field(default_factory=list)
    pending_bg: list[int] = msgspec.field(default_factory=list)
