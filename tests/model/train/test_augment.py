"""Voice perturbation of the user's log-mel: each change does what it says, and only to the user."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import MODEL_OUT, USER_AUDIO, get_preset
from model.dmel import hz_to_mel, mel_to_hz
from model.tokenizer import Tokenizer
from model.train.augment import Perturbation, VoiceAugment
from model.train.dataset import build_example, load_clip
from model.train.trainer import Trainer
from tests.model.conftest import micro_config
from tests.model.train.conftest import tcfg, write_clip

CFG = get_preset("tiny")
M = CFG.n_mels


def centres() -> torch.Tensor:
    lo, hi = hz_to_mel(torch.tensor([CFG.f_min, CFG.f_max], dtype=torch.float64))
    return mel_to_hz(torch.linspace(float(lo), float(hi), M + 2, dtype=torch.float64))[1:-1]


def peak(band: int, level: float = -2.0) -> torch.Tensor:
    x = torch.full((3, M), CFG.log_mel_min)
    x[:, band] = level
    return x


def test_no_change_only_clamps() -> None:
    x = torch.linspace(-12.0, 1.0, 2 * M).reshape(2, M)
    assert torch.equal(Perturbation().apply(x, CFG), x.clamp(CFG.log_mel_min, CFG.log_mel_max))


@pytest.mark.parametrize("alpha", [0.87, 1.15])
def test_warp_moves_a_formant_to_alpha_times_its_frequency(alpha: float) -> None:
    band = 30
    out = Perturbation(warp=alpha).apply(peak(band), CFG)
    moved = int(out[0].argmax())
    c = centres()
    assert moved == int((c - alpha * c[band]).abs().argmin())  # the band nearest alpha * f
    assert (moved > band) == (alpha > 1) and moved != band


def test_gain_and_tilt_are_decibels_across_the_band() -> None:
    x = torch.full((2, M), -5.0)
    assert torch.allclose(Perturbation(gain_db=10.0).apply(x, CFG), x + 1.0)  # 10 dB = one log10 of power
    tilted = Perturbation(tilt_db=6.0).apply(x, CFG)
    assert tilted[0, 0].item() == pytest.approx(-5.6) and tilted[0, -1].item() == pytest.approx(-4.4)
    assert torch.all(tilted[:, 1:] > tilted[:, :-1])


def test_noise_lifts_silence_to_its_floor_and_barely_touches_speech() -> None:
    out = Perturbation(noise_log10=-8.0).apply(peak(10, level=-3.0), CFG)
    assert out[0, 0].item() == pytest.approx(np.log10(1e-9 + 1e-8), abs=1e-4)  # silence's 1e-9 plus the floor
    assert out[0, 10].item() == pytest.approx(-3.0, abs=1e-4)


def test_mask_silences_one_band() -> None:
    x = torch.full((2, M), -4.0)
    out = Perturbation(mask=(20, 5)).apply(x, CFG)
    assert torch.all(out[:, 20:25] == CFG.log_mel_min)
    assert torch.equal(torch.cat([out[:, :20], out[:, 25:]], 1), torch.cat([x[:, :20], x[:, 25:]], 1))


def test_draws_are_seeded_and_in_range() -> None:
    aug = VoiceAugment()
    a = [aug.draw(random.Random(3), CFG) for _ in range(2)]
    assert a[0] == a[1]
    draws = [aug.draw(random.Random(i), CFG) for i in range(200)]
    assert all(aug.warp[0] <= d.warp <= aug.warp[1] and aug.gain_db[0] <= d.gain_db <= aug.gain_db[1] for d in draws)
    assert all(d.mask is None or (1 <= d.mask[1] <= aug.mask_bands and d.mask[0] + d.mask[1] <= M) for d in draws)
    assert 0 < sum(d.noise_log10 is not None for d in draws) < 200 and 0 < sum(d.mask is not None for d in draws) < 200
    never = replace(aug, noise_p=0.0, mask_p=0.0)
    assert all(never.draw(random.Random(i), CFG).noise_log10 is None for i in range(50))
    assert all(never.draw(random.Random(i), CFG).mask is None for i in range(50))


def test_a_perturbed_example_differs_only_in_the_users_audio(tmp_path: Path) -> None:
    tok = Tokenizer.default(CFG.vocab_size)
    clip = load_clip(write_clip(tmp_path, "c", 0))
    plain = build_example(CFG, tok, clip, max_turns=20, start=1)
    changed = build_example(CFG, tok, clip, max_turns=20, start=1, perturb=Perturbation(warp=1.1, gain_db=-4.0))
    user = plain.positions.stream == USER_AUDIO  # (1, T)
    assert not torch.equal(plain.positions.audio[user], changed.positions.audio[user])
    assert torch.equal(plain.positions.audio[~user], changed.positions.audio[~user])
    assert torch.any(plain.positions.stream == MODEL_OUT)
    for name in ("text_target", "caption_target", "mel_target", "text_weight", "turn_target"):
        assert torch.equal(getattr(plain, name), getattr(changed, name)), name


def test_the_trainer_augments_training_crops_and_never_validation(
    data_dir: Path, val_dir: Path, tmp_path: Path, tokenizer: Tokenizer
) -> None:
    cfg = micro_config(window=1024)
    plain, aug = (
        Trainer(
            cfg,
            tcfg(crop_turns=8, val_batches=2, augment=a),
            data_dir,
            tmp_path / n,
            tokenizer=tokenizer,
            val_dir=val_dir,
        )
        for a, n in ((None, "a"), (VoiceAugment(), "b"))
    )
    p, a = plain.batch_for(3), aug.batch_for(3)
    assert torch.equal(p.positions.stream, a.positions.stream) and torch.equal(p.text_target, a.text_target)
    user = p.positions.stream == USER_AUDIO
    assert not torch.equal(p.positions.audio[user], a.positions.audio[user])
    for (pv, _), (av, _) in zip(plain.val_set(), aug.val_set(), strict=True):
        assert torch.equal(pv.positions.audio, av.positions.audio)
    assert np.isfinite(aug.train_step()["total"])
