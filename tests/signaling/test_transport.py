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
    t = MediaTransport("s1", bus, "local", track, events.append, on_delegate=delegations.append)
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
