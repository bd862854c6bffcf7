"""A real WebRTC caller built on aiortc, for the e2e tests and the edge benchmark.

It does what the call page does: mint a token, create the `events` data channel before the
offer, send microphone audio (a wav streamed in real time) and optionally a camera, POST the
offer, play nothing but record every frame of model audio and every event that arrives.

For load generation (tests/bench/bench_edge.py) a caller can be cheap: `packets=` replays
payloads encoded once by `encode_packets` (no encoder per call), and `decode=False` counts the
model's RTP packets as they arrive instead of decoding them (no decoder thread work).

Run as a program it is a caller that can be killed without hanging up (the test of a client
that vanishes): `python -m tests.e2e.aiortc_client http://127.0.0.1:PORT` prints
`connected <call_id>` once media flows and then streams until it is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.codecs import get_encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

RATE = 16_000
FRAME = 320  # 20 ms at 16 kHz


# --- a speech-like test signal -------------------------------------------------------------------
def speech_wav(path: Path, seconds: float) -> Path:
    """Write `seconds` of 16 kHz mono speech: espeak-ng when installed, else a synthetic voice."""
    text = (
        "Hello, this is a test call. I would like to know the weather tomorrow, "
        "and how long it takes to walk to the station from here. Thank you very much."
    )
    x = None
    if shutil.which("espeak-ng"):
        raw = path.with_suffix(".espeak.wav")
        try:
            subprocess.run(
                ["espeak-ng", "-s", "160", "-w", str(raw), text], check=True, capture_output=True, timeout=30
            )
            with av.open(str(raw)) as c:
                rs = av.AudioResampler(format="flt", layout="mono", rate=RATE)
                parts = [f.to_ndarray().reshape(-1) for fr in c.decode(audio=0) for f in rs.resample(fr)]
                parts += [f.to_ndarray().reshape(-1) for f in rs.resample(None)]
            x = np.concatenate(parts).astype(np.float32)
        except (OSError, subprocess.SubprocessError, av.FFmpegError):
            x = None
    if x is None:
        x = synthetic_speech(seconds)
    n = int(seconds * RATE)
    x = np.tile(x, -(-n // x.size))[:n] if x.size < n else x[:n]
    write_wav(path, x)
    return path


def synthetic_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Voiced syllables: a 110-140 Hz pulse train through three moving formants, 4 syllables/s."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    src = np.sign(np.sin(phase)) * 0.5 + 0.05 * rng.standard_normal(n)
    out = np.zeros(n)
    for fc in (700, 1200, 2600):
        fm = fc * (1 + 0.15 * np.sin(2 * np.pi * 3.1 * t + fc))
        out += np.sin(2 * np.pi * np.cumsum(fm) / RATE) * (src > 0)
    env = np.clip(np.sin(2 * np.pi * 2.0 * t), 0, None) ** 0.5  # syllables with pauses
    y = out * env
    return (0.3 * y / (np.abs(y).max() + 1e-9)).astype(np.float32)


def write_wav(path: Path, x: np.ndarray) -> None:
    pcm = np.rint(np.clip(x, -1, 1) * 32767).astype(np.int16)
    with av.open(str(path), "w", format="wav") as c:
        s = c.add_stream("pcm_s16le", rate=RATE, layout="mono")
        for i in range(0, pcm.size, 1600):
            f = av.AudioFrame.from_ndarray(pcm[None, i : i + 1600], format="s16", layout="mono")
            f.sample_rate = RATE
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def read_wav(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        rs = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        parts = [f.to_ndarray().reshape(-1) for fr in c.decode(audio=0) for f in rs.resample(fr)]
    return np.concatenate(parts).astype(np.float32)


# --- tracks ----------------------------------------------------------------------------------------
class _PacedAudioTrack(MediaStreamTrack):
    """20 ms audio frames on absolute deadlines from the first `recv`."""

    kind = "audio"

    def __init__(self, *, loop: bool) -> None:
        super().__init__()
        self.loop = loop
        self.finished = asyncio.Event()
        self._n = 0
        self._start: float | None = None

    async def _next_frame(self) -> int:
        """Wait for frame n's deadline; returns n (raises when the track was stopped)."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._n * FRAME / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return self._n


def _s16_frame(pcm: np.ndarray, n: int) -> av.AudioFrame:
    """FRAME int16 samples as the n-th 20 ms frame of a 16 kHz mono stream."""
    frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
    frame.sample_rate = RATE
    frame.pts = n * FRAME
    frame.time_base = fractions.Fraction(1, RATE)
    return frame


