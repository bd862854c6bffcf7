from __future__ import annotations

import numpy as np
import pytest

from model.eval.synth import burst, render
from model.eval.vad import VadConfig, frame_levels_db, speech_segments

SR = 16000


def test_finds_bursts_within_30ms() -> None:
    truth = [(0.25, 0.75), (1.5, 2.21), (3.03, 3.4)]
    audio = render(truth, 4.0)
    audio += (10 ** (-60 / 20) * np.random.RandomState(0).randn(len(audio))).astype(np.float32)  # quiet room
    segs = speech_segments(audio)
    assert len(segs) == len(truth)
    for (s, e), (ts, te) in zip(segs, truth, strict=True):
        assert abs(s - ts) <= 0.03 and abs(e - te) <= 0.03


def test_silence_has_no_segments() -> None:
    assert speech_segments(np.zeros(SR, np.float32)) == []
    assert speech_segments(np.zeros(0, np.float32)) == []


def test_hangover_merges_short_gaps_and_min_length_drops_clicks() -> None:
    audio = render([(0.2, 0.6), (0.7, 1.0), (2.0, 2.03)], 3.0)  # 100 ms gap; a 30 ms click
    segs = speech_segments(audio)
    assert len(segs) == 1 and segs[0] == pytest.approx((0.2, 1.0), abs=0.03)
    no_hang = speech_segments(audio, VadConfig(hangover_ms=0, min_segment_ms=0))
    assert len(no_hang) == 3


def test_levels_and_adaptive_threshold_in_noise() -> None:
    n = SR * 3
    noise = (10 ** (-30 / 20) * np.random.RandomState(1).randn(n)).astype(np.float32)  # above -40 dBFS
    audio = noise + render([(1.0, 2.0)], 3.0, level_dbfs=-10)
    assert np.median(frame_levels_db(noise)) == pytest.approx(-30, abs=1.0)
    assert len(speech_segments(audio)) == 1 and speech_segments(audio)[0][1] - speech_segments(audio)[0][0] > 2.5
    segs = speech_segments(audio, VadConfig(adaptive_margin_db=10))
    assert len(segs) == 1 and segs[0] == pytest.approx((1.0, 2.0), abs=0.03)


def test_burst_level() -> None:
    x = burst(SR, level_dbfs=-20)
    assert 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))) == pytest.approx(-20, abs=0.2)
