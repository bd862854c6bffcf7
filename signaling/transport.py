"""Frames <-> tracks for one call: the media plane wired to the bus.

Inbound: the peer's audio track -> `Resampler` -> `MicroTurnAssembler` -> `MicroTurnInput`
on `keys.inputs(worker)`; the peer's video track -> `VideoSampler` -> the assembler's frame
slot; typed text -> the assembler's text slot. Outbound: `MicroTurnOutput` from
`keys.outputs(session)` -> `OutputAudioTrack` (what the peer hears) + data-channel events
(captions, model text, per-turn latency).

Where the CPU goes: the per-frame audio work (one libswresample call on 20 ms and a numpy
copy, tens of microseconds) stays on the event loop, because a thread hop would cost more
than the work; the per-frame video work that matters (scaling a camera frame, milliseconds)
runs in the default executor and only for the <= 1 frame per second that is sampled; Opus/VP8
decoding and encoding already run in aiortc's decoder thread and the default executor.

Bounded everywhere: the assembler holds at most 2 finished turns and drops the oldest with a
counter, the output track holds at most 1 s of audio, the per-turn timestamps and the
background text wait in capped containers, and the bus subscription is a bounded queue.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import av
import msgspec
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from agents.context import ConversationWindow
from infra import keys, metrics
from infra.bus import Bus, BusClosed, BusUnavailable, Subscription
from infra.logging import get_logger
from infra.messages import WORKER_DRAINING, MicroTurnOutput
from media.assembler import MicroTurnAssembler
from media.output_track import OutputAudioTrack
from media.resampler import Resampler
from media.video_limits import VideoGuard, VideoLimitError
from media.video_sampler import VideoSampler, to_rgb_160x120
from signaling.events import (
    ErrorEvent,
    MetricsLatency,
    ResponseTextDelta,
    ServerEvent,
    TranscriptUserDelta,
)

log = get_logger(__name__)

_MAX_TURN_STAMPS = 64  # turns in flight between the edge and the worker (~13 s): far more than ever needed
_MAX_BACKGROUND_CHARS = 4096  # background text waiting for the next input turn
_TEXT_DROP_ERROR_EVERY_S = 1.0  # at most one `input_text_dropped` error event per second


class CloseCall(Exception):
    """Raised by a media task to end its call with `reason`; the peer is told `message`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class MediaTransport:
    """One call's media path. The owning `Call` runs the coroutines as its tasks and cancels
    them on teardown; this class holds no task of its own."""

    def __init__(
        self,
        session_id: str,
        bus: Bus,
        worker_of: Callable[[str], str | None],  # WorkerPool.worker_of: asked every turn, it changes on a move
        output: OutputAudioTrack,
        emit: Callable[[ServerEvent], object],
        *,
        video_fps: float = 5.0,
        align_turns: bool = False,
        on_delegate: Callable[[int], None] | None = None,  # the turn whose output carried <delegate>
        on_handed_back: Callable[[], None] | None = None,  # the worker gave the session back (drain)
    ) -> None:
        self.session_id = session_id
        self.bus = bus
        self.worker_of = worker_of
        self.on_handed_back = on_handed_back
        self.output = output
        self.emit = emit
        self.on_delegate = on_delegate
        self.video_fps = video_fps
        # the wall clock, not monotonic: edges on other machines feeding one worker share it
        self.assembler = MicroTurnAssembler(session_id, align_clock=time.time if align_turns else None)
        self.turns_unplaced = 0  # inputs dropped because the session had no worker at that moment
        self._turn_in: OrderedDict[int, float] = OrderedDict()  # turn -> monotonic time its last sample arrived
        self._background: deque[str] = deque()
        self._background_chars = 0
        # what background tasks carry as context (signaling/background.py reads it)
        self.window = ConversationWindow()
        self.last_activity = time.monotonic()
        self.last_output_at: float | None = None  # monotonic time of the last model output (a move's gap)
        # counters
        self.turns_in = 0
        self.turns_out = 0
        self.frame_errors = 0
        self.video_frames_in = 0
        self.video_frames_used = 0
        self.latencies_ms: deque[tuple[float, float]] = deque(maxlen=1000)  # (server_ms, step_ms)
        self._exported: dict[str, int] = {}
        self.text_chars_refused = 0  # typed text the edge refused (more than one turn's intake)
        self.text_tokens_dropped = 0  # typed text the model's session dropped (backlog full)
        self._last_text_error = float("-inf")

    def touch(self) -> None:
        """Something arrived from the peer: the call is not idle."""
        self.last_activity = time.monotonic()

    # inbound ----------------------------------------------------------------------------------
    async def consume_audio(self, track: MediaStreamTrack) -> None:
        """Read the peer's audio until the track ends; publish each finished micro-turn."""
        resampler = Resampler()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return  # the peer stopped the track or the connection closed
            now = time.monotonic()
            self.last_activity = now
            if not isinstance(frame, av.AudioFrame):
                continue
            try:
                for chunk in resampler.resample(frame):
                    self.assembler.push_audio(chunk.samples, chunk.pts, now)
                ready = self.assembler.pop_ready()
            except Exception:  # one undecodable/odd frame must not end the call
                self.frame_errors += 1
                if self.frame_errors in (1, 10, 100) or self.frame_errors % 1000 == 0:
                    log.exception("call.audio_frame_failed", call_id=self.session_id, errors=self.frame_errors)
                continue
            for inp in ready:
                if self._background:
                    inp.background = "".join(self._background)
                    self._background.clear()
                    self._background_chars = 0
                self._stamp(inp.turn, now)
                self.turns_in += 1
                worker = self.worker_of(self.session_id)
                if worker is None:  # closed or between workers: the turn is lost either way
                    self.turns_unplaced += 1
                    continue
                try:
                    await self.bus.publish(keys.inputs(worker), msgspec.msgpack.encode(inp))
                except BusClosed:
                    return  # server shutting down
                except BusUnavailable:  # Redis away: this 200 ms is stale by the time it is back
                    self.turns_unplaced += 1

    async def consume_video(self, track: MediaStreamTrack) -> None:
        """Read the peer's camera; convert only the frames the sampler keeps (<= fps), off the loop."""
        sampler = VideoSampler(self.video_fps)
        guard = VideoGuard()
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.last_activity = now = time.monotonic()
            self.video_frames_in += 1
            if not isinstance(frame, av.VideoFrame):
                continue
            try:
                guard.check(frame.width, frame.height, now)  # decode cost: refuse, it cannot be skipped
            except VideoLimitError as e:
                raise CloseCall(e.reason, str(e)) from None
            if not sampler.due(frame):
                continue
            try:
                rgb = await loop.run_in_executor(None, to_rgb_160x120, frame)
                self.assembler.push_video(rgb)
                self.video_frames_used += 1
            except Exception:
                self.frame_errors += 1
                log.exception("call.video_frame_failed", call_id=self.session_id)

    def push_text(self, text: str) -> None:
        """Typed user text (`input_text.append`): rides on the next micro-turn, if it fits."""
        if not self.assembler.push_text(text):
            self.text_chars_refused += len(text)
            self._text_dropped(f"{len(text)} characters were dropped")
            return
        self.window.append_user_text(text)

    # outbound ---------------------------------------------------------------------------------
    async def pump_outputs(self, sub: Subscription) -> None:
        """Model outputs -> the output track and events, until the subscription closes."""
        async for data in sub:
            try:
                out = msgspec.msgpack.decode(data, type=MicroTurnOutput)
            except msgspec.DecodeError as e:
                log.warning("call.bad_output", call_id=self.session_id, error=str(e))
                continue
            if out.error == WORKER_DRAINING and self.on_handed_back is not None:
                self.on_handed_back()  # not the call's fault: it is placed again
                continue
            if out.error:
                log.error("call.engine_error", call_id=self.session_id, turn=out.turn, error=out.error)
                raise CloseCall("engine_error", "the model failed on this call; please call again")
            if out.text_dropped:
                self.text_tokens_dropped += out.text_dropped
                metrics.TEXT_TOKENS_DROPPED.inc(out.text_dropped)
                self._text_dropped(f"{out.text_dropped} tokens were dropped")
            queued_ms = self.output.depth_ms  # what plays before this turn's first sample
            self.output.push(out.audio_array())
            now = self.last_output_at = time.monotonic()
            self.turns_out += 1
            t_in = self._pop_stamp(out.turn)
            if out.caption:
                self.emit(TranscriptUserDelta(turn=out.turn, delta=out.caption))
                self.window.append_user_caption(out.caption)
            if out.text:
                self.emit(ResponseTextDelta(turn=out.turn, delta=out.text))
                self.window.append_model_text(out.text)
            if t_in is not None and not out.gap:
                server_ms = (now - t_in) * 1000.0
                self.latencies_ms.append((server_ms, out.step_ms))
                metrics.TURN_LATENCY.observe(server_ms / 1000.0)
                metrics.EDGE_ADDED_LATENCY.observe(max(0.0, server_ms - out.step_ms) / 1000.0)
                metrics.PLAYOUT_QUEUED.observe(queued_ms / 1000.0)
                self.emit(
                    MetricsLatency(
                        turn=out.turn,
                        server_ms=round(server_ms, 2),
                        step_ms=round(out.step_ms, 2),
                        playout_ms=round(queued_ms, 2),
                    )
                )
            if out.delegate and self.on_delegate is not None:
                self.on_delegate(out.turn)

    def push_background(self, text: str) -> None:
        """Background-model text (signaling/background.py): rides on the next micro-turn."""
        self._background.append(text)
        self._background_chars += len(text)
        while self._background_chars > _MAX_BACKGROUND_CHARS and len(self._background) > 1:
            self._background_chars -= len(self._background.popleft())

    # bookkeeping ------------------------------------------------------------------------------
    def _text_dropped(self, what: str) -> None:
        """Tell the client its typed text was dropped (throttled: a flood gets one error a second)."""
        now = time.monotonic()
        if now - self._last_text_error < _TEXT_DROP_ERROR_EVERY_S:
            return
        self._last_text_error = now
        message = f"typed text arrives faster than the model reads it: {what}; send less or wait"
        self.emit(ErrorEvent(code="input_text_dropped", message=message))

    def _stamp(self, turn: int, t: float) -> None:
        self._turn_in[turn] = t
        while len(self._turn_in) > _MAX_TURN_STAMPS:
            self._turn_in.popitem(last=False)

    def _pop_stamp(self, turn: int) -> float | None:
        # turns before this one will never be matched (the worker gap-stepped them)
        while self._turn_in:
            k = next(iter(self._turn_in))
            if k >= turn:
                break
            del self._turn_in[k]
        return self._turn_in.pop(turn, None)

    def export_metrics(self) -> None:
        """Add what the media objects counted since the last export to the process metrics."""
        now = {
            "underruns": self.output.underruns,
            "resyncs": self.output.resyncs,
            "stretched": self.output.stretched_frames,
            "compressed": self.output.compressed_frames,
            "dropped_samples": self.output.dropped_samples,
            "dropped_stale": self.assembler.dropped_stale,
            "gaps": self.assembler.gaps,
        }
        sinks = {
            "underruns": metrics.PLAYOUT_UNDERRUNS,
            "resyncs": metrics.PLAYOUT_RESYNCS,
            "stretched": metrics.PLAYOUT_STEERED_FRAMES.labels("stretched"),
            "compressed": metrics.PLAYOUT_STEERED_FRAMES.labels("compressed"),
            "dropped_samples": metrics.PLAYOUT_DROPPED_SAMPLES,
            "dropped_stale": metrics.INPUT_TURNS_DROPPED,
            "gaps": metrics.INPUT_GAP_TURNS,
        }
        for name, value in now.items():
            delta = value - self._exported.get(name, 0)
            if delta > 0:
                sinks[name].inc(delta)
            self._exported[name] = value
