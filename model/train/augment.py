"""Voice perturbation of the user's log-mel in training: new voices from the ones we have.

The held-out split's users speak with synthesizer voices training never hears, and the tiny
model overfits the training voices: the caption loss is 0.87 on training clips and 3.87 on
held-out ones, and a model that cannot read a held-out user's words cannot tell a pause from a
turn end (MODEL_CARD.md). Each crop's user channel is therefore drawn a new voice on the fly,
the way speech recognizers are trained for speakers they have not heard:

- vocal tract length (VTLP): the spectrum stretched along frequency by a factor alpha, S'(f) =
  S(f / alpha), which moves formants as a longer or shorter vocal tract does;
- level: a gain over the whole band (microphones and speakers differ by tens of dB);
- spectral tilt: a slope across the band (brighter or duller voices and microphones);
- a noise floor, sometimes: silence is rarely digital zero on a real microphone;
- one frequency band masked (SpecAugment's frequency mask), so no single band carries a word.

Time is left alone: the user's timing against the assistant's is what turn-taking learns from,
and a time mask would erase the silences the model must hear. The perturbation works on the
log10 mel before dMel quantization (model/dmel.py), so it costs one interpolation per crop.

Tried on the shipped checkpoint (1,000 steps, MODEL_CARD.md "Tried after this checkpoint"): the
held-out validation losses were the best of its fine-tunes, but served, the held-out captions
got no better (WER 0.95 -> 1.03) and the model took over in every pause: more varied training
voices are not voices more like the held-out ones. So `microturn train` leaves it off unless
asked (`--augment-voices`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from model.config import ModelConfig
from model.dmel import hz_to_mel, mel_to_hz


@dataclass(frozen=True)
class VoiceAugment:
    """The ranges a crop's perturbation is drawn from (uniform in each)."""

    warp: tuple[float, float] = (0.85, 1.18)  # VTLP alpha: formant frequencies scaled by it
    gain_db: tuple[float, float] = (-10.0, 6.0)
    tilt_db: tuple[float, float] = (-6.0, 6.0)  # added at the top band, minus it at the bottom
    noise_p: float = 0.3  # share of crops given a noise floor
    noise_log10: tuple[float, float] = (-8.7, -7.5)  # its level (dMel's floor is log_mel_min = -9)
    mask_p: float = 0.5  # share of crops with one band masked
    mask_bands: int = 8  # at most this many mel bands in the mask

    def draw(self, rnd: random.Random, cfg: ModelConfig) -> Perturbation:
        masked = rnd.random() < self.mask_p
        width = rnd.randint(1, self.mask_bands) if masked else 0
        return Perturbation(
            warp=rnd.uniform(*self.warp),
            gain_db=rnd.uniform(*self.gain_db),
            tilt_db=rnd.uniform(*self.tilt_db),
            noise_log10=rnd.uniform(*self.noise_log10) if rnd.random() < self.noise_p else None,
            mask=(rnd.randrange(cfg.n_mels - width + 1), width) if masked else None,
        )


@dataclass(frozen=True)
class Perturbation:
    """One drawn voice change, applied to every frame of a crop."""

    warp: float = 1.0
    gain_db: float = 0.0
    tilt_db: float = 0.0
    noise_log10: float | None = None
    mask: tuple[int, int] | None = None  # (first band, width)

    def apply(self, log_mel: Tensor, cfg: ModelConfig) -> Tensor:
        """(frames, n_mels) log10 mel -> the same shape, perturbed and clamped to dMel's range."""
        x = _warp(log_mel, self.warp, cfg) if self.warp != 1.0 else log_mel
        ramp = torch.linspace(-1.0, 1.0, cfg.n_mels, dtype=x.dtype)  # (M,)
        x = x + (self.gain_db + self.tilt_db * ramp) / 10.0  # dB -> log10 power
        if self.noise_log10 is not None:
            x = torch.log10(torch.pow(10.0, x) + 10.0**self.noise_log10)
        x = x.clamp(cfg.log_mel_min, cfg.log_mel_max)
        if self.mask is not None:
            first, width = self.mask
            x = x.clone()
            x[:, first : first + width] = cfg.log_mel_min
        return x


def _warp(log_mel: Tensor, alpha: float, cfg: ModelConfig) -> Tensor:
    """S'(f) = S(f / alpha) at each band's centre, read by linear interpolation between bands."""
    lo, hi = hz_to_mel(torch.tensor([cfg.f_min, cfg.f_max], dtype=torch.float64))
    centres = mel_to_hz(torch.linspace(float(lo), float(hi), cfg.n_mels + 2, dtype=torch.float64))[1:-1]  # (M,)
    source = (centres / alpha).clamp(float(centres[0]), float(centres[-1]))
    # fractional band index of each source frequency (the centres are increasing)
    right = torch.searchsorted(centres, source).clamp(1, cfg.n_mels - 1)  # (M,)
    left = right - 1
    frac = ((source - centres[left]) / (centres[right] - centres[left])).to(log_mel.dtype)
    return log_mel[:, left] * (1 - frac) + log_mel[:, right] * frac
