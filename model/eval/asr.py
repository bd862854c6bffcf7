"""Words and their times from ASR of a system's output audio, as FD-bench scores it.

FD-bench transcribes `output.wav` with an ASR model; ours is pocketsphinx (optional `eval`
extra: its wheel ships an English acoustic model, dictionary and language model, so nothing
is downloaded). Only the audio inside speech segments (Silero VAD, padded by `PAD_S`) is
decoded, one utterance per segment, so long silences cost nothing and a word's time is the
segment offset plus pocketsphinx's 10 ms frame times. Fillers and silences (`<s>`, `<sil>`,
`[NOISE]`, ...) are dropped and alternate pronunciations (`word(2)`) are folded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

from model.eval.vad import SAMPLE_RATE, Segment
from model.eval.words import Word

PAD_S = 0.3  # context decoded around each speech segment
FRAME_S = 0.01  # pocketsphinx frame rate
_ALT = re.compile(r"\(\d+\)$")


class AsrUnavailable(RuntimeError):
    """The optional `eval` extra (pocketsphinx) is not installed."""


@cache
def _decoder() -> Any:
    try:
        from pocketsphinx import Decoder
    except ImportError as e:  # pragma: no cover - depends on the install
        raise AsrUnavailable(f"ASR needs the eval extra: pip install -e '.[eval]' ({e})") from e
    return Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def transcribe_span(audio: np.ndarray, offset: float = 0.0) -> list[Word]:
    """Words of one utterance (16 kHz mono float), times in seconds plus `offset`."""
    d = _decoder()
    d.start_utt()
    d.process_raw(_pcm16(audio), full_utt=True)
    d.end_utt()
    words = []
    for seg in d.seg():
        w = _ALT.sub("", seg.word)
        if not w or w.startswith(("<", "[")):
            continue
        start = offset + seg.start_frame * FRAME_S
        end = offset + (seg.end_frame + 1) * FRAME_S
        words.append(Word(w, round(start, 3), round(end, 3)))
    return words


def transcribe(audio: np.ndarray, segments: Sequence[Segment], pad_s: float = PAD_S) -> list[Word]:
    """Words of `audio` decoded inside each speech segment (merged when padding overlaps)."""
    duration = len(audio) / SAMPLE_RATE
    spans: list[list[float]] = []
    for s, e in sorted(segments):
        a, b = max(0.0, s - pad_s), min(duration, e + pad_s)
        if spans and a <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], b)
        else:
            spans.append([a, b])
    words: list[Word] = []
    for a, b in spans:
        lo, hi = round(a * SAMPLE_RATE), round(b * SAMPLE_RATE)
        words += transcribe_span(audio[lo:hi], offset=lo / SAMPLE_RATE)
    return words
