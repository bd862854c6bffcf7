"""Causal log-mel features and their dMel discretization (DESIGN.md §4).

Geometry: global frame f covers samples [(f-1)*hop, (f+1)*hop): the 800-sample periodic Hann
window ends at (f+1)*hop, so a 200 ms turn of 3200 samples yields exactly 8 frames and needs
only the previous turn's last hop of audio (the "tail"). Samples before t=0 are zeros. Each
frame is zero-padded at the end to n_fft and transformed with rfft.

Value: log10 of the mel energy, where
  power[k] = (|X[k]| / sum(window))**2       (a full-scale sine of amplitude A peaks at (A/2)**2)
  mel[m]   = sum_k fb[k, m] * power[k]        (fb columns sum to 1: a weighted mean of the band)
clamped to [log_mel_min, log_mel_max] (the floor 10**log_mel_min is the silence level).

The filterbank uses the Slaney mel scale (linear below 1 kHz, logarithmic above) with triangles
that are normalized to unit sum over FFT bins rather than Slaney's unit area in Hz: then the
unnormalized triangles form a partition of unity, which the vocoder uses to invert it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from model.config import ModelConfig

DEFAULT_CFG = ModelConfig()  # the log-mel range is the same in every preset

_F_SP = 200.0 / 3  # Slaney: Hz per mel below the break
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(f: Tensor) -> Tensor:
    """Slaney mel scale (the auditory-toolbox / librosa default)."""
    lin = f / _F_SP
    log = _MIN_LOG_MEL + torch.log(torch.clamp(f, min=_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(f >= _MIN_LOG_HZ, log, lin)


def mel_to_hz(m: Tensor) -> Tensor:
    lin = m * _F_SP
    log = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (m - _MIN_LOG_MEL))
    return torch.where(m >= _MIN_LOG_MEL, log, lin)


def mel_triangles(cfg: ModelConfig) -> Tensor:
    """(n_fft//2+1, n_mels) triangles of peak 1; they sum to 1 between the first and last centers."""
    n_freqs = cfg.n_fft // 2 + 1
    freqs = torch.linspace(0.0, cfg.sample_rate / 2, n_freqs, dtype=torch.float64)  # (K,)
    lo, hi = hz_to_mel(torch.tensor([cfg.f_min, cfg.f_max], dtype=torch.float64))
    edges = mel_to_hz(torch.linspace(float(lo), float(hi), cfg.n_mels + 2, dtype=torch.float64))  # (M+2,)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]  # (M,)
    up = (freqs[:, None] - left) / (center - left)  # (K, M)
    down = (right - freqs[:, None]) / (right - center)
    return torch.clamp(torch.minimum(up, down), min=0.0).to(torch.float32)


def mel_filterbank(cfg: ModelConfig) -> Tensor:
    """(n_fft//2+1, n_mels) non-negative weights; each column sums to 1 (band mean of power)."""
    tri = mel_triangles(cfg).double()
    return (tri / tri.sum(dim=0, keepdim=True)).to(torch.float32)


def stft_key(cfg: ModelConfig) -> tuple[int | float, ...]:
    """The config fields that define the features (ModelConfig itself is unhashable: it holds a dict)."""
    return (cfg.sample_rate, cfg.n_mels, cfg.win_length, cfg.hop_length, cfg.n_fft, cfg.f_min, cfg.f_max)


_BASIS: dict[tuple[int | float, ...], tuple[Tensor, Tensor]] = {}


def stft_basis(cfg: ModelConfig) -> tuple[Tensor, Tensor]:
    """Cached (window, filterbank); the window carries the 1/sum(window) normalization."""
    key = stft_key(cfg)
    if key not in _BASIS:
        window = torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float64)
        _BASIS[key] = ((window / window.sum()).to(torch.float32), mel_filterbank(cfg))  # (win,), (K, M)
    return _BASIS[key]


def _check_audio(audio: Tensor, n: int | None, cfg: ModelConfig) -> None:
    if not isinstance(audio, Tensor) or audio.ndim != 1:
        shape = tuple(audio.shape) if isinstance(audio, Tensor) else type(audio).__name__
        raise ValueError(f"audio: expected a 1-D tensor of samples, got {shape}")
    if n is not None and audio.shape[0] != n:
        raise ValueError(f"audio: expected {n} samples, got {audio.shape[0]}")
    if audio.shape[0] % cfg.hop_length:
        raise ValueError(f"audio: expected a multiple of hop_length={cfg.hop_length} samples, got {audio.shape[0]}")
    if not torch.isfinite(audio).all():
        raise ValueError("audio: expected finite samples, got NaN or inf")