class WavTrack(_PacedAudioTrack):
    """A microphone: `audio` in real time, 20 ms frames on absolute deadlines, then silence
    (or the audio again with `loop=True`). `finished` is set when the audio has been sent once."""

    def __init__(self, audio: np.ndarray, *, loop: bool = False) -> None:
        super().__init__(loop=loop)
        self.pcm = np.rint(np.clip(audio, -1, 1) * 32767).astype(np.int16)

    async def recv(self) -> av.AudioFrame:
        i = await self._next_frame() * FRAME
        if self.loop:
            i %= self.pcm.size - FRAME
        chunk = self.pcm[i : i + FRAME]
        if chunk.size < FRAME:
            self.finished.set()
            chunk = np.concatenate([chunk, np.zeros(FRAME - chunk.size, np.int16)])
        frame = _s16_frame(chunk, self._n)
        self._n += 1
        return frame


# RTP clock rate and samples per 20 ms packet of the audio codecs the server answers with
CODEC_CLOCK = {"opus": (48_000, 960), "pcmu": (8_000, 160), "pcma": (8_000, 160)}
# Digital silence as the server's encoder sends it (its output track's "nothing to play"):
# libopus codes 20 ms of zeros in 3 bytes (any real audio, even -60 dB noise, takes 150+);
# G.711 codes a zero sample as 0xFF (mu-law) or 0xD5 (A-law).
OPUS_SILENCE_MAX_BYTES = 8
G711_SILENCE = {"pcmu": b"\xff", "pcma": b"\xd5"}


def is_silence(codec: str, payload: bytes) -> bool:
    """Whether an RTP payload of `codec` is a frame of digital silence."""
    if codec == "opus":
        return len(payload) <= OPUS_SILENCE_MAX_BYTES
    return not payload.strip(G711_SILENCE[codec])


def encode_packets(audio: np.ndarray, codec: str = "opus") -> list[bytes]:
    """`audio` (16 kHz mono float) as the 20 ms payloads aiortc's own encoder sends for `codec`,
    encoded once so that any number of `EncodedTrack`s can replay them for free."""
    params = next(c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == f"audio/{codec}")
    encoder = get_encoder(params)  # type: ignore[arg-type]  # it reads only mimeType
    pcm = np.rint(np.clip(audio, -1, 1) * 32767).astype(np.int16)
    out: list[bytes] = []
    for n, i in enumerate(range(0, pcm.size - FRAME + 1, FRAME)):
        out += encoder.encode(_s16_frame(pcm[i : i + FRAME], n))[0]
    return out


class EncodedTrack(_PacedAudioTrack):
    """A microphone that replays pre-encoded 20 ms payloads in real time on absolute deadlines,
    like `WavTrack` (again and again with `loop=True`; else the track ends after the last).
    aiortc's sender packs an `av.Packet` without encoding it; pts in the codec's clock keep the
    RTP timestamps continuous across the loop."""

    def __init__(self, packets: list[bytes], codec: str = "opus", *, loop: bool = False) -> None:
        super().__init__(loop=loop)
        if not packets:
            raise ValueError("no packets to send")
        self.packets = packets
        self.clock, self.step = CODEC_CLOCK[codec]

    async def recv(self) -> av.Packet:
        n = await self._next_frame()
        i = n % len(self.packets) if self.loop else n
        if i >= len(self.packets):
            self.finished.set()
            self.stop()
            raise MediaStreamError
        if i == len(self.packets) - 1:
            self.finished.set()
        packet = av.Packet(self.packets[i])
        packet.pts = self._n * self.step
        packet.time_base = fractions.Fraction(1, self.clock)
        self._n += 1
        return packet


class ColorBarsTrack(MediaStreamTrack):
    """A small camera (160x120 at 10 fps) so VP8 costs little."""

    kind = "video"

    def __init__(self, fps: int = 10) -> None:
        super().__init__()
        self.fps = fps
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._n / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        img = np.zeros((120, 160, 3), np.uint8)
        img[:, :, 0] = np.linspace(0, 255, 160, dtype=np.uint8)[None, :]
        img[:, :, 1] = (self._n * 7) % 256
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = self._n * 90_000 // self.fps
        frame.time_base = fractions.Fraction(1, 90_000)
        self._n += 1
        return frame


# --- the caller -------------------------------------------------------------------------------------
@dataclass
class Received:
    arrivals: list[float] = field(default_factory=list)  # monotonic time each frame came out of the decoder
    pts: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    rms: list[float] = field(default_factory=list)
    lost: int = 0  # RTP sequence numbers skipped (decode=False only)
    silent: list[bool] = field(default_factory=list)  # per packet: digital silence (decode=False only)


