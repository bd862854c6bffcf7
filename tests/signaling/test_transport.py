"""MediaTransport without a network: frames in -> bus inputs, bus outputs -> track + events,
and the background-agent seam (delegate out, deltas back into the page and the next input)."""

from __future__ import annotations

import asyncio
import fractions
from collections.abc import AsyncIterator

import av
import msgspec
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from infra import keys
from infra.bus import MemoryBus, Subscription
from infra.messages import TURN_SAMPLES, MicroTurnInput, MicroTurnOutput
from media.output_track import OutputAudioTrack
from signaling.events import MetricsLatency, ResponseTextDelta, ServerEvent, TranscriptUserDelta
from signaling.transport import MediaTransport

pytestmark = pytest.mark.timeout(10)


class FramesTrack(MediaStreamTrack):
    """Opus-shaped frames (48 kHz stereo s16, 20 ms) as fast as they are read, then the end."""

    kind = "audio"

    def __init__(self, n_frames: int) -> None:
        super().__init__()
        self.n_frames = n_frames
        self._i = 0

    async def recv(self) -> av.AudioFrame:
        if self._i >= self.n_frames:
            raise MediaStreamError
        pcm = np.full((1, 960 * 2), 1000, np.int16)
        f = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
        f.sample_rate = 48_000
        f.pts = self._i * 960
        f.time_base = fractions.Fraction(1, 48_000)
        self._i += 1
        return f


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    b = MemoryBus()
    yield b
    await b.close()


async def drain(sub: Subscription) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(await sub.get(timeout=0.01))
        except TimeoutError:
            return out


async def test_frames_become_turns_and_outputs_become_audio_events_and_latency(bus: MemoryBus) -> None:
    events: list[ServerEvent] = []
    delegations: list[int] = []
    track = OutputAudioTrack()
    t = MediaTransport("s1", bus, lambda _: "local", track, events.append, on_delegate=delegations.append)
    inputs = bus.subscribe(keys.inputs("local"))
    outputs = bus.subscribe(keys.outputs("s1"))
    pump = asyncio.create_task(t.pump_outputs(outputs))
    try:
        t.push_text("typed")
        await t.consume_audio(FramesTrack(25))  # 500 ms: two whole turns, the third still open
        sent = [msgspec.msgpack.decode(b, type=MicroTurnInput) for b in await drain(inputs)]
        assert [i.turn for i in sent] == [0, 1] and sent[0].text == "typed" and sent[1].text == ""
        assert not sent[0].gap and np.allclose(sent[0].audio_array(), 1000 / 32768, atol=1e-3)

        for turn, delegate in ((0, False), (1, True)):
            out = MicroTurnOutput(
                session_id="s1",
                turn=turn,
                audio=np.full(TURN_SAMPLES, 0.1, np.float32).tobytes(),
                text=f"model{turn}",
                caption=f"user{turn}",
                delegate=delegate,
                step_ms=3.0,
            )
            await bus.publish_struct(keys.outputs("s1"), out)
        await asyncio.sleep(0.05)
        assert track.depth_samples == 2 * TURN_SAMPLES
        kinds = [type(e) for e in events]
        assert kinds == [TranscriptUserDelta, ResponseTextDelta, MetricsLatency] * 2
        lat = [e for e in events if isinstance(e, MetricsLatency)]
        assert [e.turn for e in lat] == [0, 1] and all(e.server_ms >= 0 and e.step_ms == 3.0 for e in lat)
        assert [e.playout_ms for e in lat] == [0.0, 200.0]  # nothing read the track: turn 0 is ahead of 1
        assert delegations == [1]
        # the conversation window background tasks carry: typed text, captions, model text
        window = "\n".join(m.content for m in t.window.to_messages())
        assert all(w in window for w in ("typed", "user0", "model0", "user1")), window

        # background answers ride into the model with the next turn, in order
        t.push_background("four")
        t.push_background(".")
        more = FramesTrack(40)
        more._i = 25  # the stream continues where it stopped
        await t.consume_audio(more)
        sent = [msgspec.msgpack.decode(b, type=MicroTurnInput) for b in await drain(inputs)]
        assert sent[0].turn == 2 and sent[0].background == "four." and all(i.background == "" for i in sent[1:])
    finally:
        pump.cancel()
        inputs.close()
        track.stop()


