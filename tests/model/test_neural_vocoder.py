"""The trained vocoder's streaming contract, batch invariance, input checks, and how a checkpoint ships it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from model import neural_vocoder
from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, write_vocoder
from model.config import ModelConfig
from model.data import flite
from model.dmel import log_mel_offline
from model.interaction import InteractionModel
from model.neural_vocoder import (
    NeuralVocoder,
    StreamingNeuralVocoder,
    get_preset,
    new_vocoder,
    push_batch,
    vocode,
    vocode_batch,
)
from model.session import SessionState
from model.tokenizer import Tokenizer
from model.vocoder import StreamingGriffinLim

CFG = ModelConfig()
F = CFG.frames_per_turn


@pytest.fixture(scope="module")
def speech_mel() -> torch.Tensor:
    """(F, n_mels) log-mel of ~2.4 s of flite slt speech (the assistant's voice), whole turns."""
    audio = flite.synthesize("Sure, the store opens at nine and closes at five today.", "slt").audio
    audio = np.pad(audio, (0, -len(audio) % CFG.turn_samples))
    return log_mel_offline(torch.from_numpy(audio.copy()), CFG)


@pytest.fixture(scope="module")
def net() -> NeuralVocoder:
    """The test preset with random weights, scaled so its output is loud enough to compare."""
    torch.manual_seed(0)
    n = NeuralVocoder(get_preset("test"))
    with torch.no_grad():
        n.w_out.mul_(30.0)
    return n.eval().requires_grad_(False)


@pytest.fixture(autouse=True)
def _auto_vocoder(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(neural_vocoder.ENV, raising=False)
    yield


def stream(v: StreamingNeuralVocoder, mel: torch.Tensor) -> torch.Tensor:
    outs = [v.push(turn) for turn in mel.split(F)]
    assert all(o.shape == (CFG.turn_samples,) for o in outs)
    return torch.cat(outs)


def test_streaming_equals_offline(net: NeuralVocoder, speech_mel: torch.Tensor) -> None:
    v = StreamingNeuralVocoder(CFG, net)
    assert v.delay_samples == CFG.hop_length  # one mel hop, like Griffin-Lim
    y = stream(v, speech_mel)
    ref = vocode(net, speech_mel)  # whole clip at once, aligned with the mel's samples
    d = v.delay_samples
    assert y.shape == ref.shape == (speech_mel.shape[0] * CFG.hop_length,)
    assert (y[:d] == 0).all() and ref.abs().max() > 1e-3
    # the stream is the offline signal one hop late; the offline's last hop lacks a next frame
    torch.testing.assert_close(y[d:], ref[:-d], rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    assert v.frames_seen == speech_mel.shape[0]


def test_batch_invariant_bitwise_and_reset(net: NeuralVocoder, speech_mel: torch.Tensor) -> None:
    turns = speech_mel.shape[0] // F
    mels = [speech_mel, speech_mel.flip(0), speech_mel.roll(17, 0), (speech_mel + 0.5).clamp(max=-1.0)]
    alone = []
    for m in mels:
        v = StreamingNeuralVocoder(CFG, net)
        alone.append(torch.cat([push_batch([v], m[None, k * F : (k + 1) * F])[0] for k in range(turns)]))
    # the same sessions in a batch of 4, and session 0 again in a batch of 2 at another index
    vs = [StreamingNeuralVocoder(CFG, net) for _ in mels]
    batched = torch.cat(
        [push_batch(vs, torch.stack([m[k * F : (k + 1) * F] for m in mels])) for k in range(turns)], dim=1
    )
    pair = [StreamingNeuralVocoder(CFG, net) for _ in range(2)]
    paired = torch.cat(
        [
            push_batch(pair, torch.stack([mels[2][k * F : (k + 1) * F], mels[0][k * F : (k + 1) * F]]))
            for k in range(turns)
        ],
        dim=1,
    )
    for b in range(len(mels)):
        assert torch.equal(batched[b], alone[b]), b
    assert torch.equal(paired[1], alone[0]) and torch.equal(paired[0], alone[2])
    # reset restores the fresh state: the same audio again
    v = vs[0]
    v.reset()
    assert v.frames_seen == 0
    assert torch.equal(torch.cat([v.push(t) for t in mels[0].split(F)]), alone[0])


def test_plain_batch_gemm_equals_each_session_alone_up_to_rounding(
    net: NeuralVocoder, speech_mel: torch.Tensor
) -> None:
    """Normal serving (`exact=False`): one GEMM over the batch, the same audio within rounding."""
    mels = [speech_mel, speech_mel.flip(0), speech_mel.roll(17, 0)]
    alone = [StreamingNeuralVocoder(CFG, net) for _ in mels]
    vs = [StreamingNeuralVocoder(CFG, net) for _ in mels]
    for k in range(speech_mel.shape[0] // F):
        chunk = torch.stack([m[k * F : (k + 1) * F] for m in mels])
        fast = push_batch(vs, chunk, exact=False)
        for b, v in enumerate(alone):
            ref = push_batch([v], chunk[b : b + 1])[0]
            torch.testing.assert_close(fast[b], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()) + 1e-7)


def test_bad_input_is_a_clear_value_error(net: NeuralVocoder) -> None:
    v = StreamingNeuralVocoder(CFG, net)
    good = torch.full((F, CFG.n_mels), -5.0)
    with pytest.raises(ValueError, match="expected shape"):
        v.push(good[:, :10])
    with pytest.raises(ValueError, match=f"expected {F} frames"):
        v.push(good[:3])
    bad = good.clone()
    bad[2, 5] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        v.push(bad)
    bad[2, 5] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        push_batch([v], bad[None])
    with pytest.raises(ValueError, match=r"expected \(1, frames, n_mels\)"):
        push_batch([v], good)
    assert v.frames_seen == 0  # nothing was consumed
    with pytest.raises(neural_vocoder.VocoderError, match="n_mels"):
        StreamingNeuralVocoder(ModelConfig(n_mels=64), net)


def test_vocode_batch_mixes_kinds(net: NeuralVocoder, speech_mel: torch.Tensor) -> None:
    turn = speech_mel[F : 2 * F]
    gl, nv = StreamingGriffinLim(CFG), StreamingNeuralVocoder(CFG, net)
    out = vocode_batch([gl, nv], torch.stack([turn, turn]))
    assert torch.equal(out[0], StreamingGriffinLim(CFG).push(turn))
    assert torch.equal(out[1], StreamingNeuralVocoder(CFG, net).push(turn))


# --- shipping in a checkpoint ----------------------------------------------------------------------


def _micro_cfg() -> ModelConfig:
    from tests.model.conftest import micro_config

    return micro_config()


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = InteractionModel(_micro_cfg()).eval()
    return save_checkpoint(tmp_path / "ckpt", model, Tokenizer.default(1024))


def _session(ck_cfg: ModelConfig) -> SessionState:
    return SessionState.new(ck_cfg, Tokenizer.default(1024), "s", 0, slot=0)


def test_checkpoint_without_vocoder_keeps_griffin_lim(ckpt_dir: Path) -> None:
    ck = load_checkpoint(ckpt_dir)
    assert ck.vocoder is None
    assert isinstance(_session(ck.config).vocoder, StreamingGriffinLim)


def test_checkpoint_with_vocoder_speaks_with_it(
    ckpt_dir: Path, net: NeuralVocoder, speech_mel: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_vocoder(ckpt_dir, net)
    manifest = json.loads((ckpt_dir / "manifest.json").read_text())
    assert {"vocoder.safetensors", "vocoder.json"} <= set(manifest["sha256"])
    ck = load_checkpoint(ckpt_dir)
    assert ck.vocoder is not None and ck.vocoder.vc == net.vc
    state = _session(ck.config)
    assert isinstance(state.vocoder, StreamingNeuralVocoder) and state.vocoder.net is ck.vocoder
    # bf16 storage: the shipped network sounds like the trained one
    turn = speech_mel[F : 2 * F]
    a, b = StreamingNeuralVocoder(CFG, net).push(turn), state.vocoder.push(turn)
    assert float((a - b).norm() / a.norm()) < 0.05
    # the env var forces the weight-free path
    monkeypatch.setenv(neural_vocoder.ENV, "griffin-lim")
    assert isinstance(_session(ck.config).vocoder, StreamingGriffinLim)
    monkeypatch.delenv(neural_vocoder.ENV)
    # an equal config object that did not come from this checkpoint has none attached
    assert isinstance(new_vocoder(_micro_cfg()), StreamingGriffinLim)


def test_corrupt_vocoder_fails_the_manifest(ckpt_dir: Path, net: NeuralVocoder) -> None:
    write_vocoder(ckpt_dir, net)
    data = bytearray((ckpt_dir / "vocoder.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (ckpt_dir / "vocoder.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"vocoder\.safetensors: checksum mismatch"):
        load_checkpoint(ckpt_dir)


def test_unlisted_vocoder_is_refused(ckpt_dir: Path, net: NeuralVocoder) -> None:
    neural_vocoder.save(ckpt_dir, net)  # files copied in without updating the manifest
    with pytest.raises(CheckpointError, match=r"vocoder\.(safetensors|json): not listed in manifest\.json"):
        load_checkpoint(ckpt_dir)
