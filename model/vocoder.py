"""Weight-free vocoder: streaming Griffin-Lim from our causal log-mel (DESIGN.md §5, "Audio out").

Same STFT geometry as model/dmel.py: frame f is an 800-sample periodic Hann window over samples
[(f-1)*hop, (f+1)*hop), zero-padded at the end to n_fft. Synthesis is the least-squares ISTFT
y = sum_f w * irfft(X_f) / env, with env = w[n]**2 + w[n+hop]**2 the steady-state window power
(hop = win/2, so every interior sample sees exactly two frames; edges behave as if the missing
neighbor were silent).

mel -> magnitude: undo the log and the 1/sum(window) normalization, then spread each band's
power over its FFT bins with the unnormalized triangles. They form a partition of unity, so
this linearly interpolates the band powers between band centers: non-negative, smooth, and
one (n_mels, K) matmul, which is cached per config. A few multiplicative NNLS updates then
sharpen it so that its mel matches the target.

Phase: Fast Griffin-Lim (momentum 0.99) from a deterministic start, the phase every bin would
have if it were a cosine at the bin frequency with zero phase at t=0 (no RNG involved).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from model.config import ModelConfig
from model.dmel import mel_triangles, stft_basis, stft_key
from model.linear import per_item_matmul

_MOMENTUM = 0.99
_NNLS_STEPS = 8
_EPS = 1e-12

_SYNTHESIS: dict[tuple[int | float, ...], tuple[Tensor, Tensor, Tensor, Tensor, float]] = {}


def _synthesis(cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    """Cached (window, env, spread (M, K), fb (K, M), window sum) for a config."""
    key = stft_key(cfg)
    if key not in _SYNTHESIS:
        window = torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float64)
        hop = cfg.hop_length
        env = window[:hop] ** 2 + window[hop:] ** 2  # (hop,), in [0.5, 1]
        _, fb = stft_basis(cfg)
        spread = mel_triangles(cfg).T.contiguous()  # (M, K)
        _SYNTHESIS[key] = (window.float(), env.float(), spread, fb, float(window.sum()))
    return _SYNTHESIS[key]


def check_logmel(logmel: Tensor, n_mels: int, frames: int | None) -> None:
    """A vocoder's input (either kind): (frames, n_mels), finite; ValueError naming what is wrong."""
    if not isinstance(logmel, Tensor) or logmel.ndim != 2 or logmel.shape[1] != n_mels:
        shape = tuple(logmel.shape) if isinstance(logmel, Tensor) else type(logmel).__name__
        raise ValueError(f"logmel: expected shape (frames, {n_mels}), got {shape}")
    if frames is not None and logmel.shape[0] != frames:
        raise ValueError(f"logmel: expected {frames} frames, got {logmel.shape[0]}")
    if not torch.isfinite(logmel).all():
        raise ValueError("logmel: expected finite values, got NaN or inf")


def _per_item_matmul(x: Tensor, w: Tensor) -> Tensor:
    """(B, n, a) @ (a, b): one GEMM of the same shape per batch item, so an item's result never
    depends on how many other sessions share the call (batch-invariant; see model/linear.py)."""
    return per_item_matmul(x, w)


def mel_to_magnitude(logmel: Tensor, cfg: ModelConfig) -> Tensor:
    """(B, F, n_mels) log10 mel energies -> (B, F, n_fft//2+1) linear STFT magnitudes of a Hann frame."""
    _, _, spread, fb, wsum = _synthesis(cfg)
    # sampled outputs may stray past the pinned range; the features never do
    mel = torch.pow(10.0, logmel.float().clamp(cfg.log_mel_min, cfg.log_mel_max))  # (B, F, M)
    power = _per_item_matmul(mel, spread)  # (B, F, K)
    target = _per_item_matmul(mel, fb.T)  # (B, F, K)
    for _ in range(_NNLS_STEPS):  # multiplicative NNLS: min ||power @ fb - mel||, power >= 0
        # power @ (fb fb^T) as (power @ fb) @ fb^T: through the M mel bands, 3x fewer FLOPs than
        # through the (K, K) Gram matrix
        power = power * target / (_per_item_matmul(_per_item_matmul(power, fb), fb.T) + _EPS)
    return power.sqrt() * wsum


