from __future__ import annotations

import json
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import GateConfig
from model.eval import synth
from model.eval.calibrate import Candidate, SavedCandidate, candidates, choose, load_table, main, parse_voices
from model.interaction import InteractionModel
from model.tokenizer import Tokenizer
from tests.model.conftest import micro_config


def cand(start: float, pause: list[int], turn: list[int], lat: list[float]) -> Candidate:
    c = Candidate(GateConfig(start=start))
    c.tor["pause_handling"] = pause
    c.tor["smooth_turn_taking"] = turn
    c.latency["smooth_turn_taking"] = lat
    return c


def saved(
    start: float,
    voice: float | None = None,
    *,
    pause: float = 0.0,
    bc: float | None = 0.0,
    turn: float = 0.5,
    interrupt: float = 0.5,
    stop: float | None = 0.4,
    lat: float | None = 0.5,
) -> SavedCandidate:
    """A calibration.json row (aggregates only), as `--table` reads it back."""
    gate = GateConfig(start=start, voice=voice)
    row = {
        "start": start,
        "keep": start,
        "voice": voice,
        "pause_tor": pause,
        "turn_tor": turn,
        "turn_latency_p50": lat,
        "turn_latency_p90": lat,
        "interrupt_tor": interrupt,
        "interrupt_latency_p50": 0.0,
        "stop_latency_p50": stop,
        "backchannel_tor": bc,
    }
    return SavedCandidate(gate, row, {"pause_handling": 4, "backchannel": 0 if bc is None else 4})


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


def test_candidates_cross_start_keep_with_voices() -> None:
    assert parse_voices("none, 0.3,NONE,0.7,") == [None, 0.3, None, 0.7]
    gates = candidates([0.1, 0.2], [1.0, 0.5], parse_voices("none,0.5,none"))
    assert gates == [
        GateConfig(start=0.1, keep=0.1),
        GateConfig(start=0.1, keep=0.1, voice=0.5),
        GateConfig(start=0.1, keep=0.05),
        GateConfig(start=0.1, keep=0.05, voice=0.5),
        GateConfig(start=0.2, keep=0.2),
        GateConfig(start=0.2, keep=0.2, voice=0.5),
        GateConfig(start=0.2, keep=0.1),
        GateConfig(start=0.2, keep=0.1, voice=0.5),
    ]


def test_table_round_trips_voice_and_old_tables_load_as_none(tmp_path: Path) -> None:
    rows = [Candidate(GateConfig()), *(Candidate(g) for g in candidates([0.2], [1.0], [None, 0.3]))]
    for c in rows:
        c.tor["pause_handling"] = [0, 1]
        c.tor["backchannel"] = [1, 0, 0, 0]
        c.tor["user_interruption"] = [1]
        c.stop = [0.2, 0.6, 1.0]
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"clips": rows[0].counts(), "rows": [c.row() for c in rows]}))
    back = load_table(path)
    assert [b.gate for b in back] == [c.gate for c in rows]
    assert [b.gate.voice for b in back] == [None, None, 0.3] and back[0].gate.greedy
    assert [b.label for b in back] == ["argmax", "0.2 / 0.2 / none", "0.2 / 0.2 / 0.3"]
    assert back[2].row()["backchannel_tor"] == 0.25 and back[2].row()["stop_latency_p50"] == 0.6
    assert back[2].counts()["backchannel"] == 4
    # a table written before the voice sweep: no voice, stop latency, backchannel rate or clips
    old_row = {k: v for k, v in rows[1].row().items() if k not in ("voice", "stop_latency_p50", "backchannel_tor")}
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"clips": {"pause_handling": 2}, "rows": [old_row]}))
    (b,) = load_table(old)
    assert b.gate == GateConfig(start=0.2, keep=0.2) and b.gate.voice is None
    assert b.row()["backchannel_tor"] is None and b.counts()["backchannel"] == 0
    chosen, met = choose([b], pause_max=0.5)  # no backchannel rate: that bound is skipped
    assert chosen is b and met


