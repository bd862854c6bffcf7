from __future__ import annotations

import json
from pathlib import Path

import soundfile as sf

from model.data.generate import generate
from model.eval.dialogues import export_fdbench
from model.eval.layout import discover


def test_heldout_dialogues_become_fdbench_clips(tmp_path: Path) -> None:
    generate(
        tmp_path / "dlg",
        n_clips=8,
        split="heldout",
        seed=3,
        scenarios=["pause", "turn_taking", "interruption", "timed_speech"],
        progress=False,
    )
    counts = export_fdbench(tmp_path / "dlg" / "heldout", tmp_path / "fdb")
    assert set(counts) == {
        "synthetic_pause_handling",
        "synthetic_smooth_turn_taking",
        "synthetic_user_interruption",
        "timespeak",
    }
    clips = discover(tmp_path / "fdb")
    assert len(clips) == sum(counts.values())
    for task_dir in (tmp_path / "fdb").iterdir():
        for clip in task_dir.iterdir():
            info = sf.info(str(clip / "input.wav"))
            assert info.channels == 1 and info.samplerate == 16000
            duration = info.frames / info.samplerate
            if task_dir.name == "synthetic_pause_handling":
                start, end = json.loads((clip / "pause.json").read_text())[0]["timestamp"]
                assert start < end < duration  # the pause lies inside the cropped input
            if task_dir.name == "synthetic_user_interruption":
                start, end = json.loads((clip / "interrupt.json").read_text())[0]["timestamp"]
                assert start < end < duration
            if task_dir.name == "timespeak":
                spec = json.loads((clip / "timespeak.json").read_text())
                assert spec["expected_onsets"] and spec["stop"] < duration
