"""Live evaluation: a WebRTC client streams each clip in real time to a running `microturn serve`
and records what comes back.

This measures what a caller gets — the edge, the worker's batching and the playout buffer
included — where the offline runner measures the model alone. Alignment is by wall clock: t=0
is the moment the first input frame is handed to the peer connection; received audio is placed
at its arrival time (so every delay on the way counts), and each `response.text.delta` word is
timed at its event's arrival, then snapped to the speech it was spoken in, like offline.

The client speaks the server's public API only (POST /v1/sessions, POST/DELETE /v1/calls, the
`events` data channel), so it works against any deployment reachable over HTTP.

A clip with video (`frames/` or `input.mp4`) is sent as a camera too: a VP8 track showing frame
k from t0 + 0.2k s (90 kHz pts on the same t0 as the audio), so the frames take the real media
path (encode, RTP, decode, the server's `VideoSampler`). The server keeps at most
`MICROTURN_VIDEO_FPS` frames per second (default 5: every micro-turn carries its frame, as the
offline runner and the training data do).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from dataclasses import dataclass

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from model.eval.layout import MODEL_STEM, SAMPLE_RATE
from model.eval.runner import ClipInput, Response
from model.eval.vad import DEFAULT_VAD, VadConfig, speech_segments
from model.eval.words import Word, snap_to_speech

FRAME = 320  # 20 ms at 16 kHz
VIDEO_FPS = 5  # one frame per micro-turn
VIDEO_CLOCK = 90_000  # RTP video clock
TAIL_S = 0.6  # keep listening after the clip so the last turn's output arrives


class LiveError(RuntimeError):
    """The server refused or dropped the call; the message carries its error."""


class ClipClock:
    """t=0 of a call: the moment the first media frame (audio or video) is handed out."""

    def __init__(self) -> None:
        self.t0: float | None = None

    def start(self) -> float:
        if self.t0 is None:
            self.t0 = time.monotonic()
        return self.t0


class ClipTrack(MediaStreamTrack):
    """The clip as 20 ms s16 frames at 1x speed (absolute deadlines), then silence."""

    kind = "audio"

    def __init__(self, audio: np.ndarray, clock: ClipClock | None = None) -> None:
        super().__init__()
        pcm = np.clip(audio, -1, 1) * 32767
        self._pcm = pcm.astype(np.int16)
        self._n = 0
        self.clock = clock or ClipClock()

    @property
    def t0(self) -> float | None:
        """Monotonic time the first frame of the call was handed out (None before)."""
        return self.clock.t0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        deadline = self.clock.start() + self._n * FRAME / SAMPLE_RATE
        if deadline > now:
            await asyncio.sleep(deadline - now)
        chunk = self._pcm[self._n * FRAME : (self._n + 1) * FRAME]
        if len(chunk) < FRAME:
            chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk[None], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._n * FRAME
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._n += 1
        return frame


class ClipVideoTrack(MediaStreamTrack):
    """The clip's frames as a camera: frame k at t0 + 0.2k s, then the last frame held."""

    kind = "video"

    def __init__(self, frames: np.ndarray, clock: ClipClock) -> None:
        super().__init__()
        if len(frames) == 0:
            raise ValueError("no frames to send")
        self._frames = frames
        self._n = 0
        self.clock = clock
        self.sent = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        deadline = self.clock.start() + self._n / VIDEO_FPS
        now = time.monotonic()
        if deadline > now:
            await asyncio.sleep(deadline - now)
        img = self._frames[min(self._n, len(self._frames) - 1)]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        frame.pts = self._n * VIDEO_CLOCK // VIDEO_FPS
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._n += 1
        self.sent += 1
        return frame


@dataclass
class _Received:
    audio: np.ndarray
    words: list[tuple[str, float]]  # (word, arrival seconds since t0)
    video_frames_sent: int = 0