def test_choose_applies_the_backchannel_bound_then_the_tie_breaks() -> None:
    chatty = saved(0.1, turn=1.0, interrupt=1.0, bc=0.5)  # best turn-taker, but talks over backchannel slots
    quiet = saved(0.2, turn=0.75, bc=0.1)
    chosen, met = choose([chatty, quiet], pause_max=0.1, backchannel_max=0.15)
    assert chosen is quiet and met
    chosen, met = choose([chatty, quiet], pause_max=0.1, backchannel_max=0.5)  # a looser bound admits it
    assert chosen is chatty and met
    # ties on the TORs: the lowest stop latency, then the lowest turn latency, then start, then voice
    slow_stop = saved(0.3, 0.5, stop=0.9, lat=0.1)
    fast_stop = saved(0.3, 0.3, stop=0.2, lat=0.9)
    assert choose([slow_stop, fast_stop])[0] is fast_stop
    slow_turn = saved(0.3, 0.7, lat=0.9)
    fast_turn = saved(0.2, 0.3, lat=0.3)
    assert choose([slow_turn, fast_turn])[0] is fast_turn
    low, high, unvoiced = saved(0.3, 0.3), saved(0.3, 0.7), saved(0.3, None)
    assert choose([low, unvoiced, high])[0] is high
    assert choose([saved(0.2, 0.7), low])[0] is low  # start before voice
    # nothing meets the bounds: the lowest pause + backchannel TOR wins (over the best turn-taker)
    a = saved(0.1, pause=0.1, bc=0.6, turn=1.0)  # the lowest pause TOR alone, and the best turn-taker
    b = saved(0.2, pause=0.4, bc=0.1, turn=0.5)
    c = saved(0.4, pause=0.2, bc=0.3, turn=0.6)  # ties b on the sum, turns better
    chosen, met = choose([Candidate(GateConfig()), a, b, c], pause_max=0.1)
    assert chosen is c and not met
    # no backchannel clips (rate None): only the pause bound applies
    d = saved(0.1, bc=None, turn=1.0)
    chosen, met = choose([d, quiet], pause_max=0.1, backchannel_max=0.0)
    assert chosen is d and met


def test_calibrate_cli_writes_the_table_and_the_gate(tmp_path: Path, tokenizer: Tokenizer) -> None:
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ck", InteractionModel(micro_config()).eval(), tokenizer)
    root = tmp_path / "val"
    synth.pause_clip(root, "p", speech=((0.1, 0.3), (0.6, 0.8)), duration=1.0)
    synth.turn_taking_clip(root, "t", speech=((0.1, 0.4),), duration=1.0)
    synth.interruption_clip(root, "i", context=(0.1, 0.3), interrupt=(0.6, 0.8), duration=1.0)
    synth.backchannel_clip(root, "b", speech=((0.1, 0.4), (0.6, 0.9)), times=(0.5,), duration=1.0)
    out = tmp_path / "cal"
    argv = ["--checkpoint", str(ck), "--root", str(root), "--starts", "0.5,0.999", "--keep-ratios", "1"]
    assert main([*argv, "--voices", "none,0.5", "--out", str(out), "--write"]) == 0
    table = json.loads((out / "calibration.json").read_text())
    # argmax first, then the sweep: (start, keep) x voice
    assert [(r["start"], r["voice"]) for r in table["rows"]] == [
        (None, None), (0.5, None), (0.5, 0.5), (0.999, None), (0.999, 0.5)
    ]  # fmt: skip
    assert table["clips"] == {"pause_handling": 1, "smooth_turn_taking": 1, "user_interruption": 1, "backchannel": 1}
    assert all(r["backchannel_tor"] in (0.0, 1.0) for r in table["rows"])
    assert all("stop_latency_p50" in r for r in table["rows"])
    md = (out / "calibration.md").read_text()
    assert "| argmax |" in md and "| 0.5 / 0.5 / none |" in md and "| 0.999 / 0.999 / 0.5 |" in md
    gate = load_checkpoint(ck).config.gate  # written, and the manifest still verifies
    chosen = table["chosen"]
    assert (gate.start, gate.voice) == (chosen["start"], chosen["voice"]) and gate.start in (0.5, 0.999)
    assert json.loads((ck / "config.json").read_text())["gate"]["voice"] == chosen["voice"]
    # re-choosing from the saved table runs no model: a bound everyone meets picks the best turn-taker
    assert main(["--checkpoint", str(ck), "--root", str(root), "--table", str(out / "calibration.json"),
                 "--pause-max", "1.0", "--out", str(tmp_path / "again")]) == 0  # fmt: skip
    again = json.loads((tmp_path / "again" / "calibration.json").read_text())
    assert again["rows"] == table["rows"] and again["clips"] == table["clips"]
