"""The strong harness baseline: pipecat's Silero VAD + Smart Turn v3.2 over a clip, offline."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("pipecat")
pytest.importorskip("onnxruntime")

from model.eval.baselines import HarnessConfig, flite_voice, plan_replies_smart_turn
from model.eval.layout import SAMPLE_RATE

pytestmark = pytest.mark.skipif(shutil.which("flite") is None, reason="needs flite")


def silence(s: float) -> np.ndarray:
    return np.zeros(round(s * SAMPLE_RATE), np.float32)


@pytest.mark.slow
def test_complete_question_then_silence_gets_a_reply_after_it() -> None:
    q = flite_voice("what is the weather like in paris today?")
    audio = np.concatenate([silence(0.5), q, silence(4.0)])
    end = 0.5 + len(q) / SAMPLE_RATE
    replies = plan_replies_smart_turn(audio, HarnessConfig(reply_s=1.0))
    assert len(replies) == 1
    r = replies[0]
    assert end < r.start < end + 1.0  # after the question, well before the 3 s fallback timeout
    assert not r.interrupted


@pytest.mark.slow
def test_barge_in_stops_the_reply() -> None:
    q = flite_voice("what is the weather like in paris today?")
    audio = np.concatenate([silence(0.5), q, silence(1.0), q, silence(1.0)])
    replies = plan_replies_smart_turn(audio, HarnessConfig(reply_s=5.0))
    assert replies[0].interrupted
    second = 0.5 + len(q) / SAMPLE_RATE + 1.0
    assert second < replies[0].end < second + 0.6  # the VAD's 0.2 s start plus Silero's frames