class Caller:
    def __init__(
        self,
        base_url: str,
        http: aiohttp.ClientSession,
        audio: np.ndarray,
        *,
        codec: str = "opus",
        video: bool = False,
        loop_audio: bool = False,
        packets: list[bytes] | None = None,
        decode: bool = True,
    ) -> None:
        """`packets`: send these pre-encoded `codec` payloads (`encode_packets`) instead of
        encoding `audio`; `decode=False`: record each arriving RTP packet of model audio
        (arrival time, RTP timestamp, lost sequence numbers) instead of decoding it."""
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic: WavTrack | EncodedTrack = (
            WavTrack(audio, loop=loop_audio) if packets is None else EncodedTrack(packets, codec, loop=loop_audio)
        )
        self.decode = decode
        self._last_seq: int | None = None
        self.cam = ColorBarsTrack() if video else None
        self.codec = codec
        self.events: list[dict[str, Any]] = []
        self.received = Received()
        self.call_id: str | None = None
        self.location: str | None = None
        self.token: str | None = None
        self.channel = self.pc.createDataChannel("events", ordered=True)
        self.channel_open = asyncio.Event()
        self.connected = asyncio.Event()
        self._event_arrived = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.channel.on("open", self.channel_open.set)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self.connected.set()

    def _on_message(self, data: str | bytes) -> None:
        self.events.append(json.loads(data))
        self._event_arrived.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._reader is None and self.decode:
            self._reader = asyncio.create_task(self._read(track), name="test-caller-read")

    async def _read(self, track: MediaStreamTrack) -> None:
        r = self.received
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame)
            r.arrivals.append(time.monotonic())
            r.pts.append(int(frame.pts or 0))
            r.samples.append(frame.samples)
            x = frame.to_ndarray().astype(np.float32) / 32768.0
            r.rms.append(float(np.sqrt(np.mean(x * x))))

    async def _count_rtp(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        """Stands in for the audio receiver's packet handler when decode=False: no jitter
        buffer, no decoder thread, no frames; the RTCP loop still runs."""
        r = self.received
        r.arrivals.append(time.monotonic())
        r.pts.append(packet.timestamp)
        r.silent.append(is_silence(self.codec, packet.payload))
        if self._last_seq is not None:
            ahead = (packet.sequence_number - self._last_seq) % 65536
            if ahead == 0 or ahead >= 32768:  # duplicate or late: already counted as lost
                return
            r.lost += ahead - 1
        self._last_seq = packet.sequence_number

    async def mint_token(self, api_key: str | None = None) -> str:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        async with self.http.post(f"{self.base_url}/v1/sessions", json={}, headers=headers) as r:
            assert r.status == 201, await r.text()
            self.token = str((await r.json())["token"])
        return self.token

    async def offer(self) -> str:
        """Local offer SDP with candidates (aiortc gathers before it returns)."""
        t = self.pc.addTransceiver(self.mic, direction="sendrecv")
        if not self.decode:
            t.receiver._handle_rtp_packet = self._count_rtp  # type: ignore[method-assign]
        if self.codec != "opus":
            want = f"audio/{self.codec.upper()}"
            caps = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == want]
            t.setCodecPreferences(caps)
        if self.cam is not None:
            self.pc.addTransceiver(self.cam, direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        assert self.pc.localDescription is not None
        return self.pc.localDescription.sdp

    async def connect(self, *, as_sdp: bool = False, token: str | None = None) -> aiohttp.ClientResponse:
        """POST the offer; on 201 apply the answer. Returns the response (body already read)."""
        sdp = await self.offer()
        auth = {"Authorization": f"Bearer {token or self.token}"}
        if as_sdp:
            kw: dict[str, Any] = {"data": sdp, "headers": {**auth, "Content-Type": "application/sdp"}}
        else:
            kw = {"json": {"sdp": sdp, "type": "offer"}, "headers": auth}
        async with self.http.post(f"{self.base_url}/v1/calls", **kw) as r:
            body = await r.read()
            if r.status != 201:
                return r
            self.location = r.headers["Location"]
            if as_sdp:
                assert r.content_type == "application/sdp"
                answer = body.decode()
                self.call_id = self.location.rsplit("/", 1)[1]
            else:
                j = json.loads(body)
                assert j["type"] == "answer"
                answer, self.call_id = j["sdp"], j["call_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        return r

    def send(self, obj: Any) -> None:
        self.channel.send(obj if isinstance(obj, str) else json.dumps(obj))

    async def wait_event(self, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if pred(ev):
                    return ev
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching event; got types {[e.get('type') for e in self.events][-20:]}")
            self._event_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event_arrived.wait(), left)

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == type_]

    async def hangup(self) -> int:
        async with self.http.delete(f"{self.base_url}{self.location}") as r:
            return r.status

    async def close(self) -> None:
        self.mic.stop()
        if self.cam is not None:
            self.cam.stop()
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def _main(url: str, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as d:
        audio = read_wav(speech_wav(Path(d) / "speech.wav", seconds))
    async with aiohttp.ClientSession() as http:
        caller = Caller(url, http, audio, loop_audio=True)
        await caller.mint_token()
        r = await caller.connect()
        if r.status != 201:
            print(f"failed {r.status}", flush=True)
            return
        await asyncio.wait_for(caller.connected.wait(), 20)
        await asyncio.wait_for(caller.channel_open.wait(), 20)
        print(f"connected {caller.call_id}", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("url")
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    try:
        asyncio.run(_main(a.url, a.seconds))
    except KeyboardInterrupt:
        sys.exit(0)
