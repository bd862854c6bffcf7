"""The harness baseline: what a cascaded voice-agent harness does with the same clips.

Harnesses (pipecat, fastrtc, ...) decide turns with a VAD and a silence timer, then play a
reply. So the baseline is: energy VAD on the *input*, an endpoint once the user has been
silent for `silence_ms` after speaking (default 600 ms, configurable; the 500-700 ms range is
the brief's account of pipecat/fastrtc defaults), then `reply_s` of fixed-length speech (a
synthetic voiced signal) carrying a fixed reply text spread evenly over it. Its numbers are
the floor a harness cannot beat however fast its ASR/LLM/TTS are; `response_delay_s` adds
pipeline time after the endpoint (default 0 to show that floor).

While it speaks a harness either ignores the user (`barge_in=False`) or, as pipecat does by
default (interruptions allowed), stops when the VAD has heard the user for `barge_in_ms`
(default 200 ms, a VAD "speech started" decision). Default: barge-in on.

The decisions are made causally, frame by frame (20 ms VAD frames), at the end of each frame:
a streaming VAD decides once it has the frame (with `vad.adaptive_margin_db` set, the noise
floor is estimated over the whole clip, the one non-causal input). Outputs go to `output_baseline.wav` /
`output_baseline.json` beside FD-bench's `output.*` (see model/eval/layout.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from model.eval.layout import BASELINE_STEM, SAMPLE_RATE
from model.eval.runner import ClipInput, Response
from model.eval.vad import DEFAULT_VAD, VadConfig, voiced_frames
from model.eval.words import Word

DEFAULT_REPLY = "Sure, I can help you with that right now."


@dataclass(frozen=True)
class HarnessConfig:
    silence_ms: float = 600.0  # endpoint after this much silence following user speech
    start_ms: float = 200.0  # a voiced run this long means the user is speaking
    reply_s: float = 2.0  # fixed reply length
    reply_text: str = DEFAULT_REPLY
    response_delay_s: float = 0.0  # ASR + LLM + TTS time between endpoint and first audio
    barge_in: bool = True  # stop the reply when the user talks over it
    barge_in_ms: float = 200.0  # user speech this long during a reply stops it
    level_dbfs: float = -20.0  # RMS level of the synthetic voice
    vad: VadConfig = DEFAULT_VAD
    voice: str = "tone"  # "tone" (synth_voice) or "flite" (reply_text spoken, so ASR can read it)

    def __post_init__(self) -> None:
        if self.silence_ms <= 0 or self.start_ms <= 0 or self.barge_in_ms <= 0:
            raise ValueError("silence_ms, start_ms and barge_in_ms must be > 0")
        if self.reply_s <= 0 or self.response_delay_s < 0:
            raise ValueError("reply_s must be > 0 and response_delay_s >= 0")
        if not self.reply_text.split():
            raise ValueError("reply_text must have at least one word")
        if self.voice not in ("tone", "flite"):
            raise ValueError(f"voice must be 'tone' or 'flite', got {self.voice!r}")


@dataclass(frozen=True)
class Reply:
    endpoint: float  # when the harness decided the user was done
    start: float  # first audio
    end: float  # last audio (earlier than start + reply_s if barged in)
    interrupted: bool


DEFAULT_HARNESS = HarnessConfig()


def plan_replies(audio: np.ndarray, cfg: HarnessConfig = DEFAULT_HARNESS) -> list[Reply]:
    """The harness state machine over the input's VAD frames -> when it speaks."""
    flags = voiced_frames(audio, cfg.vad, SAMPLE_RATE)
    f = cfg.vad.frame_len(SAMPLE_RATE) / SAMPLE_RATE
    duration = len(audio) / SAMPLE_RATE
    start_n = _frames(cfg.start_ms, f)
    silence_n = _frames(cfg.silence_ms, f)
    barge_n = _frames(cfg.barge_in_ms, f)

    replies: list[Reply] = []
    run = 0  # consecutive voiced frames
    silence = 0  # consecutive unvoiced frames since the user last spoke
    user_speaking = False
    busy: tuple[float, float, float] | None = None  # (endpoint, start, end) of the current reply
    for i, v in enumerate(flags):
        now = (i + 1) * f  # decision time: the end of this frame
        run = run + 1 if v else 0
        if busy is not None:
            endpoint, start, end = busy
            if now >= end:  # finished speaking; this frame is heard normally below
                replies.append(Reply(endpoint, start, end, interrupted=False))
                busy = None
                if not cfg.barge_in:
                    run = int(v)  # input during the reply was ignored
            elif cfg.barge_in and run >= barge_n:
                replies.append(Reply(endpoint, start, max(now, start), interrupted=True))
                busy, user_speaking, silence = None, True, 0
                continue
            else:
                continue
        if v:
            silence = 0
            if run >= start_n:
                user_speaking = True
        elif user_speaking:
            silence += 1
            if silence >= silence_n:
                start = now + cfg.response_delay_s
                busy = (now, start, start + cfg.reply_s)
                user_speaking, silence = False, 0
    if busy is not None and busy[1] < duration:
        replies.append(Reply(busy[0], busy[1], min(busy[2], duration), interrupted=False))
    return [r for r in replies if r.end > r.start and r.start < duration]


