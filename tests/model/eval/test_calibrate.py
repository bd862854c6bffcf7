from __future__ import annotations

import json
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import GateConfig
from model.eval import synth
from model.eval.calibrate import Candidate, candidates, choose, main
from model.interaction import InteractionModel
from model.tokenizer import Tokenizer
from tests.model.conftest import micro_config


def cand(start: float, pause: list[int], turn: list[int], lat: list[float]) -> Candidate:
    c = Candidate(GateConfig(start=start))
    c.tor["pause_handling"] = pause
    c.tor["smooth_turn_taking"] = turn
    c.latency["smooth_turn_taking"] = lat
    return c


def test_candidates_dedupe_and_keep_below_start() -> None:
    gates = candidates([0.1, 0.2], [1.0, 0.5, 1.0])
    assert gates == [
        GateConfig(start=0.1, keep=0.1),
        GateConfig(start=0.1, keep=0.05),
        GateConfig(start=0.2, keep=0.2),
        GateConfig(start=0.2, keep=0.1),
    ]


def test_choose_prefers_turn_taking_within_the_pause_bound() -> None:
    eager = cand(0.05, [1, 1, 0, 0], [1, 1, 1, 1], [0.1] * 4)  # best turn-taking, but takes over in pauses
    ok_slow = cand(0.3, [0, 0, 0, 0], [1, 1, 1, 0], [0.9] * 3)
    ok_fast = cand(0.2, [0, 0, 0, 0], [1, 1, 1, 0], [0.3] * 3)  # same TOR, lower latency: wins
    shy = cand(0.5, [0, 0, 0, 0], [1, 0, 0, 0], [0.2])
    argmax = Candidate(GateConfig())
    chosen, met = choose([argmax, eager, ok_slow, ok_fast, shy], pause_max=0.1)
    assert chosen is ok_fast and met
    chosen, met = choose([argmax, eager], pause_max=0.1)  # nothing meets the bound: least pause TOR
    assert chosen is eager and not met


def test_calibrate_cli_writes_the_table_and_the_gate(tmp_path: Path, tokenizer: Tokenizer) -> None:
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ck", InteractionModel(micro_config()).eval(), tokenizer)
    root = tmp_path / "val"
    synth.pause_clip(root, "p", speech=((0.1, 0.3), (0.6, 0.8)), duration=1.0)
    synth.turn_taking_clip(root, "t", speech=((0.1, 0.4),), duration=1.0)
    out = tmp_path / "cal"
    argv = ["--checkpoint", str(ck), "--root", str(root), "--starts", "0.5,0.999", "--keep-ratios", "1"]
    assert main([*argv, "--out", str(out), "--write"]) == 0
    table = json.loads((out / "calibration.json").read_text())
    assert [r["start"] for r in table["rows"]] == [None, 0.5, 0.999]  # argmax first, then the sweep
    assert "| argmax |" in (out / "calibration.md").read_text()
    gate = load_checkpoint(ck).config.gate  # written, and the manifest still verifies
    assert gate.start == table["chosen"]["start"] and gate.start in (0.5, 0.999)
    # re-choosing from the saved table runs no model: a bound everyone meets picks the best turn-taker
    assert main(["--checkpoint", str(ck), "--root", str(root), "--table", str(out / "calibration.json"),
                 "--pause-max", "1.0", "--out", str(tmp_path / "again")]) == 0  # fmt: skip
    again = json.loads((tmp_path / "again" / "calibration.json").read_text())
    assert again["rows"] == table["rows"] and again["clips"] == table["clips"]
