from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from model.checkpoint import save_checkpoint
from model.config import get_preset
from model.eval import synth
from model.eval.cli import add_eval_parser, run_eval
from model.interaction import InteractionModel
from model.tokenizer import Tokenizer


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="microturn")
    add_eval_parser(parser.add_subparsers(dest="cmd", required=True))
    return parser.parse_args(argv)


def test_eval_end_to_end_with_checkpoint(tmp_path: Path, tokenizer: Tokenizer) -> None:
    cfg = dataclasses.replace(
        get_preset("tiny"), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, n_experts=4,
        expert_dim=64, shared_expert_dim=32, flow_dim=64, flow_depth=2, time_embed_dim=32, window=256,
    )  # fmt: skip
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ck", InteractionModel(cfg), tokenizer)
    root = tmp_path / "fdb"
    synth.turn_taking_clip(root, "a", speech=((0.1, 0.4),), duration=1.0)
    no_extras = ["--no-fdbench-scoring", "--no-smart-turn"]
    args = parse(["eval", "--root", str(root), "--checkpoint", str(ck), "--out", str(tmp_path / "rep"), *no_extras])
    assert args.func is run_eval and args.baseline is True
    assert run_eval(args) == 0
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [s["name"] for s in report["systems"]] == ["interaction model", "harness baseline"]
    assert (root / "smooth_turn_taking" / "a" / "output.wav").is_file()
    assert (root / "smooth_turn_taking" / "a" / "output_baseline.json").is_file()


def test_score_only_without_baseline(tmp_path: Path) -> None:
    d = synth.pause_clip(tmp_path, "a")
    synth.fake_output(d, [(1.6, 1.8, "mm")])
    argv = ["eval", "--root", str(tmp_path), "--score-only", "--no-baseline", "--no-fdbench-scoring"]
    assert run_eval(parse(argv)) == 0
    md = (tmp_path / "eval_report" / "report.md").read_text()
    assert "| interaction model | FD-bench v1 published |" in md


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda p: None, [], "no such directory"),
        (lambda p: p.mkdir(), [], "no clips found"),
        (lambda p: synth.pause_clip(p, "a"), ["--tasks", "nope"], "no clips for task(s) nope"),
        (lambda p: synth.pause_clip(p, "a"), ["--checkpoint", "/nonexistent/ck"], "no such checkpoint"),
    ],
)
def test_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], object], extra: list[str], message: str
) -> None:
    root = tmp_path / "root"
    make(root)
    assert run_eval(parse(["eval", "--root", str(root), *extra])) == 2
    assert message in capsys.readouterr().err
