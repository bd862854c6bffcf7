"""Scoring from files: synthetic clips + outputs with known answers -> the known metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.eval import synth
from model.eval.layout import LayoutError, discover
from model.eval.scoring import score_system


def test_known_answers_through_files(tmp_path: Path) -> None:
    d = synth.turn_taking_clip(tmp_path, "a", speech=((0.3, 1.8),), duration=4.0)
    synth.fake_output(d, [(2.2, 3.4, "well hello there friend")])
    d = synth.pause_clip(tmp_path, "a", speech=((0.3, 1.5), (2.5, 3.5)), duration=5.0, sample_rate=48000)
    synth.fake_output(d, [(1.9, 2.1, "mm")])
    d = synth.interruption_clip(tmp_path, "a", context=(0.2, 1.2), interrupt=(2.6, 3.6), duration=6.0)
    synth.fake_output(d, [(1.6, 3.0, "first reply goes on"), (4.0, 5.2, "okay tomorrow is sunny")])
    d = synth.backchannel_clip(tmp_path, "a", times=(2.1, 4.1), duration=6.5)
    synth.fake_output(d, [(2.05, 2.15, "mm hm"), (4.05, 4.15, "yeah")])  # inside the ground-truth bins
    d = synth.timespeak_clip(tmp_path, "a", period_s=2.0, start=1.0, stop=5.0, duration=6.0)
    synth.fake_output(d, [(0.2, 0.5, "okay"), (1.1, 1.4, "tick"), (3.0, 3.3, "tick"), (4.0, 4.2, "tick")])

    s = score_system(tmp_path, "output", "fake")
    t = s.tasks
    assert t["smooth_turn_taking"].metrics["tor"] == 1.0
    assert t["smooth_turn_taking"].metrics["latency_s"] == pytest.approx(0.4)
    assert t["pause_handling"].metrics["tor"] == 0.0
    ui = t["user_interruption"]
    assert ui.metrics["tor"] == 1.0 and ui.metrics["latency_s"] == pytest.approx(0.0)  # "on" starts at 2.65
    assert ui.metrics["latency_upstream_s"] == pytest.approx(0.4)
    assert ui.stop_latencies == pytest.approx([0.4], abs=0.03)
    bc = t["backchannel"].metrics
    assert bc["tor"] == 0.0 and bc["backchannels_per_s"] == pytest.approx(2 / 6.5)
    assert bc["jsd"] == pytest.approx(0.0, abs=1e-3)
    # onsets 0.2 (before the window: ignored), 1.1 (matches 1.0), 3.0 (matches 3.0), 4.0 (spurious); 5.0 missed
    assert t["timespeak"].metrics["score"] == pytest.approx((2 - 1) / 3)
    rows = {r["task"]: r for r in s.clips}
    assert rows["user_interruption"]["reply"].startswith("on okay")


def test_upstream_gt_distribution_file(tmp_path: Path) -> None:
    d = synth.backchannel_clip(tmp_path, "7", duration=6.5, task="icc_backchannel")
    (d / "backchannel.json").unlink()
    synth.fake_output(d, [(2.05, 2.35, "mm")])
    assert score_system(tmp_path, "output", "x").tasks["icc_backchannel"].metrics["jsd"] is None  # no ground truth
    gt = [0.0] * 33
    gt[10] = gt[11] = 0.5  # the backchannel covers bins int(2.05/0.2) = 10 .. int(2.35/0.2) = 11
    (d.parent / "icc_gt_distribution.json").write_text(json.dumps({"7": gt}))
    jsd = score_system(tmp_path, "output", "x").tasks["icc_backchannel"].metrics["jsd"]
    assert jsd == pytest.approx(0.0, abs=1e-3)


def test_task_kinds_from_names_and_files(tmp_path: Path) -> None:
    synth.pause_clip(tmp_path, "1", task="candor_pause_handling")
    synth.turn_taking_clip(tmp_path, "1", task="weird_name")  # kind from turn_taking.json
    kinds = {c.task: c.kind for c in discover(tmp_path)}
    assert kinds == {"candor_pause_handling": "pause_handling", "weird_name": "smooth_turn_taking"}
    with pytest.raises(LayoutError, match="no clips for task"):
        discover(tmp_path, ["nope"])


def test_missing_output_is_a_clear_error(tmp_path: Path) -> None:
    synth.pause_clip(tmp_path, "1")
    with pytest.raises(LayoutError, match=r"output\.wav: missing"):
        score_system(tmp_path, "output", "x")
