"""Causal log-mel / dMel front end: geometry, streaming == offline, quantization, validation."""

from __future__ import annotations

import math

import pytest
import torch

from model.config import ModelConfig
from model.dmel import (
    DMelStream,
    dequantize,
    log_mel,
    log_mel_offline,
    mel_filterbank,
    mel_to_unit,
    push_batch,
    quantize,
    unit_to_mel,
)

CFG = ModelConfig()


def speech_like(seconds: float, seed: int = 0) -> torch.Tensor:
    """Gliding harmonic tone under a syllable-rate envelope, noise bursts and gaps of silence."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * CFG.sample_rate)) / CFG.sample_rate  # (N,)
    f0 = 120 + 40 * torch.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / CFG.sample_rate
    voiced = sum(torch.sin(h * phase) / h for h in range(1, 20))
    envelope = torch.clamp(torch.sin(2 * math.pi * 4 * t), min=0) ** 2
    noise = torch.randn(t.shape, generator=g) * (torch.sin(2 * math.pi * 1.3 * t) > 0.8)
    return (0.3 * envelope * voiced + 0.05 * noise).float()


def stream(audio: torch.Tensor) -> torch.Tensor:
    s = DMelStream(CFG)
    return torch.cat([s.push(chunk) for chunk in audio.split(CFG.turn_samples)])


def test_filterbank_shape_nonnegative_coverage() -> None:
    fb = mel_filterbank(CFG)
    assert fb.shape == (CFG.n_fft // 2 + 1, CFG.n_mels)
    assert (fb >= 0).all()
    assert torch.allclose(fb.sum(0), torch.ones(CFG.n_mels), atol=1e-5)  # every band non-empty
    inside = fb[1:-1]  # bins strictly between f_min=0 and f_max=Nyquist
    assert (inside.sum(1) > 0).all()
    centers = fb.argmax(0)
    assert (centers.diff() >= 0).all() and centers[-1] > centers[0]


@pytest.mark.parametrize("kind", ["random", "speech_like"])
def test_streaming_equals_offline(kind: str) -> None:
    n_turns = 40
    if kind == "random":
        audio = 0.1 * torch.randn(n_turns * CFG.turn_samples, generator=torch.Generator().manual_seed(1))
    else:
        audio = speech_like(n_turns * CFG.turn_samples / CFG.sample_rate)
    offline = log_mel_offline(audio, CFG)
    online = stream(audio)
    assert online.shape == offline.shape == (n_turns * CFG.frames_per_turn, CFG.n_mels)
    torch.testing.assert_close(online, offline, atol=1e-6, rtol=0)


def test_turn_uses_previous_tail() -> None:
    audio = speech_like(0.4)
    a, b = audio.split(CFG.turn_samples)
    torch.testing.assert_close(log_mel(b, CFG, tail=a[-CFG.hop_length :]), log_mel_offline(audio, CFG)[8:])
    assert not torch.equal(log_mel(b, CFG), log_mel_offline(audio, CFG)[8:])  # zero tail differs


def test_offline_pads_partial_hop() -> None:
    audio = speech_like(0.5)[:7_000]
    out = log_mel_offline(audio, CFG)
    assert out.shape == (math.ceil(7_000 / CFG.hop_length), CFG.n_mels)
    padded = torch.nn.functional.pad(audio, (0, out.shape[0] * CFG.hop_length - 7_000))
    torch.testing.assert_close(out, log_mel_offline(padded, CFG))


def test_causal() -> None:
    audio = speech_like(0.6)
    cut = 5 * CFG.hop_length + 123  # first changed sample
    changed = audio.clone()
    changed[cut:] = torch.randn(changed.shape[0] - cut, generator=torch.Generator().manual_seed(2))
    a, b = log_mel_offline(audio, CFG), log_mel_offline(changed, CFG)
    last_clean = cut // CFG.hop_length - 1  # frame f ends at (f+1)*hop <= cut
    assert torch.equal(a[: last_clean + 1], b[: last_clean + 1])
    assert not torch.equal(a[last_clean + 1], b[last_clean + 1])


def test_levels_sit_in_range() -> None:
    silence = log_mel_offline(torch.zeros(CFG.turn_samples), CFG)
    assert (silence == CFG.log_mel_min).all()
    assert (quantize(silence) == 0).all()
    t = torch.arange(CFG.sample_rate) / CFG.sample_rate
    loud = log_mel_offline(0.5 * torch.sin(2 * math.pi * 1000 * t), CFG)  # -6 dBFS tone
    assert loud.max() < CFG.log_mel_max  # headroom: loud speech does not clip


def test_quantize_roundtrip_and_clamp() -> None:
    width = (CFG.log_mel_max - CFG.log_mel_min) / CFG.dmel_bins
    x = torch.linspace(CFG.log_mel_min, CFG.log_mel_max, 10_001).reshape(-1, 1).expand(-1, CFG.n_mels)
    bins = quantize(x)
    assert bins.dtype == torch.long and bins.shape == x.shape
    assert bins.min() == 0 and bins.max() == CFG.dmel_bins - 1
    assert (dequantize(bins) - x).abs().max() <= width / 2 + 1e-5
    outside = torch.tensor([CFG.log_mel_min - 3.0, CFG.log_mel_max + 3.0])
    assert quantize(outside).tolist() == [0, CFG.dmel_bins - 1]
    centers = dequantize(torch.arange(CFG.dmel_bins))
    assert torch.equal(quantize(centers), torch.arange(CFG.dmel_bins))


def test_unit_map() -> None:
    ends = torch.tensor([CFG.log_mel_min, CFG.log_mel_max])
    torch.testing.assert_close(mel_to_unit(ends), torch.tensor([-1.0, 1.0]))
    x = torch.linspace(-12.0, 2.0, 101)
    torch.testing.assert_close(unit_to_mel(mel_to_unit(x)), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(CFG.turn_samples - 1), "samples"),
        (torch.full((CFG.turn_samples,), float("nan")), "finite"),
        (torch.zeros(2, CFG.turn_samples), "1-D"),
    ],
)
def test_push_rejects_bad_audio(bad: torch.Tensor, message: str) -> None:
    s = DMelStream(CFG)
    with pytest.raises(ValueError, match=rf"^audio: .*{message}"):
        s.push(bad)


def test_reset_forgets_tail() -> None:
    audio = speech_like(0.4)
    s = DMelStream(CFG)
    first = s.push(audio[CFG.turn_samples :])
    s.push(audio[: CFG.turn_samples])
    s.reset()
    assert torch.equal(s.push(audio[CFG.turn_samples :]), first)


def test_push_batch_equals_push_per_session_and_carries_each_tail() -> None:
    """Three sessions, two turns each: the batch's frames are each session's own (the second
    turn's first frame reads the first turn's last hop of that session, not a neighbour's)."""
    audio = [speech_like(0.4, seed=i) for i in range(3)]
    alone, batched = [DMelStream(CFG) for _ in audio], [DMelStream(CFG) for _ in audio]
    n = CFG.turn_samples
    for turn in range(2):
        chunks = torch.stack([a[turn * n : (turn + 1) * n] for a in audio])  # (3, n)
        out = push_batch(batched, chunks)
        assert out.shape == (3, CFG.frames_per_turn, CFG.n_mels)
        for b, s in enumerate(alone):
            torch.testing.assert_close(out[b], s.push(chunks[b]), atol=1e-5, rtol=0)
    for s, t in zip(alone, batched, strict=True):
        assert torch.equal(s.tail, t.tail)


def test_push_batch_rejects_a_batch_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"^audio: expected shape \(2, "):
        push_batch([DMelStream(CFG), DMelStream(CFG)], torch.zeros(3, CFG.turn_samples))
