"""Event-centred and whole-clip crops, validation loss and the best checkpoint."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import infra.logging
import model.cli
from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from model.tokenizer import Tokenizer
from model.train.augment import VoiceAugment
from model.train.dataset import Clip, Example
from model.train.trainer import Best, TrainConfig, Trainer, choose_crop, event_times
from signaling.cli import main
from tests.model.conftest import micro_config
from tests.model.train.conftest import SR, tcfg, write_clip


def silent_clip(seconds: float, events: list[dict[str, object]], scenario: str = "qa") -> Clip:
    n = int(seconds * SR)
    return Clip("c", np.zeros(n, np.float32), np.zeros(n, np.float32), [], events, scenario)


def batches_equal(a: Example, b: Example) -> bool:
    tensors = [(getattr(a.positions, k), getattr(b.positions, k)) for k in a.positions.__dict__]
    tensors += [(a.text_target, b.text_target), (a.caption_target, b.caption_target), (a.mel_target, b.mel_target)]
    return a.n_turns == b.n_turns and all(x.shape == y.shape and torch.equal(x, y) for x, y in tensors)


# crops ---------------------------------------------------------------------------------------
def test_event_times_per_type() -> None:
    clip = silent_clip(
        20,
        [
            {"type": "user_end", "time": 3.0, "gap": 0.4},
            {"type": "interrupt", "time": 5.0, "cut": 5.3},
            {"type": "interrupt", "time": 6.0},
            {"type": "pause", "time": 7.0, "end": 7.8},
            {"type": "backchannel", "time": 9.0},
            {"type": "timespeak", "time": 10.0, "expected_onsets": [11.0, 12.0]},
            {"type": "stop", "time": 13.0},
            {"type": "delegate", "time": 14.0},
            {"type": "monologue_pause", "time": 15.0, "end": 15.5},
            {"type": "monologue_pause", "time": 16.0},
            {"type": "background_result", "time": 17.0, "text": "x"},  # not a turn-taking moment
            {"type": "typed_text", "time": 18.0, "text": "x"},
        ],
    )
    assert event_times(clip) == pytest.approx([3.4, 5.3, 6.0, 7.8, 9.0, 11.0, 12.0, 13.0, 14.0, 15.5, 16.0])


@pytest.mark.parametrize("at", [0.3, 3.4, 11.5])  # near the start, middle, near the end (clamped)
def test_event_centred_crops_contain_the_event(at: float) -> None:
    cfg = micro_config()
    clip = silent_clip(12, [{"type": "user_end", "time": at - 0.2, "gap": 0.2}])
    n_turns = len(clip.user) // cfg.turn_samples - 1
    turn = at / 0.2
    t = tcfg(crop_turns=10, event_crop_p=1.0)
    offsets = []
    for step in range(300):
        start, max_turns = choose_crop(clip, cfg, t, random.Random(step))
        assert max_turns == 10 and 0 <= start <= n_turns - 10
        assert start <= turn < start + 10, (step, start)
        offsets.append(turn - start)
    if at == 3.4:  # unclamped: the event sits between 25 % and 75 % of the crop, at varied places
        assert min(offsets) >= 2.5 - 1 and max(offsets) <= 7.5 + 1
        assert max(offsets) - min(offsets) >= 3

    # uniform crops (the old behaviour) miss it most of the time
    uniform = tcfg(crop_turns=10, event_crop_p=0.0)
    starts = [choose_crop(clip, cfg, uniform, random.Random(s))[0] for s in range(300)]
    assert sum(not s <= turn < s + 10 for s in starts) > 100


def test_event_crop_share_follows_p() -> None:
    cfg = micro_config()
    clip = silent_clip(60, [{"type": "backchannel", "time": 30.0}])  # 299 turns: uniform rarely hits it
    t = tcfg(crop_turns=10, event_crop_p=0.5)
    hits = 0
    for s in range(400):
        start, _ = choose_crop(clip, cfg, t, random.Random(s))
        hits += start <= 150 < start + 10
    assert 150 < hits < 260  # ~0.5 + 0.5 * 10/290 of 400


def test_timed_speech_clips_come_whole(tmp_path: Path, tokenizer: Tokenizer) -> None:
    root = tmp_path / "timed"
    root.mkdir()
    ev: list[dict[str, object]] = [{"type": "timespeak", "time": 1.0, "expected_onsets": [4.0, 8.0]}]
    write_clip(root, "t0", 0, seconds=10, events=ev, scenario="timed_speech")
    cfg = micro_config(window=4096)
    tr = Trainer(cfg, tcfg(crop_turns=10, batch_size=2), root, tmp_path / "out", tokenizer=tokenizer)
    for step in range(4):
        assert tr.batch_for(step).n_turns == 2 * 49  # 10 s = 50 micro-turns, the last one has no next
    capped = Trainer(cfg, tcfg(crop_turns=10, batch_size=2, whole_max_turns=30), root, tmp_path / "o2")
    assert capped.batch_for(0).n_turns == 2 * 30
    assert choose_crop(tr.clips[0], cfg, tr.tcfg, random.Random(0)) == (0, None)


def test_same_step_same_batch(data_dir: Path, tmp_path: Path, tokenizer: Tokenizer) -> None:
    cfg = micro_config(window=1024)
    a = Trainer(cfg, tcfg(crop_turns=8), data_dir, tmp_path / "a", tokenizer=tokenizer)
    b = Trainer(cfg, tcfg(crop_turns=8), data_dir, tmp_path / "b", tokenizer=tokenizer)
    for step in (0, 7, 123):
        assert batches_equal(a.batch_for(step), b.batch_for(step))
    assert not all(batches_equal(a.batch_for(s), a.batch_for(s + 1)) for s in range(5))


# validation ----------------------------------------------------------------------------------
def test_validation_is_fixed_and_leaves_train_mode(
    data_dir: Path, val_dir: Path, tmp_path: Path, tokenizer: Tokenizer
) -> None:
    cfg = micro_config(window=1024)
    t = tcfg(crop_turns=8, val_batches=3)
    tr = Trainer(cfg, t, data_dir, tmp_path / "a", tokenizer=tokenizer, val_dir=val_dir)
    v1 = tr.validate()
    assert tr.model.training
    assert all(p.grad is None for p in tr.model.parameters())
    assert {"val_total", "val_text", "val_caption", "val_flow", "val_balance"} <= set(v1)
    assert tr.validate() == v1  # same crops, same flow noise
    other = Trainer(cfg, t, data_dir, tmp_path / "b", tokenizer=tokenizer, val_dir=val_dir)
    assert other.validate() == v1  # keyed on the seed
    reseeded = Trainer(
        cfg, tcfg(crop_turns=8, val_batches=3, seed=1), data_dir, tmp_path / "c", tokenizer=tokenizer, val_dir=val_dir
    )
    reseeded.model.load_state_dict(tr.model.state_dict())
    assert reseeded.validate() != v1


def test_validation_logs_and_writes_the_best(
    data_dir: Path, val_dir: Path, tmp_path: Path, tokenizer: Tokenizer
) -> None:
    cfg = micro_config(window=1024)
    out = tmp_path / "out"
    t = tcfg(steps=8, crop_turns=8, val_every=3, val_batches=2, log_every=5)
    tr = Trainer(cfg, t, data_dir, out, tokenizer=tokenizer, val_dir=val_dir)
    tr.run(progress=False)
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 5, 6, 8]  # every val step is logged, plus log_every and the end
    vals = {r["step"]: r["val_total"] for r in lines if "val_total" in r}
    assert sorted(vals) == [3, 6, 8]
    assert all("elapsed_s" in r and "total" in r for r in lines)
    assert {"val_text", "val_caption", "val_flow", "val_balance"} <= set(lines[0])

    best = json.loads((out / "best.json").read_text())
    assert best["step"] == min(vals, key=lambda s: vals[s]) and best["val_total"] == vals[best["step"]]
    assert tr.best == Best(best["step"], best["val_total"])
    # best/ holds the weights that scored it
    tr.model.load_state_dict(load_checkpoint(out / "best").model.state_dict())
    assert tr.validate()["val_total"] == pytest.approx(best["val_total"], rel=1e-5)
    assert (out / "loss.png").stat().st_size > 0


def test_only_a_better_val_total_replaces_the_best(
    data_dir: Path, val_dir: Path, tmp_path: Path, tokenizer: Tokenizer
) -> None:
    cfg = micro_config(window=1024)
    out = tmp_path / "out"
    tr = Trainer(cfg, tcfg(), data_dir, out, tokenizer=tokenizer, val_dir=val_dir)
    weights = out / "best" / "model.safetensors"
    tr.step = 3
    assert tr._keep_if_best({"val_total": 2.0, "val_text": 1.0})
    saved = weights.read_bytes()
    tr.step = 6
    with torch.no_grad():
        tr.model.norm.weight.add_(1.0)
    assert not tr._keep_if_best({"val_total": 2.5})
    assert json.loads((out / "best.json").read_text()) == {"step": 3, "val_total": 2.0, "val_text": 1.0}
    assert weights.read_bytes() == saved
    tr.step = 9
    assert tr._keep_if_best({"val_total": 1.5})
    assert tr.best == Best(9, 1.5) and weights.read_bytes() != saved


def test_select_picks_the_best_by_another_validation_loss(
    data_dir: Path, val_dir: Path, tmp_path: Path, tokenizer: Tokenizer
) -> None:
    out = tmp_path / "out"
    tr = Trainer(micro_config(window=1024), tcfg(select="turn"), data_dir, out, tokenizer=tokenizer, val_dir=val_dir)
    tr.step = 3
    assert tr._keep_if_best({"val_total": 2.0, "val_turn": 0.5})
    tr.step = 6  # a lower total but a worse turn loss: not the best under select="turn"
    assert not tr._keep_if_best({"val_total": 1.0, "val_turn": 0.6})
    tr.step = 9
    assert tr._keep_if_best({"val_total": 3.0, "val_turn": 0.4})
    assert tr.best == Best(9, 0.4)
    with pytest.raises(ValueError, match="val_nope"):
        Trainer(micro_config(window=1024), tcfg(select="nope"), data_dir, out, tokenizer=tokenizer)._keep_if_best(
            {"val_total": 1.0}
        )


def test_best_survives_resume(data_dir: Path, val_dir: Path, tmp_path: Path, tokenizer: Tokenizer) -> None:
    cfg = micro_config(window=1024)
    out = tmp_path / "out"
    t = tcfg(steps=6, crop_turns=8, val_every=2, val_batches=2, log_every=2, ckpt_every=2)
    half = Trainer(cfg, t, data_dir, out, tokenizer=tokenizer, val_dir=val_dir)
    half.run(steps=4, progress=False)
    assert half.best is not None
    resumed = Trainer(cfg, t, data_dir, out, tokenizer=tokenizer, val_dir=val_dir)
    assert resumed.try_resume() and resumed.step == 4
    assert resumed.best == half.best
    hist = resumed.run(progress=False)
    vals = {h["step"]: h["val_total"] for h in hist if "val_total" in h}
    assert sorted(vals) == [2, 4, 6]
    best = json.loads((out / "best.json").read_text())
    assert best["step"] == min(vals, key=lambda s: vals[s])


def test_without_validation_nothing_changes(data_dir: Path, tmp_path: Path, tokenizer: Tokenizer) -> None:
    out = tmp_path / "out"
    hist = Trainer(
        micro_config(window=1024), tcfg(steps=4, crop_turns=8, val_every=2), data_dir, out, tokenizer=tokenizer
    ).run(progress=False)
    assert [h["step"] for h in hist] == [1, 2, 3, 4]
    assert not any(k.startswith("val_") for h in hist for k in h)
    assert not (out / "best").exists() and not (out / "best.json").exists()


# cli -----------------------------------------------------------------------------------------
@pytest.fixture
def micro_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model.cli, "get_preset", lambda name: micro_config(window=1024))
    # configure_logging binds structlog to the sys.stderr of the moment (capsys's, closed after
    # the test): later tests' log calls would then fail
    monkeypatch.setattr(infra.logging, "configure_logging", lambda *a, **kw: None)


@pytest.mark.usefixtures("micro_preset")
def test_cli_train_exports_the_best(
    data_dir: Path, val_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, exp = tmp_path / "run", tmp_path / "export"
    argv = ["train", "--data", str(data_dir), "--out", str(out), "--steps", "4", "--batch-size", "1",
            "--crop-turns", "8", "--val-data", str(val_dir), "--val-every", "2", "--export", str(exp)]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    best = json.loads((out / "best.json").read_text())
    assert f"exported best checkpoint (step {best['step']}," in err
    ck = load_checkpoint(exp)
    ref = load_checkpoint(out / "best").model.state_dict()
    assert torch.equal(ck.model.state_dict()["norm.weight"], ref["norm.weight"].to(torch.bfloat16).float())
    assert sum("val_total" in json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()) == 2


@pytest.mark.usefixtures("micro_preset")
def test_cli_train_without_validation_exports_the_final(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "1",
            "--crop-turns", "8", "--export", str(tmp_path / "export")]  # fmt: skip
    assert main(argv) == 0
    assert "exported final model (step 2)" in capsys.readouterr().err
    assert main([*argv[:-2], "--val-every", "-1"]) == 2
    assert main([*argv[:-2], "--hold-weight", "-1"]) == 2
    assert "--hold-weight must be >= 0" in capsys.readouterr().err


@pytest.mark.usefixtures("micro_preset")
def test_cli_train_augments_voices_on_request(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    real = Trainer.__init__

    def spy(self: Trainer, cfg: ModelConfig, tcfg: TrainConfig, *a: Any, **kw: Any) -> None:
        seen.append(tcfg.augment)
        real(self, cfg, tcfg, *a, **kw)

    monkeypatch.setattr(Trainer, "__init__", spy)
    argv = ["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "1",
            "--crop-turns", "8"]  # fmt: skip
    assert main([*argv, "--augment-voices"]) == 0 and main([*argv[:4], str(tmp_path / "run2"), *argv[5:]]) == 0
    assert seen == [VoiceAugment(), None]
