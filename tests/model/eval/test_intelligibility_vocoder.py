"""Intelligibility with a trained vocoder: the model's one mel heard through both vocoders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model import neural_vocoder
from model.checkpoint import load_checkpoint, save_checkpoint, write_vocoder
from model.config import ModelConfig
from model.data import flite
from model.eval.intelligibility import ceilings, run_dialogues
from model.interaction import InteractionModel
from model.neural_vocoder import NeuralVocoder, get_preset
from model.tokenizer import Tokenizer
from tests.model.conftest import micro_config

SR = 16000
SENTENCE = "The store opens at nine in the morning."


def dialogue(root: Path, name: str) -> Path:
    """Assistant (flite slt) on channel 0 with its alignments, a user tone on channel 1; 2.4 s."""
    utt = flite.synthesize(SENTENCE, "slt")
    n = max(int(2.4 * SR), len(utt.audio) + SR // 5)
    asst = np.zeros(n, np.float32)
    asst[SR // 10 : SR // 10 + len(utt.audio)] = utt.audio
    user = (0.2 * np.sin(np.arange(n) / 9)).astype(np.float32)
    sf.write(root / f"{name}.wav", np.stack([asst, user], 1), SR)
    words = [[w.text, [0.1 + w.start, 0.1 + w.end], "SPEAKER_MAIN"] for w in utt.words]
    (root / f"{name}.json").write_text(json.dumps({"alignments": words}))
    return root / f"{name}.wav"


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ck", InteractionModel(micro_config()).eval(), Tokenizer.default(1024))
    torch.manual_seed(1)
    write_vocoder(ck, NeuralVocoder(get_preset("test")))
    return ck


def test_both_vocoders_hear_the_same_mel(shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(neural_vocoder.ENV, raising=False)
    wavs = [dialogue(tmp_path, "a"), dialogue(tmp_path, "b")]
    ck = load_checkpoint(shipped)
    alts: list[np.ndarray] = []
    neural = run_dialogues(ck.model, ck.tokenizer, wavs, griffin_lim_too=alts)
    assert len(alts) == 2
    # a run that speaks through Griffin-Lim only plays exactly the side channel's audio
    monkeypatch.setenv(neural_vocoder.ENV, "griffin-lim")
    none: list[np.ndarray] = []
    plain = run_dialogues(ck.model, ck.tokenizer, wavs, griffin_lim_too=none)
    assert none == []  # no trained vocoder in play: nothing beside it
    for (a_neural, text_n, _), (a_gl, text_gl, _), alt in zip(neural, plain, alts, strict=True):
        assert text_n == text_gl
        assert np.array_equal(alt, a_gl)
        assert not np.array_equal(a_neural, a_gl)


def test_ceilings_add_the_trained_vocoder_row(shipped: Path, tmp_path: Path) -> None:
    ck = load_checkpoint(shipped)
    wav = dialogue(tmp_path, "c")
    direct, vocoded, neural = ceilings([wav], ModelConfig(), ck.vocoder, log=False)
    assert neural is not None and neural.words == direct.words == vocoded.words == 8
    assert ceilings([wav], ModelConfig(), None, log=False)[2] is None
