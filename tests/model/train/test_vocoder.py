"""Vocoder training on real synthesized speech: data alignment, augmentation, and a loss that drops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model import neural_vocoder
from model.config import ModelConfig
from model.data import flite
from model.dmel import log_mel, mel_filterbank
from model.neural_vocoder import NeuralVocoder, get_preset
from model.train.vocoder import Batches, augment, crop, load_clip, loss_of, speech_spans, train

CFG = ModelConfig()
SR = CFG.sample_rate
LINES = ("Sure, the store opens at nine.", "It is sunny and warm today.", "I can help you with that order.")


def write_dialogue(root: Path, name: str, text: str, lead: float = 0.6) -> Path:
    """A dialogue wav in the model/data layout: flite slt on channel 0 after `lead` s, a quiet
    user channel, and the assistant's word alignments."""
    utt = flite.synthesize(text, "slt")
    n0 = int(lead * SR)
    n = n0 + len(utt.audio) + int(0.5 * SR)
    asst = np.zeros(n, np.float32)
    asst[n0 : n0 + len(utt.audio)] = utt.audio
    user = np.zeros(n, np.float32)
    sf.write(root / f"{name}.wav", np.stack([asst, user], 1), SR)
    words = [[w.text, [lead + w.start, lead + w.end], "SPEAKER_MAIN"] for w in utt.words]
    words.append(["hi", [0.1, 0.3], "SPEAKER_USER"])
    (root / f"{name}.json").write_text(json.dumps({"alignments": words}))
    return root / f"{name}.wav"


@pytest.fixture(scope="module")
def dialogues(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("dialogues")
    return [write_dialogue(root, f"d{i}", text) for i, text in enumerate(LINES)]


def test_speech_spans_merge_close_words() -> None:
    al = [["a", [0.0, 0.5], "SPEAKER_MAIN"], ["b", [0.8, 1.0], "SPEAKER_MAIN"], ["x", [1.0, 2.0], "SPEAKER_USER"]]
    al += [["c", [3.0, 3.5], "SPEAKER_MAIN"]]
    assert speech_spans(al) == [(0.0, 1.0), (3.0, 3.5)]


def test_crops_cover_speech_and_align_audio_with_mel(dialogues: list[Path]) -> None:
    clip = load_clip(dialogues[0], CFG, frames=32, warmup=8)
    assert clip is not None and clip.starts
    hop = CFG.hop_length
    for a in (clip.starts[0], clip.starts[len(clip.starts) // 2], clip.starts[-1]):
        mel, audio = crop(clip, a, 32, hop)
        assert mel.shape == (32, CFG.n_mels) and audio.shape == (32 * hop,)
        # the audio starts one hop before mel frame a's window ends... i.e. at frame a's window start
        again = log_mel(audio[hop:], CFG, tail=audio[:hop])  # frames a .. a+30
        torch.testing.assert_close(again, mel[:-1], rtol=0, atol=1e-4)
        # every crop's loss region [a+warmup, a+frames) reaches speech (within the silence margin)
        assert (mel[8:] > CFG.log_mel_min + 1).any()


def test_augment_stays_in_range_and_changes_some(dialogues: list[Path]) -> None:
    clip = load_clip(dialogues[1], CFG, frames=32, warmup=8)
    assert clip is not None
    mel, _ = Batches([clip], CFG, 32, 16, seed=0).next()
    out = augment(mel, CFG, torch.Generator().manual_seed(0))
    assert out.shape == mel.shape
    assert out.min() >= CFG.log_mel_min and out.max() <= CFG.log_mel_max
    changed = [not torch.equal(out[b], mel[b]) for b in range(16)]
    assert any(changed) and not all(changed)  # some items stay clean


def test_short_training_lowers_the_loss(dialogues: list[Path], tmp_path: Path) -> None:
    vc = get_preset("test")
    clips = [c for c in (load_clip(w, CFG, frames=32, warmup=8) for w in dialogues) if c is not None]
    mel, audio = Batches(clips, CFG, 32, 8, seed=5).next()
    fb = mel_filterbank(CFG)
    torch.manual_seed(0)  # train() builds its network from the same seed
    before = float(loss_of(NeuralVocoder(vc), mel, audio, 8, fb)["total"].detach())
    figures = train(
        dialogues, tmp_path / "run", vc=vc, minutes=0, steps=60, batch=8, frames=32, warmup=8, lr=3e-3,
        eval_every=30, log_every=10, augment_input=False,
    )  # fmt: skip
    assert figures["step"] == 60
    trained = neural_vocoder.load(tmp_path / "run" / "last")
    with torch.no_grad():
        after = float(loss_of(trained, mel, audio, 8, fb)["total"])
    assert after < 0.8 * before, (before, after)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "step 60" in log and "s/step" in log and "ETA" in log
    assert (tmp_path / "run" / "best" / neural_vocoder.WEIGHTS).is_file()
    # resumable: a second call continues from last.pt instead of starting over
    again = train(
        dialogues, tmp_path / "run", vc=vc, minutes=0, steps=70, batch=8, frames=32, warmup=8,
        eval_every=30, log_every=10, resume=True,
    )  # fmt: skip
    assert again["step"] == 70 and "resumed at step 60" in (tmp_path / "run" / "train.log").read_text()