def log_mel(audio: Tensor, cfg: ModelConfig, tail: Tensor | None = None) -> Tensor:
    """(N,) audio plus the previous hop of audio -> (N//hop, n_mels) clamped log10 mel energies."""
    _check_audio(audio, None, cfg)
    hop = cfg.hop_length
    tail = audio.new_zeros(hop) if tail is None else tail
    if tail.shape != (hop,):
        raise ValueError(f"tail: expected shape ({hop},), got {tuple(tail.shape)}")
    return _log_mel(torch.cat([tail, audio]).to(torch.float32), cfg)


def _log_mel(x: Tensor, cfg: ModelConfig) -> Tensor:
    """(..., hop + N) float32 audio after the previous hop of audio -> (..., N//hop, n_mels)."""
    window, fb = stft_basis(cfg)
    frames = x.unfold(-1, cfg.win_length, cfg.hop_length) * window  # (..., F, win)
    spec = torch.fft.rfft(frames, n=cfg.n_fft)  # (..., F, K) complex
    power = spec.real.square() + spec.imag.square()  # |z|^2 without abs()'s complex hypot and sqrt
    mel = power @ fb  # (..., F, n_mels)
    floor = 10.0**cfg.log_mel_min
    return torch.log10(torch.clamp(mel, min=floor)).clamp(cfg.log_mel_min, cfg.log_mel_max)


def log_mel_offline(audio: Tensor, cfg: ModelConfig) -> Tensor:
    """Whole signal at once; a length that is not a multiple of hop is zero-padded at the end."""
    if isinstance(audio, Tensor) and audio.ndim == 1 and audio.shape[0] % cfg.hop_length:
        audio = torch.nn.functional.pad(audio, (0, -audio.shape[0] % cfg.hop_length))
    return log_mel(audio, cfg)


@dataclass
class DMelStream:
    """Per-session streaming front end: one 200 ms turn in, frames_per_turn log-mel frames out."""

    cfg: ModelConfig
    tail: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tail = torch.zeros(self.cfg.hop_length)

    def push(self, chunk: Tensor) -> Tensor:
        """(turn_samples,) -> (frames_per_turn, n_mels); equal to log_mel_offline on the concatenation."""
        _check_audio(chunk, self.cfg.turn_samples, self.cfg)
        chunk = chunk.to(torch.float32)
        out = log_mel(chunk, self.cfg, self.tail)
        self.tail = chunk[-self.cfg.hop_length :].clone()
        return out


def push_batch(streams: list[DMelStream], chunks: Tensor) -> Tensor:
    """`DMelStream.push` for B sessions at once: (B, turn_samples) finite float32 samples ->
    (B, frames_per_turn, n_mels), one STFT and one filterbank GEMM for the batch instead of ~30
    small ops per session. Equal to `push` within rounding, not bitwise: the GEMM over every
    session's frames may block its sums differently, so batch-invariant serving keeps `push`."""
    cfg = streams[0].cfg
    if chunks.shape != (len(streams), cfg.turn_samples):
        raise ValueError(f"audio: expected shape ({len(streams)}, {cfg.turn_samples}), got {tuple(chunks.shape)}")
    hop = cfg.hop_length
    out = _log_mel(torch.cat([torch.stack([s.tail for s in streams]), chunks.to(torch.float32)], dim=1), cfg)
    for s, tail in zip(streams, chunks[:, -hop:].clone().unbind(0), strict=True):
        s.tail = tail
    return out


def quantize(logmel: Tensor, cfg: ModelConfig = DEFAULT_CFG) -> Tensor:
    """(..., n_mels) log-mel -> LongTensor of uniform bins over [log_mel_min, log_mel_max], clamped."""
    u = (logmel - cfg.log_mel_min) / (cfg.log_mel_max - cfg.log_mel_min)  # [0, 1] inside the range
    return torch.clamp(torch.floor(u * cfg.dmel_bins), 0, cfg.dmel_bins - 1).long()


def dequantize(bins: Tensor, cfg: ModelConfig = DEFAULT_CFG) -> Tensor:
    """Bins -> bin-center log-mel values."""
    width = (cfg.log_mel_max - cfg.log_mel_min) / cfg.dmel_bins
    return cfg.log_mel_min + (bins.to(torch.float32) + 0.5) * width


def mel_to_unit(x: Tensor, cfg: ModelConfig = DEFAULT_CFG) -> Tensor:
    """[log_mel_min, log_mel_max] -> [-1, 1] (the flow head's space)."""
    return 2.0 * (x - cfg.log_mel_min) / (cfg.log_mel_max - cfg.log_mel_min) - 1.0


def unit_to_mel(u: Tensor, cfg: ModelConfig = DEFAULT_CFG) -> Tensor:
    return cfg.log_mel_min + (u + 1.0) * 0.5 * (cfg.log_mel_max - cfg.log_mel_min)
