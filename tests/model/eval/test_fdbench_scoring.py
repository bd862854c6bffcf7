"""FD-bench-style scoring: pocketsphinx ASR word times, Silero VAD segments (the `eval` extra)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.eval.layout import SAMPLE_RATE, resample

pytest.importorskip("pocketsphinx")
pytest.importorskip("silero_vad")

from model.eval import asr, silero

pytestmark = pytest.mark.skipif(shutil.which("flite") is None, reason="needs flite")


def flite(text: str, tmp: Path) -> np.ndarray:
    wav = tmp / "s.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(wav)], check=True, capture_output=True)
    x, sr = sf.read(str(wav), dtype="float32")
    return resample(x, sr, SAMPLE_RATE)


def energy_onset_offset(x: np.ndarray) -> tuple[float, float]:
    """Where the synthesized speech really is: first/last 10 ms frame above -35 dBFS."""
    n = SAMPLE_RATE // 100
    frames = x[: len(x) // n * n].reshape(-1, n)
    loud = np.flatnonzero(20 * np.log10(np.sqrt((frames**2).mean(1)) + 1e-10) > -35)
    return loud[0] * 0.01, (loud[-1] + 1) * 0.01


@pytest.mark.slow
def test_silero_segments_and_asr_word_times_on_a_synthesized_sentence(tmp_path: Path) -> None:
    speech = flite("please tell me the weather in paris today", tmp_path)
    lead, gap = 1.0, 1.5
    audio = np.concatenate(
        [np.zeros(int(lead * SAMPLE_RATE)), speech, np.zeros(int(gap * SAMPLE_RATE)), speech, np.zeros(SAMPLE_RATE)]
    ).astype(np.float32)
    on, off = energy_onset_offset(speech)
    second = lead + len(speech) / SAMPLE_RATE + gap
    segs = silero.speech_segments(audio)
    assert len(segs) == 2  # speech, silence, speech, silence
    for (s, e), base in zip(segs, (lead, second), strict=True):
        assert abs(s - (base + on)) < 0.15 and abs(e - (base + off)) < 0.25

    words = asr.transcribe(audio, segs[:1])
    text = [w.text for w in words]
    assert "weather" in text and "paris" in text
    assert all(lead + on - 0.15 <= w.start < w.end <= lead + off + 0.15 for w in words)
    assert abs(words[0].start - (lead + on)) < 0.15  # the first word starts with the speech
    assert abs(words[-1].end - (lead + off)) < 0.15
    assert asr.transcribe(np.zeros(3 * SAMPLE_RATE, np.float32), []) == []
