from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model.checkpoint import load_checkpoint
from model.tokenizer import Tokenizer
from model.train.dataset import LEAD_POSITIONS, DatasetError, build_example, load_clip
from model.train.trainer import Trainer
from tests.model.conftest import micro_config
from tests.model.train.conftest import tcfg


def test_example_alignment(data_dir: Path, tokenizer: Tokenizer) -> None:
    cfg = micro_config(window=1024)
    clip = load_clip(data_dir / "train" / "clip0.wav")
    ex = build_example(cfg, tokenizer, clip)
    P = cfg.positions_per_turn
    assert ex.n_turns == 6 * 5 - 1
    text = ex.text_target[0][ex.text_target[0] >= 0]
    assert text.shape[0] == ex.n_turns * P
    # <delegate> at 2.6 s: OUT_k covers [0.2(k+1), 0.2(k+2)), so output position (2.6 - 0.2) / 0.05 = 48
    assert int(text[48]) == tokenizer.delegate_id
    first_word = tokenizer.encode(" it")[0]
    # the turn's packed text leads its sound by LEAD_POSITIONS
    assert int(text[round((3.0 - 0.2) / 0.05) - LEAD_POSITIONS]) == first_word
    # captions come only at or after each user word's end (causal)
    cap = ex.caption_target[0][ex.caption_target[0] >= 0]
    first_cap = int(torch.nonzero(cap).min())
    assert first_cap * 0.05 + 0.05 >= 1.6
    # the background result sits in IN of turn 14 (2.9 s)
    streams = ex.positions.stream[0]
    assert int((streams == 4).sum()) == 1 + len(tokenizer.encode("12:00"))


def test_pcm16_clips_stay_int16_and_build_the_same_example(data_dir: Path, tokenizer: Tokenizer) -> None:
    cfg = micro_config(window=1024)
    wav = data_dir / "train" / "clip1.wav"  # written as PCM_16 (soundfile's default for .wav)
    clip = load_clip(wav)
    assert clip.user.dtype == clip.assistant.dtype == np.int16  # half the RAM of float32
    audio, _ = sf.read(str(wav), dtype="float32", always_2d=True)
    as_float = replace(clip, assistant=audio[:, 0].copy(), user=audio[:, 1].copy())
    a, b = build_example(cfg, tokenizer, clip, 12, 3), build_example(cfg, tokenizer, as_float, 12, 3)
    for name in ("text_target", "caption_target", "mel_target", "text_weight", "turn_target"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.positions.audio, b.positions.audio)
    assert torch.any(a.positions.audio > 0)  # the user's tone reached the bins


@pytest.mark.timeout(300)  # ~50 steps: minutes when the 2 shared cores are busy
def test_training_lowers_losses_and_resume_continues_the_curve(
    data_dir: Path, tmp_path: Path, tokenizer: Tokenizer
) -> None:
    torch.manual_seed(0)
    # balance weighted up so its trend is visible over 40 steps
    cfg = micro_config(window=1024, loss_weights={"text": 1.0, "caption": 1.0, "flow": 1.0, "balance": 0.5})
    run = Trainer(cfg, tcfg(), data_dir, tmp_path / "full", tokenizer=tokenizer)
    run.run(steps=28, progress=False)
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")  # the run directory as it stood at step 28
    full = run.run(progress=False)
    for key in ("text", "caption", "flow", "balance", "total"):
        first = np.mean([h[key] for h in full[:5]])
        last = np.mean([h[key] for h in full[-5:]])
        assert last < first, (key, first, last)

    resumed = Trainer(cfg, tcfg(), data_dir, tmp_path / "resumed", tokenizer=tokenizer)
    assert resumed.try_resume() and resumed.step == 28
    hist = resumed.run(progress=False)
    assert [h["step"] for h in hist] == list(range(1, 41))
    for a, b in zip(full[28:], hist[28:], strict=True):
        assert a["total"] == pytest.approx(b["total"], rel=1e-4, abs=1e-5)

    out = tmp_path / "resumed"
    assert (out / "loss.png").stat().st_size > 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 40
    ck = load_checkpoint(out / "checkpoint")
    assert torch.equal(ck.model.state_dict()["norm.weight"], resumed.model.state_dict()["norm.weight"])


def test_fine_tune_from_checkpoint(data_dir: Path, tmp_path: Path, tokenizer: Tokenizer) -> None:
    cfg = micro_config(window=1024)
    Trainer(cfg, tcfg(steps=3), data_dir, tmp_path / "base", tokenizer=tokenizer).run(progress=False)
    ft = Trainer(cfg, tcfg(steps=2), data_dir, tmp_path / "ft", init=tmp_path / "base" / "checkpoint")
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    base = load_checkpoint(tmp_path / "base" / "checkpoint").model.state_dict()
    assert all(torch.equal(before[k], base[k]) for k in base)
    ft.run(progress=False)
    assert not torch.equal(ft.model.state_dict()["text_head.weight"], before["text_head.weight"])


def test_bad_data_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no \.wav clips"):
        Trainer(micro_config(), tcfg(), tmp_path, tmp_path / "out")
    (tmp_path / "x.wav").write_bytes(b"not audio")
    with pytest.raises(DatasetError, match=r"x\.wav: unreadable"):
        load_clip(tmp_path / "x.wav")