class LiveResponder:
    """A `Responder` (model/eval/runner.py) that calls a running server for every clip."""

    stem = MODEL_STEM

    def __init__(
        self, url: str, *, api_key: str | None = None, vad: VadConfig = DEFAULT_VAD, name: str = "interaction model"
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.vad = vad
        self.name = name + " (live)"

    def respond(self, inp: ClipInput) -> Response:
        return asyncio.run(self.respond_async(inp))

    async def respond_async(self, inp: ClipInput) -> Response:
        """`respond` from inside a running event loop."""
        got = await self._call(inp)
        n = len(inp.audio)
        duration = n / SAMPLE_RATE
        words = []
        for i, (w, t) in enumerate(got.words):
            if t >= duration:
                break
            end = got.words[i + 1][1] if i + 1 < len(got.words) else t + 0.3
            words.append(Word(w, t, min(end, duration)))
        snapped = snap_to_speech(words, speech_segments(got.audio, self.vad))
        info = {"voiced_words": snapped.n_voiced, "live": True, "video_frames_sent": got.video_frames_sent}
        return Response(got.audio, snapped.words, info)

    async def _call(self, inp: ClipInput) -> _Received:
        n = len(inp.audio)
        out = np.zeros(n, np.float32)
        words: list[tuple[str, float]] = []
        clock = ClipClock()
        track = ClipTrack(inp.audio, clock)
        camera = None if inp.video is None or len(inp.video) == 0 else ClipVideoTrack(inp.video, clock)
        pc = RTCPeerConnection()
        pc.addTransceiver(track, direction="sendrecv")
        if camera is not None:
            pc.addTransceiver(camera, direction="sendonly")
        channel = pc.createDataChannel("events")
        opened = asyncio.Event()
        failed: list[str] = []

        def on_message(msg: object) -> None:
            if not isinstance(msg, str) or track.t0 is None:
                return
            ev = json.loads(msg)
            t = time.monotonic() - track.t0
            if ev.get("type") == "response.text.delta":
                words.extend((w, t) for w in str(ev.get("delta", "")).split())
            elif ev.get("type") == "error":
                failed.append(f"{ev.get('code')}: {ev.get('message')}")

        channel.on("open", opened.set)
        channel.on("message", on_message)
        recorder: asyncio.Task[None] | None = None

        @pc.on("track")
        def on_track(remote: MediaStreamTrack) -> None:
            nonlocal recorder
            if remote.kind == "audio":
                recorder = asyncio.ensure_future(_record(remote, track, out))

        async with aiohttp.ClientSession() as http:
            headers = await self._auth(http)
            await pc.setLocalDescription(await pc.createOffer())
            offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
            async with http.post(f"{self.url}/v1/calls", json=offer, headers=headers) as r:
                body = await r.json()
                if r.status != 201:
                    await pc.close()
                    raise LiveError(f"POST /v1/calls: {r.status} {body.get('error', body)}")
                location = r.headers.get("Location", f"/v1/calls/{body['call_id']}")
            await pc.setRemoteDescription(RTCSessionDescription(body["sdp"], "answer"))
            try:
                await asyncio.wait_for(opened.wait(), 10)
                if inp.text:
                    channel.send(json.dumps({"type": "input_text.append", "text": inp.text}))
                await asyncio.sleep(n / SAMPLE_RATE + TAIL_S)
            finally:
                with contextlib.suppress(aiohttp.ClientError):
                    await http.delete(f"{self.url}{location}")
                if recorder is not None:
                    recorder.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await recorder
                track.stop()
                if camera is not None:
                    camera.stop()
                await pc.close()
        if failed:
            raise LiveError("; ".join(failed))
        return _Received(out, words, 0 if camera is None else camera.sent)

    async def _auth(self, http: aiohttp.ClientSession) -> dict[str, str]:
        if self.api_key:
            return {"Authorization": f"Bearer {self.api_key}"}
        async with http.post(f"{self.url}/v1/sessions") as r:
            body = await r.json()
            if r.status != 201:
                raise LiveError(f"POST /v1/sessions: {r.status} {body.get('error', body)}")
            return {"Authorization": f"Bearer {body['token']}"}


async def _record(remote: MediaStreamTrack, clock: ClipTrack, out: np.ndarray) -> None:
    """Place received audio (resampled to 16 kHz mono) where it arrived on the clip's clock."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    pos: int | None = None
    while True:
        try:
            frame = await remote.recv()
        except MediaStreamError:
            return
        if clock.t0 is None or not isinstance(frame, av.AudioFrame):
            continue
        for f in resampler.resample(frame):
            pcm = f.to_ndarray().reshape(-1)
            if pos is None:  # the first sample heard lands at its arrival time minus its length
                pos = max(0, round((time.monotonic() - clock.t0) * SAMPLE_RATE) - len(pcm))
            end = min(len(out), pos + len(pcm))
            if end > pos:
                out[pos:end] = pcm[: end - pos]
            pos += len(pcm)