async def test_aligned_turns_start_with_the_silence_that_puts_them_on_the_grid(bus: MemoryBus) -> None:
    track = OutputAudioTrack()
    t = MediaTransport("s1", bus, lambda _: "local", track, lambda _: None, align_turns=True)
    inputs = bus.subscribe(keys.inputs("local"))
    try:
        await t.consume_audio(FramesTrack(25))
        sent = [msgspec.msgpack.decode(b, type=MicroTurnInput) for b in await drain(inputs)]
        d = t.assembler.aligned_samples
        audio = np.concatenate([i.audio_array() for i in sent])
        assert [i.turn for i in sent] == list(range(len(sent))) and len(sent) >= 2 and not any(i.gap for i in sent)
        np.testing.assert_array_equal(audio[:d], 0.0)  # the silence before the call
        assert np.allclose(audio[d:], 1000 / 32768, atol=1e-3)  # then every sample of the caller's
        assert 0 < audio.size - d <= 25 * 320 and audio.size % 3200 == 0
    finally:
        inputs.close()
        track.stop()


async def test_playout_stalls_reach_the_metrics_once_each(bus: MemoryBus) -> None:
    """An output track that was asked for a frame too late skipped ahead (a stalled loop): the
    export adds what happened since the last one, never the same stall twice."""
    from prometheus_client import REGISTRY

    def resyncs() -> float:
        return REGISTRY.get_sample_value("microturn_playout_resyncs_total") or 0.0

    track = OutputAudioTrack(max_late_ms=40)
    t = MediaTransport("s1", bus, lambda _: "local", track, lambda _: None)
    before = resyncs()
    await track.recv()  # frame 0 anchors the schedule
    await asyncio.sleep(0.1)  # the loop "stalls": the next frame is 80 ms late
    await track.recv()
    assert track.resyncs == 1
    t.export_metrics()
    t.export_metrics()
    assert resyncs() - before == 1
    track.stop()


class BigVideoTrack(MediaStreamTrack):
    """Decoded camera frames of any size, as fast as they are read."""

    kind = "video"

    def __init__(self, width: int, height: int, n_frames: int = 1000, fps: int = 30) -> None:
        super().__init__()
        self.width, self.height, self.n_frames, self.fps = width, height, n_frames, fps
        self._i = 0

    async def recv(self) -> av.VideoFrame:
        if self._i >= self.n_frames:
            raise MediaStreamError
        f = av.VideoFrame(self.width, self.height, "yuv420p")
        f.pts = self._i * 90_000 // self.fps
        f.time_base = fractions.Fraction(1, 90_000)
        self._i += 1
        return f


@pytest.mark.parametrize(
    ("width", "height", "reason"),
    [(3840, 2160, "video_too_large"), (1080, 1921, "video_too_large"), (320, 240, "video_rate_too_high")],
)
async def test_video_beyond_the_limits_ends_the_call_with_a_reason(
    bus: MemoryBus, width: int, height: int, reason: str
) -> None:
    """Any resolution and frame rate used to be decoded and accepted; decode work cannot be
    skipped frame by frame, so an oversize or flooding camera ends the call with a clear reason.
    (The small track here delivers frames as fast as they are read: far above 60 fps.)"""
    from signaling.transport import CloseCall

    track = OutputAudioTrack()
    t = MediaTransport("s1", bus, lambda _: "local", track, lambda e: None)
    try:
        with pytest.raises(CloseCall) as info:
            await t.consume_video(BigVideoTrack(width, height))
        assert info.value.reason == reason
        if reason == "video_too_large":
            assert f"{width}x{height}" in info.value.message
            assert t.video_frames_in == 1 and t.video_frames_used == 0  # refused before any conversion
        else:
            assert t.video_frames_in == 121  # one 2 s window at 60 fps: the flood is caught when it fills
    finally:
        track.stop()


