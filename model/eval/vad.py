"""Energy voice-activity detection on 16 kHz mono audio -> speech segments [(start_s, end_s)].

Why energy and not Silero: there are no VAD/ASR weights in this repository, and the signals we
score are either our own model's vocoder output (silence is digital near-silence: dMel bin 0),
a harness baseline's synthetic voice, or benchmark speech recorded at normal levels. A frame
energy threshold is exact on the first two and good enough on the third; every threshold is
a documented field so a run can state what it used.

Defaults (`VadConfig()`):
- 20 ms frames (320 samples), no overlap: the time resolution of every onset/offset we report.
- threshold -40 dBFS frame RMS (full scale = 1.0). Speech recorded at conversational levels
  sits around -30..-15 dBFS per 20 ms frame; room noise and vocoder "silence" are below -50.
  `adaptive_margin_db` (off by default) raises the threshold to noise floor + margin, where the
  noise floor is the 10th percentile of frame levels, for noisy recordings.
- hangover 200 ms: voiced runs separated by less than this are one segment (stop consonants
  and breaths between words are 50-200 ms; pauses between turns are longer).
- min segment 60 ms: shorter bursts (clicks, plosive-only blips) are dropped.
A segment starts at its first voiced frame's start and ends at its last voiced frame's end
(the hangover only merges; it never extends a segment past the audio that was voiced).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
Segment = tuple[float, float]


@dataclass(frozen=True)
class VadConfig:
    frame_ms: float = 20.0
    threshold_dbfs: float = -40.0
    adaptive_margin_db: float | None = None  # None = fixed threshold
    hangover_ms: float = 200.0
    min_segment_ms: float = 60.0

    def frame_len(self, sample_rate: int = SAMPLE_RATE) -> int:
        return max(1, round(self.frame_ms * sample_rate / 1000))


DEFAULT_VAD = VadConfig()


def frame_levels_db(audio: np.ndarray, cfg: VadConfig = DEFAULT_VAD, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """RMS level in dBFS of each full frame (a trailing partial frame is zero-padded)."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    n = cfg.frame_len(sample_rate)
    n_frames = -(-len(x) // n)
    if n_frames == 0:
        return np.zeros(0)
    padded = np.zeros(n_frames * n)
    padded[: len(x)] = x
    rms = np.sqrt(np.mean(padded.reshape(n_frames, n) ** 2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10))


def voiced_frames(audio: np.ndarray, cfg: VadConfig = DEFAULT_VAD, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Boolean per frame: above threshold. Exposed so streaming users (the harness baseline's
    endpointer) make frame decisions identical to the offline segmenter."""
    levels = frame_levels_db(audio, cfg, sample_rate)
    return levels > threshold_db(levels, cfg)


def threshold_db(levels: np.ndarray, cfg: VadConfig) -> float:
    """The fixed threshold, or noise floor + margin when adaptive (never below the fixed one)."""
    if cfg.adaptive_margin_db is None or len(levels) == 0:
        return cfg.threshold_dbfs
    floor = float(np.percentile(levels, 10))
    return max(cfg.threshold_dbfs, floor + cfg.adaptive_margin_db)


def segments_from_frames(
    voiced: np.ndarray, cfg: VadConfig = DEFAULT_VAD, sample_rate: int = SAMPLE_RATE, duration: float | None = None
) -> list[Segment]:
    """Voiced frame flags -> merged, length-filtered segments in seconds (clipped to `duration`)."""
    frame_s = cfg.frame_len(sample_rate) / sample_rate
    runs: list[list[int]] = []  # [first_frame, last_frame] inclusive
    gap_frames = cfg.hangover_ms / 1000 / frame_s
    for i in np.flatnonzero(voiced):
        gap = i - runs[-1][1] - 1 if runs else -1  # unvoiced frames since the last voiced one
        if runs and (gap == 0 or gap < gap_frames - 1e-9):
            runs[-1][1] = int(i)
        else:
            runs.append([int(i), int(i)])
    out: list[Segment] = []
    for a, b in runs:
        start, end = a * frame_s, (b + 1) * frame_s
        if duration is not None:
            end = min(end, duration)
        if end - start >= cfg.min_segment_ms / 1000 - 1e-9:
            out.append((round(start, 6), round(end, 6)))
    return out


def speech_segments(audio: np.ndarray, cfg: VadConfig = DEFAULT_VAD, sample_rate: int = SAMPLE_RATE) -> list[Segment]:
    """Speech segments of mono `audio` as [(start_s, end_s)], sorted and non-overlapping."""
    x = np.asarray(audio).reshape(-1)
    return segments_from_frames(voiced_frames(x, cfg, sample_rate), cfg, sample_rate, duration=len(x) / sample_rate)
