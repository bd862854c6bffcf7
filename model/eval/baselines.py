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

from dataclasses import dataclass

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

    def __post_init__(self) -> None:
        if self.silence_ms <= 0 or self.start_ms <= 0 or self.barge_in_ms <= 0:
            raise ValueError("silence_ms, start_ms and barge_in_ms must be > 0")
        if self.reply_s <= 0 or self.response_delay_s < 0:
            raise ValueError("reply_s must be > 0 and response_delay_s >= 0")
        if not self.reply_text.split():
            raise ValueError("reply_text must have at least one word")


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


class HarnessBaseline:
    """The harness baseline as a Responder (see module doc)."""

    stem = BASELINE_STEM

    def __init__(self, cfg: HarnessConfig | None = None, name: str = "harness baseline") -> None:
        self.cfg = cfg or DEFAULT_HARNESS
        self.name = name

    def respond(self, inp: ClipInput) -> Response:
        n = len(inp.audio)
        out = np.zeros(n, dtype=np.float32)
        words: list[Word] = []
        replies = plan_replies(inp.audio, self.cfg)
        for r in replies:
            a, b = round(r.start * SAMPLE_RATE), min(n, round(r.end * SAMPLE_RATE))
            if b > a:
                out[a:b] = synth_voice(b - a, self.cfg.level_dbfs)
            words.extend(reply_words(r, self.cfg))
        info = {
            "replies": len(replies),
            "barge_ins": sum(r.interrupted for r in replies),
            "voiced_words": len(words),
        }
        return Response(out, words, info)
