"""Silero VAD speech segments, as FD-bench computes them (optional `eval` extra).

The ONNX model ships inside the `silero-vad` wheel (no download); the package's own
`get_speech_timestamps` runs it with its defaults (threshold 0.5, min speech 250 ms, min
silence 100 ms, 30 ms padding). Importing `silero_vad` sets torch to one thread as a side
effect; `segments` restores the caller's setting so the model under test keeps its threads.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import torch

from model.eval.vad import SAMPLE_RATE, Segment


class SileroUnavailable(RuntimeError):
    """The optional `eval` extra (silero-vad, onnxruntime) is not installed."""


@cache
def _model() -> tuple[Any, Any]:
    threads = torch.get_num_threads()
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad
    except ImportError as e:  # pragma: no cover - depends on the install
        raise SileroUnavailable(f"Silero VAD needs the eval extra: pip install -e '.[eval]' ({e})") from e
    finally:
        torch.set_num_threads(threads)
    return load_silero_vad(onnx=True), get_speech_timestamps


def speech_segments(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[Segment]:
    """Speech segments [(start_s, end_s)] of mono 16 kHz `audio` by Silero VAD."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"Silero VAD here runs at {SAMPLE_RATE} Hz, got {sample_rate}")
    model, get_speech_timestamps = _model()
    threads = torch.get_num_threads()
    try:
        model.reset_states()
        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32).reshape(-1))
        stamps = get_speech_timestamps(x, model, sampling_rate=SAMPLE_RATE, return_seconds=False)
    finally:
        torch.set_num_threads(threads)
    return [(round(s["start"] / SAMPLE_RATE, 6), round(s["end"] / SAMPLE_RATE, 6)) for s in stamps]