def _frames(ms: float, frame_s: float) -> int:
    return max(1, round(ms / 1000 / frame_s))


def synth_voice(n: int, level_dbfs: float = -20.0, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A steady voiced signal (8 harmonics of f0 with slow vibrato) at `level_dbfs` RMS, with
    10 ms fades so it starts and stops without clicks."""
    t = np.arange(n) / SAMPLE_RATE
    phase = 2 * np.pi * (f0 * t + 2.0 * np.sin(2 * np.pi * 5.0 * t) / (2 * np.pi * 5.0))
    x = sum(np.sin(h * phase + h) / h for h in range(1, 9))
    x = np.asarray(x, dtype=np.float64)
    x *= 10 ** (level_dbfs / 20) / max(float(np.sqrt(np.mean(x**2))), 1e-12)
    fade = min(n // 2, SAMPLE_RATE // 100)
    if fade:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))
        x[:fade] *= ramp
        x[n - fade :] *= ramp[::-1]
    return x.astype(np.float32)


def reply_words(reply: Reply, cfg: HarnessConfig) -> list[Word]:
    """The reply text spread evenly over the full reply; words past a barge-in are cut."""
    texts = cfg.reply_text.split()
    d = cfg.reply_s / len(texts)
    out = []
    for i, w in enumerate(texts):
        s = reply.start + i * d
        e = min(s + 0.85 * d, reply.end)
        if s < reply.end:
            out.append(Word(w, round(s, 6), round(e, 6)))
    return out


@cache
def flite_voice(text: str, level_dbfs: float = -20.0, voice: str = "slt") -> np.ndarray:
    """`text` spoken by flite (a Debian package, CMU voices pocketsphinx reads well), 16 kHz,
    at `level_dbfs` RMS over its voiced part, leading/trailing silence trimmed."""
    import soundfile as sf

    from model.eval.layout import resample

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "reply.wav"
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(wav)], check=True, capture_output=True)
        x, sr = sf.read(str(wav), dtype="float32")
    x = resample(np.asarray(x, dtype=np.float32), int(sr), SAMPLE_RATE)
    loud = np.flatnonzero(np.abs(x) > 1e-3)
    if len(loud):
        x = x[loud[0] : loud[-1] + 1]
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    return (x * (10 ** (level_dbfs / 20) / max(rms, 1e-12))).astype(np.float32)


def with_flite_voice(cfg: HarnessConfig) -> HarnessConfig:
    """`cfg` speaking its reply with flite; the reply lasts as long as the spoken text."""
    return dataclasses.replace(
        cfg, voice="flite", reply_s=len(flite_voice(cfg.reply_text, cfg.level_dbfs)) / SAMPLE_RATE
    )


class HarnessBaseline:
    """The harness baseline as a Responder (see module doc)."""

    stem = BASELINE_STEM

    def __init__(self, cfg: HarnessConfig | None = None, name: str = "harness baseline") -> None:
        self.cfg = cfg or DEFAULT_HARNESS
        self.name = name

    def plan(self, audio: np.ndarray) -> list[Reply]:
        return plan_replies(audio, self.cfg)

    def respond(self, inp: ClipInput) -> Response:
        n = len(inp.audio)
        out = np.zeros(n, dtype=np.float32)
        words: list[Word] = []
        replies = self.plan(inp.audio)
        for r in replies:
            a, b = round(r.start * SAMPLE_RATE), min(n, round(r.end * SAMPLE_RATE))
            if b > a and self.cfg.voice == "flite":
                speech = flite_voice(self.cfg.reply_text, self.cfg.level_dbfs)[: b - a]
                out[a : a + len(speech)] = speech
            elif b > a:
                out[a:b] = synth_voice(b - a, self.cfg.level_dbfs)
            words.extend(reply_words(r, self.cfg))
        info = {
            "replies": len(replies),
            "barge_ins": sum(r.interrupted for r in replies),
            "voiced_words": len(words),
        }
        return Response(out, words, info)


# -- the strong harness: Silero VAD + Smart Turn v3.2, as pipecat runs them ----------------------
SMART_TURN_STEM = "output_smart_turn"


class _Clock:
    """Clip time for pipecat's Smart Turn, which stamps buffered audio with time.monotonic():
    offline, frames arrive faster than real time, so it must read the clip's clock instead."""

    def __init__(self, t0: float = 1000.0) -> None:  # nonzero: pipecat treats 0 as "unset"
        self.t0 = t0
        self.now = 0.0

    def monotonic(self) -> float:
        return self.t0 + self.now

    def time(self) -> float:
        return self.t0 + self.now

    def perf_counter(self) -> float:
        import time

        return time.perf_counter()


def plan_replies_smart_turn(audio: np.ndarray, cfg: HarnessConfig = DEFAULT_HARNESS) -> list[Reply]:
    """pipecat's turn detection over the clip in 20 ms frames: SileroVADAnalyzer (its defaults:
    confidence 0.7, start 0.2 s, stop 0.2 s), and when the VAD says the user stopped,
    LocalSmartTurnAnalyzerV3 (smart-turn-v3.2-cpu.onnx, shipped in the pipecat-ai wheel) decides
    whether the turn is complete; if not, its 3 s silence timeout ends the turn. The reply then
    starts (`cfg.response_delay_s` later) and lasts `cfg.reply_s`; with `cfg.barge_in` the VAD's
    "user started speaking" stops it, as pipecat's default interruption does. `silence_ms`,
    `start_ms`, `barge_in_ms` and `vad` of `cfg` are the energy harness's and are not used."""
    return asyncio.run(_plan_smart_turn(np.asarray(audio, dtype=np.float32), cfg))


async def _plan_smart_turn(audio: np.ndarray, cfg: HarnessConfig) -> list[Reply]:
    from loguru import logger

    logger.disable("pipecat")
    from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
    from pipecat.audio.turn.smart_turn import base_smart_turn
    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.audio.vad.vad_analyzer import VADState

    frame = SAMPLE_RATE // 50  # 20 ms
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    duration = len(audio) / SAMPLE_RATE
    clock = _Clock()
    vad = SileroVADAnalyzer(sample_rate=SAMPLE_RATE)
    vad.set_sample_rate(SAMPLE_RATE)
    turn: Any = LocalSmartTurnAnalyzerV3(sample_rate=SAMPLE_RATE)
    turn.set_sample_rate(SAMPLE_RATE)
    replies: list[Reply] = []
    busy: tuple[float, float, float] | None = None
    prev = VADState.QUIET
    user_speaking = False
    try:
        with mock.patch.object(base_smart_turn, "time", clock):
            for i in range(0, len(pcm) - frame + 1, frame):
                now = (i + frame) / SAMPLE_RATE
                clock.now = now
                buf = pcm[i : i + frame].tobytes()
                state = await vad.analyze_audio(buf)
                started = state == VADState.SPEAKING and prev in (VADState.QUIET, VADState.STARTING)
                stopped = state == VADState.QUIET and prev in (VADState.SPEAKING, VADState.STOPPING)
                prev = state
                if busy is not None and now >= busy[2]:
                    replies.append(Reply(*busy, interrupted=False))
                    busy = None
                if started:
                    user_speaking = True
                    if busy is not None and cfg.barge_in:
                        replies.append(Reply(busy[0], busy[1], max(now, busy[1]), interrupted=True))
                        busy = None
                if stopped:
                    user_speaking = False
                complete = turn.append_audio(buf, user_speaking) == EndOfTurnState.COMPLETE
                if stopped and not complete:
                    complete = (await turn.analyze_end_of_turn())[0] == EndOfTurnState.COMPLETE
                if complete and busy is None:
                    start = now + cfg.response_delay_s
                    busy = (now, start, start + cfg.reply_s)
    finally:
        await turn.cleanup()
    if busy is not None and busy[1] < duration:
        replies.append(Reply(busy[0], busy[1], min(busy[2], duration), interrupted=False))
    return [r for r in replies if r.end > r.start and r.start < duration]


class SmartTurnBaseline(HarnessBaseline):
    """The strong harness (Silero VAD + Smart Turn v3.2, pipecat's analyzers) as a Responder."""

    stem = SMART_TURN_STEM

    def __init__(self, cfg: HarnessConfig | None = None, name: str = "smart turn harness") -> None:
        super().__init__(cfg, name)

    def plan(self, audio: np.ndarray) -> list[Reply]:
        return plan_replies_smart_turn(audio, self.cfg)
