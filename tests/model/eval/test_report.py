from __future__ import annotations

import json
from pathlib import Path

from model.eval import synth
from model.eval.baselines import HarnessBaseline
from model.eval.layout import BASELINE_STEM
from model.eval.report import write_report
from model.eval.runner import run_responder
from model.eval.scoring import score_system


def test_report_has_both_systems(tmp_path: Path) -> None:
    root = tmp_path / "root"
    d = synth.turn_taking_clip(root, "a", speech=((0.3, 1.8),), duration=4.0)
    synth.fake_output(d, [(2.0, 3.2, "hello there how are you")])
    d = synth.interruption_clip(root, "a")
    synth.fake_output(d, [(1.5, 3.0, "the weather is fine"), (3.9, 5.0, "tomorrow | rain")])
    runs = {"harness baseline": run_responder(HarnessBaseline(), root, log=lambda s: None)}
    systems = [
        score_system(root, "output", "interaction model"),
        score_system(root, BASELINE_STEM, "harness baseline"),
    ]
    paths = write_report(tmp_path / "report", systems, {"root": str(root)}, runs)

    md = paths.markdown.read_text()
    assert "| task | metric | interaction model | harness baseline | FD-bench v1 published |" in md
    assert "Moshi 0.265" in md and "TML 0.40" in md  # published context on the latency row
    assert "ASR" in md and "Silero" in md and "latency.png" in md  # the notes say how words were scored
    assert "tomorrow \\| rain" in md  # reply text escaped in the table
    assert paths.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads(paths.json.read_text())
    assert [s["name"] for s in report["systems"]] == ["interaction model", "harness baseline"]
    row = next(r for r in report["rows"] if r["task"] == "smooth_turn_taking" and r["metric"] == "latency_s")
    assert abs(row["values"]["interaction model"] - 0.2) < 1e-6
    assert abs(row["values"]["harness baseline"] - 0.6) < 0.021
    assert report["systems"][1]["run"]["clips"] == 2 and report["systems"][0]["run"] is None