async def test_a_normal_camera_is_accepted(bus: MemoryBus) -> None:
    track = OutputAudioTrack()
    t = MediaTransport("s1", bus, lambda _: "local", track, lambda e: None)

    class Paced(BigVideoTrack):
        async def recv(self) -> av.VideoFrame:
            await asyncio.sleep(1 / 60)  # 60 fps at most: within the limit
            return await super().recv()

    try:
        await t.consume_video(Paced(1920, 1080, n_frames=40, fps=30))
        assert t.video_frames_in == 40 and t.video_frames_used >= 1
    finally:
        track.stop()


async def test_engine_error_and_dropped_text_reach_the_client(bus: MemoryBus) -> None:
    """Typed text the edge or the session drops is answered with an `error` event (it used to
    queue without limit); a session the engine closed ends the call as `engine_error`."""
    from signaling.events import ErrorEvent
    from signaling.transport import CloseCall

    events: list[ServerEvent] = []
    track = OutputAudioTrack()
    t = MediaTransport("s1", bus, lambda _: "local", track, events.append)
    outputs = bus.subscribe(keys.outputs("s1"))
    pump = asyncio.create_task(t.pump_outputs(outputs))
    try:
        t.push_text("a" * 4000)
        t.push_text("b" * 200)  # more than one turn's intake: refused whole, the client told
        assert t.text_chars_refused == 200
        errors = [e for e in events if isinstance(e, ErrorEvent)]
        assert [e.code for e in errors] == ["input_text_dropped"] and "200 characters" in errors[0].message

        t._last_text_error = float("-inf")  # (the error is throttled to one a second)
        silence = np.zeros(TURN_SAMPLES, np.float32).tobytes()
        await bus.publish_struct(
            keys.outputs("s1"), MicroTurnOutput(session_id="s1", turn=0, audio=silence, text_dropped=77)
        )
        await bus.publish_struct(
            keys.outputs("s1"), MicroTurnOutput(session_id="s1", turn=1, audio=b"", error="RuntimeError: boom")
        )
        with pytest.raises(CloseCall) as info:
            await asyncio.wait_for(pump, 5)
        assert info.value.reason == "engine_error"
        errors = [e for e in events if isinstance(e, ErrorEvent)]
        assert errors[-1].code == "input_text_dropped" and "77 tokens" in errors[-1].message
        assert t.text_tokens_dropped == 77 and track.depth_samples == TURN_SAMPLES
    finally:
        pump.cancel()
        track.stop()


async def test_steered_frames_reach_the_process_metrics_by_direction(bus: MemoryBus) -> None:
    """A call whose first turns left too much queued skips quiet frames; export counts them under
    direction="compressed", once."""
    from prometheus_client import REGISTRY

    def steered(direction: str) -> float:
        return REGISTRY.get_sample_value("microturn_playout_steered_frames_total", {"direction": direction}) or 0.0

    track = OutputAudioTrack(first_window=1)
    t = MediaTransport("s1", bus, lambda _: "local", track, lambda _: None)
    before = steered("compressed"), steered("stretched")
    track.push(np.zeros(TURN_SAMPLES, np.float32))
    track._next_samples()  # playing
    track.push(np.zeros(TURN_SAMPLES, np.float32))  # 180 ms queued ahead: 7 frames over the margin
    while track.depth_samples:
        track._next_samples()
    assert track.compressed_frames == 7 and track.stretched_frames == 0
    t.export_metrics()
    t.export_metrics()
    assert (steered("compressed") - before[0], steered("stretched") - before[1]) == (7, 0)
    track.stop()
