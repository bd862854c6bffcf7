"""Resampler: known sines in, 16 kHz mono float32 out at the right place, pitch and level."""

from __future__ import annotations

import fractions
import itertools

import av
import numpy as np
import pytest
from aiortc.codecs.g711 import PcmuEncoder
from aiortc.codecs.opus import OpusEncoder

from media.resampler import AudioChunk, Resampler, float_to_s16_frame

RATE = 16_000


def sine(freq: float, rate: int, n: int, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)  # (n,) float64


def s16_frames(x: np.ndarray, rate: int, channels: int, frame: int, pts0: int = 0) -> list[av.AudioFrame]:
    """Split a mono signal into s16 frames, duplicated into `channels` (dual-mono like a browser)."""
    pcm = np.rint(x * 32767).astype(np.int16)  # (n,)
    out = []
    for i in range(0, len(pcm) - frame + 1, frame):
        seg = np.repeat(pcm[i : i + frame, None], channels, axis=1).reshape(1, -1)  # packed (1, frame*ch)
        f = av.AudioFrame.from_ndarray(seg, format="s16", layout="stereo" if channels == 2 else "mono")
        f.sample_rate = rate
        f.pts = (pts0 + i) % 2**32  # RTP timestamps wrap at 32 bits
        f.time_base = fractions.Fraction(1, rate)
        out.append(f)
    return out


def run(r: Resampler, frames: list[av.AudioFrame], flush: bool = True) -> list[AudioChunk]:
    chunks = [c for f in frames for c in r.resample(f)]
    return chunks + (r.flush() if flush else [])


def assert_contiguous(chunks: list[AudioChunk]) -> None:
    for a, b in itertools.pairwise(chunks):
        assert b.pts == a.pts + a.samples.size


def peak_hz(y: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    return float(np.argmax(spec) * rate / y.size)


@pytest.mark.parametrize(
    ("rate", "channels", "frame", "freq"),
    [(48_000, 2, 960, 440.0), (8_000, 1, 160, 1000.0)],
    ids=["opus-48k-stereo", "pcmu-8k-mono"],
)
def test_sine_rate_length_pitch_level(rate: int, channels: int, frame: int, freq: float) -> None:
    pts0 = 2**32 - 5 * frame  # wraps a few frames in
    frames = s16_frames(sine(freq, rate, rate), rate, channels, frame, pts0)  # 1 s
    r = Resampler()

    before_flush = run(r, frames, flush=False)
    n_before = sum(c.samples.size for c in before_flush)
    assert RATE - 64 <= n_before <= RATE  # only the filter delay is held back
    chunks = before_flush + r.flush()
    y = np.concatenate([c.samples for c in chunks])
    assert y.dtype == np.float32 and y.ndim == 1
    assert y.size == RATE  # exactly 1 s once flushed
    assert_contiguous(chunks)
    assert chunks[0].pts == round(pts0 * RATE / rate)  # media clock from the RTP pts, across the wrap
    assert r.discontinuities == 0 and r.format_changes == 0

    mid = y[1000:-1000]  # skip filter edges
    assert abs(peak_hz(y, RATE) - freq) <= 2.0
    rms = float(np.sqrt(np.mean(mid.astype(np.float64) ** 2)))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.02)  # dual-mono is not +3 dB
    assert np.abs(y).max() <= 1.0