def _init_phase(first: Tensor, n: int, cfg: ModelConfig) -> Tensor:
    """(B, n, K) unit phasors of frames first[b]..first[b]+n-1: each bin a zero-phase cosine at t=0."""
    k = torch.arange(cfg.n_fft // 2 + 1)
    start = (first[:, None] + torch.arange(n) - 1) * cfg.hop_length  # (B, n) frame start sample
    cycles = (start[..., None] * k) % cfg.n_fft  # exact integer phase, no drift on long calls
    return torch.polar(torch.ones(()), cycles.float() * (2 * math.pi / cfg.n_fft))


def _overlap_add(spec: Tensor, cfg: ModelConfig, carry: Tensor) -> tuple[Tensor, Tensor]:
    """(B, n, K) spectra + (B, hop) carried half frames -> (B, n+1, hop) normalized signal and
    the (B, n, win) frames."""
    window, env, *_ = _synthesis(cfg)
    hop, (B, n) = cfg.hop_length, spec.shape[:2]
    frames = torch.fft.irfft(spec, n=cfg.n_fft)[..., : cfg.win_length] * window  # (B, n, win)
    buf = torch.zeros(B, n + 1, hop)
    buf[:, :n] += frames[..., :hop]
    buf[:, 1:] += frames[..., hop:]
    buf[:, 0] += carry
    return buf / env, frames


def _analyze(hops: Tensor, cfg: ModelConfig) -> Tensor:
    """(B, n+1, hop) signal -> (B, n, K) spectra of the n frames that span it."""
    window, *_ = _synthesis(cfg)
    frames = torch.cat([hops[:, :-1], hops[:, 1:]], dim=-1) * window  # (B, n, win)
    return torch.fft.rfft(frames, n=cfg.n_fft)


def _fast_griffin_lim(mag: Tensor, phase: Tensor, cfg: ModelConfig, carry: Tensor, n_iter: int) -> Tensor:
    """Phase retrieval of n frames next to a fixed carried half frame -> (B, n, K) complex spectra."""
    prev = torch.zeros_like(phase)
    for _ in range(n_iter):
        hops, _ = _overlap_add(mag * phase, cfg, carry)
        rebuilt = _analyze(hops, cfg)  # (B, n, K)
        phase = torch.add(rebuilt, prev, alpha=-_MOMENTUM / (1 + _MOMENTUM))
        # unit phasors from real ops on the parts: complex abs, and a complex tensor divided by a
        # real one (as complex by complex), took 2.5-5x as long (B=32: 1.3 vs 0.3 ms an iteration)
        phase = torch.addcmul(phase.real.square(), phase.imag, phase.imag).add_(_EPS**2).rsqrt_() * phase
        prev = rebuilt
    return mag * phase


def griffin_lim(logmel: Tensor, cfg: ModelConfig, n_iter: int = 32) -> Tensor:
    """(F, n_mels) -> (F*hop,) waveform over samples [0, F*hop), aligned with log_mel's frames."""
    check_logmel(logmel, cfg.n_mels, None)
    mag = mel_to_magnitude(logmel[None], cfg)  # (1, F, K)
    carry = torch.zeros(1, cfg.hop_length)
    spec = _fast_griffin_lim(mag, _init_phase(torch.zeros(1, dtype=torch.long), mag.shape[1], cfg), cfg, carry, n_iter)
    hops, _ = _overlap_add(spec, cfg, carry)  # (1, F+1, hop); hop 0 is before t=0
    return hops[0, 1:].flatten()


class StreamingGriffinLim:
    """Per-session vocoder: frames_per_turn log-mel frames in, turn_samples samples out.

    Each push runs Griffin-Lim on the new frames only, next to the last frame of the previous
    push, whose waveform is kept fixed (its first half is already out). A window spans two
    hops, so that frame is the only committed one that overlaps new audio; older ones need no
    state. Output lags the mel by delay_samples = one hop: the last hop of each push waits for
    the next push's first frame. The very first hop out is zeros. `push_batch` runs many
    sessions' vocoders as one batched computation (the engine's path).
    """

    def __init__(self, cfg: ModelConfig, n_iter: int = 32) -> None:
        self.cfg = cfg
        self.n_iter = n_iter
        self.delay_samples = cfg.hop_length
        self.reset()

    def reset(self) -> None:
        self.frames_seen = 0
        self.carry = torch.zeros(self.cfg.hop_length)  # second half of the last frame, windowed

    def push(self, logmel: Tensor) -> Tensor:
        """(frames_per_turn, n_mels) -> (turn_samples,) waveform, delayed by delay_samples."""
        check_logmel(logmel, self.cfg.n_mels, self.cfg.frames_per_turn)
        return push_batch([self], logmel[None])[0]


def push_batch(vocoders: list[StreamingGriffinLim], logmel: Tensor) -> Tensor:
    """(B, frames_per_turn, n_mels) for B sessions' vocoders -> (B, turn_samples).

    Same result per session as pushing it alone (every op is per item or per row)."""
    cfg = vocoders[0].cfg
    if logmel.ndim != 3 or logmel.shape[0] != len(vocoders):
        raise ValueError(f"logmel: expected ({len(vocoders)}, frames, n_mels), got {tuple(logmel.shape)}")
    if any(v.cfg != cfg or v.n_iter != vocoders[0].n_iter for v in vocoders):
        raise ValueError("vocoders: a batch must share one config and n_iter")
    for item in logmel:
        check_logmel(item, cfg.n_mels, cfg.frames_per_turn)
    mag = mel_to_magnitude(logmel, cfg)  # (B, n, K)
    first = torch.tensor([v.frames_seen for v in vocoders])
    carry = torch.stack([v.carry for v in vocoders])  # (B, hop)
    spec = _fast_griffin_lim(mag, _init_phase(first, mag.shape[1], cfg), cfg, carry, vocoders[0].n_iter)
    hops, frames = _overlap_add(spec, cfg, carry)  # (B, n+1, hop)
    hops[first == 0, 0] = 0.0  # before t=0
    for b, v in enumerate(vocoders):
        v.frames_seen += mag.shape[1]
        v.carry = frames[b, -1, cfg.hop_length :]
    return hops[:, :-1].flatten(1)
