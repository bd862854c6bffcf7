"""The harness baseline responds one silence threshold after the user stops, measured end to
end through the files and the FD-bench metric, and stops within a bounded time on barge-in."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.eval import synth
from model.eval.baselines import HarnessBaseline, HarnessConfig, plan_replies
from model.eval.layout import BASELINE_STEM, MODEL_STEM
from model.eval.runner import run_responder
from model.eval.scoring import score_system

FRAME_S = 0.02


def run(root: Path, cfg: HarnessConfig) -> None:
    run_responder(HarnessBaseline(cfg), root, log=lambda s: None)


@pytest.mark.parametrize("silence_ms", [500, 600, 700])
def test_turn_taking_latency_is_the_silence_threshold(tmp_path: Path, silence_ms: int) -> None:
    synth.turn_taking_clip(tmp_path, "a", speech=((0.3, 1.8),), duration=4.0)
    synth.turn_taking_clip(tmp_path, "b", speech=((0.2, 0.9), (1.2, 2.13)), duration=4.5)  # off the frame grid
    run(tmp_path, HarnessConfig(silence_ms=silence_ms))
    summ = score_system(tmp_path, BASELINE_STEM, "baseline").tasks["smooth_turn_taking"]
    assert summ.metrics["tor"] == 1.0
    for lat in summ.latencies:
        assert lat == pytest.approx(silence_ms / 1000, abs=FRAME_S + 1e-6)
    assert not (tmp_path / "smooth_turn_taking" / "a" / f"{MODEL_STEM}.wav").exists()  # coexists with the model's


def test_short_pauses_do_not_trigger_a_reply() -> None:
    audio = synth.render([(0.2, 1.0), (1.4, 2.0)], 2.5)  # a 400 ms pause, then speech up to the end-ish
    replies = plan_replies(audio, HarnessConfig(silence_ms=600))
    assert replies == []  # the user never went quiet for 600 ms before the clip ended (2.5 - 2.0 < 0.6)


def test_barge_in_stops_within_bounded_time(tmp_path: Path) -> None:
    # reply starts at 1.2 + 0.6 = 1.8 and would run to 3.8; the user barges in at 2.6
    synth.interruption_clip(tmp_path, "a", context=(0.2, 1.2), interrupt=(2.6, 3.6), duration=6.0)
    cfg = HarnessConfig(barge_in=True, barge_in_ms=200)
    run(tmp_path, cfg)
    summ = score_system(tmp_path, BASELINE_STEM, "baseline").tasks["user_interruption"]
    (stop,) = summ.stop_latencies
    assert 0.15 <= stop <= cfg.barge_in_ms / 1000 + 2 * FRAME_S
    # then it answers the interruption one silence threshold after it ends (upstream's crop)
    assert summ.metrics["latency_upstream_s"] == pytest.approx(0.6, abs=FRAME_S + 1e-6)


def test_without_barge_in_the_reply_runs_to_its_end(tmp_path: Path) -> None:
    synth.interruption_clip(tmp_path, "a", context=(0.2, 1.2), interrupt=(2.6, 3.6), duration=6.0)
    run(tmp_path, HarnessConfig(barge_in=False))
    summ = score_system(tmp_path, BASELINE_STEM, "baseline").tasks["user_interruption"]
    (stop,) = summ.stop_latencies
    assert stop == pytest.approx(3.8 - 2.6, abs=FRAME_S + 1e-6)


def test_response_delay_shifts_the_reply() -> None:
    audio = synth.render([(0.3, 1.0)], 4.0)
    (r,) = plan_replies(audio, HarnessConfig(response_delay_s=0.5, reply_s=1.0))
    assert r.endpoint == pytest.approx(1.6, abs=FRAME_S) and r.start == pytest.approx(r.endpoint + 0.5)
    assert r.end == pytest.approx(r.start + 1.0) and not r.interrupted


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        HarnessConfig(silence_ms=0)
    with pytest.raises(ValueError):
        HarnessConfig(reply_text="  ")