@pytest.mark.parametrize(
    ("rate", "layout", "fmt"), [(44_100, "stereo", "fltp"), (22_050, "mono", "s32"), (16_000, "mono", "flt")]
)
def test_any_rate_layout_format(rate: int, layout: str, fmt: str) -> None:
    x = sine(700.0, rate, rate, 0.3)  # (rate,) 1 s
    ch = 2 if layout == "stereo" else 1
    n = rate // 100  # 10 ms frames
    r = Resampler()
    chunks: list[AudioChunk] = []
    for i in range(0, rate - n + 1, n):
        seg = np.repeat(x[i : i + n, None], ch, axis=1)  # (n, ch)
        arr: np.ndarray
        if fmt == "fltp":
            arr = np.ascontiguousarray(seg.T, dtype=np.float32)  # planar (ch, n)
        elif fmt == "flt":
            arr = seg.reshape(1, -1).astype(np.float32)  # packed (1, n*ch)
        else:
            arr = np.rint(seg * 2**31 * 0.999).astype(np.int32).reshape(1, -1)  # packed s32
        f = av.AudioFrame.from_ndarray(arr, format=fmt, layout=layout)
        f.sample_rate = rate
        f.pts = i
        f.time_base = fractions.Fraction(1, rate)
        chunks += r.resample(f)
    chunks += r.flush()
    y = np.concatenate([c.samples for c in chunks])
    # exact for 48k/8k; swresample's flush drops a partial filter tail (~2 ms) at odd ratios
    assert abs(y.size - RATE) <= 48
    assert_contiguous(chunks)
    assert abs(peak_hz(y, RATE) - 700.0) <= 2.0
    assert float(np.sqrt(np.mean(y[1000:-1000] ** 2))) == pytest.approx(0.3 / np.sqrt(2), rel=0.02)


def test_loss_leaves_a_pts_hole_of_exactly_the_lost_duration() -> None:
    frames = s16_frames(sine(440.0, 48_000, 48_000), 48_000, 2, 960, pts0=123_456)
    kept = frames[:10] + frames[15:]  # 5 Opus frames (100 ms) lost
    r = Resampler()
    chunks = run(r, kept)
    assert r.discontinuities == 1
    starts = [c.pts - chunks[0].pts for c in chunks]
    ends = [s + c.samples.size for s, c in zip(starts, chunks, strict=True)]
    # the pre-gap tail was flushed in place: audio covers [0, 3200) and [4800, 16000) exactly
    covered = np.zeros(RATE, bool)
    for s, e in zip(starts, ends, strict=True):
        assert not covered[s:e].any()
        covered[s:e] = True
    assert covered[:3200].all() and not covered[3200:4800].any() and covered[4800:].all()


def test_format_change_recreates_resampler_and_keeps_the_clock() -> None:
    a = s16_frames(sine(440.0, 48_000, 9600), 48_000, 2, 960)  # 200 ms of Opus
    b = s16_frames(sine(440.0, 8_000, 1600), 8_000, 1, 160, pts0=1600)  # then 200 ms of PCMU, same clock
    r = Resampler()
    chunks = run(r, a + b)
    assert r.format_changes == 1
    assert_contiguous(chunks)
    assert sum(c.samples.size for c in chunks) == 6400


def test_output_frames_are_what_aiortc_encoders_take() -> None:
    """Outbound decision: 16 kHz dual-mono s16 frames; aiortc's Opus/PCMU encoders resample themselves."""
    x = sine(440.0, RATE, 320 * 10).astype(np.float32)
    opus, pcmu = OpusEncoder(), PcmuEncoder()
    n_opus = n_pcmu = 0
    for i in range(10):
        f = float_to_s16_frame(x[i * 320 : (i + 1) * 320], pts=i * 320)
        assert (f.format.name, f.layout.name, f.sample_rate, f.samples, f.pts) == ("s16", "stereo", RATE, 320, i * 320)
        assert f.time_base == fractions.Fraction(1, RATE)
        back = f.to_ndarray().reshape(-1, 2)[:, 0] / 32767  # dual-mono: L == R
        assert np.abs(back - x[i * 320 : (i + 1) * 320]).max() < 1e-4
        n_opus += len(opus.encode(f)[0])
        n_pcmu += sum(len(p) for p in pcmu.encode(f)[0])
    assert n_opus >= 9  # one 20 ms Opus packet per frame (the first may be held by the encoder)
    assert n_pcmu >= 9 * 160  # 8 kHz mono, 160 bytes per 20 ms
