"""A small trained vocoder: causal ConvNeXt over log-mel frames, iSTFT head (Vocos style).

Input: the model's causal log-mel (model/dmel.py), scaled to unit space [-1, 1]. A causal
input convolution and `n_layers` ConvNeXt blocks (depthwise causal conv, LayerNorm, MLP, layer
scale) look only at the current and past frames (left context only), so the network streams:
a session keeps the last `kernel - 1` inputs of each convolution as its state.

Output: per mel frame, `sub_frames` short spectra (log-magnitude, and the phase as the angle
of a predicted (cos, sin) pair), each inverted with irfft, windowed by a periodic Hann of
`n_fft` samples and overlap-added at hop `sub_hop`. Geometry, for mel frame f (which covers
samples [(f-1)*hop, (f+1)*hop)): sub-frame j spans [(f-1)*hop + j*sub_hop, ... + n_fft). The
first sub-frame of frame f starts at (f-1)*hop, so once frames < F are in, every sample
before (F-1)*hop is final: the output lags the mel by exactly one hop (`delay_samples`), like
StreamingGriffinLim, and a session carries only the (n_fft/sub_hop - 1) unfinished sub-hops.

Batch invariance (the engine's deterministic mode): every matmul in the streaming path is
`per_item_matmul` (one identical GEMM per session); convolutions are shifted elementwise
products; LayerNorm, irfft and the rest are per row. So a session's audio never depends on
which sessions share the call (tests/model/test_neural_vocoder.py checks it bitwise). The
engine's normal mode passes `exact=False`: one plain GEMM over the batch, 11 ms against 17 at
32 sessions on one CPU thread; a session's audio then moves by rounding with its batch.

Training (model/train/vocoder.py) runs `NeuralVocoder.forward` with plain matmuls over whole
crops; the streaming path is the same function with per-item matmuls and carried state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ModelConfig
from model.dmel import mel_to_unit
from model.linear import per_item_matmul
from model.vocoder import StreamingGriffinLim, check_logmel

WEIGHTS = "vocoder.safetensors"
CONFIG = "vocoder.json"
ENV = "MICROTURN_VOCODER"  # "griffin-lim" forces the weight-free vocoder even when a checkpoint ships one
_MAX_LOG_MAG = math.log(1e2)  # Vocos clips the magnitude at 1e2: a stray logit cannot blow up the output

MatMul = Callable[[Tensor, Tensor], Tensor]


class VocoderError(ValueError):
    """A vocoder config or weights file that cannot be used."""


@dataclass(frozen=True)
class VocoderConfig:
    name: str = "tiny"
    # the features it reads: must equal the model config's (checked by `check_features`)
    sample_rate: int = 16000
    n_mels: int = 80
    hop_length: int = 400
    log_mel_min: float = -9.0
    log_mel_max: float = -1.0
    # synthesis
    sub_hop: int = 100
    n_fft: int = 400
    # backbone
    dim: int = 128
    mlp_dim: int = 384
    n_layers: int = 8
    kernel: int = 7
    in_kernel: int = 3

    def __post_init__(self) -> None:
        problems = []
        if self.hop_length % self.sub_hop or self.n_fft % self.sub_hop:
            problems.append("hop_length and n_fft must be multiples of sub_hop")
        if self.n_fft + self.hop_length - self.sub_hop > 2 * self.hop_length:
            problems.append("a frame's sub-frames must fit in its mel window (n_fft + hop - sub_hop <= 2 * hop)")
        if min(self.dim, self.mlp_dim, self.n_layers, self.kernel, self.in_kernel, self.n_mels) < 1:
            problems.append("sizes must be >= 1")
        if not self.log_mel_min < self.log_mel_max:
            problems.append("log_mel_min must be below log_mel_max")
        if problems:
            raise VocoderError(f"vocoder config {self.name!r}: " + "; ".join(problems))

    @property
    def sub_frames(self) -> int:
        """Short spectra per mel frame."""
        return self.hop_length // self.sub_hop

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def chunks_per_frame(self) -> int:
        """Sub-hops one short frame spans."""
        return self.n_fft // self.sub_hop

    @property
    def out_dim(self) -> int:
        return self.sub_frames * 3 * self.n_bins

    def check_features(self, cfg: ModelConfig) -> None:
        mine = (self.sample_rate, self.n_mels, self.hop_length, self.log_mel_min, self.log_mel_max)
        theirs = (cfg.sample_rate, cfg.n_mels, cfg.hop_length, cfg.log_mel_min, cfg.log_mel_max)
        if mine != theirs:
            raise VocoderError(
                f"vocoder config {self.name!r} reads (sample_rate, n_mels, hop, log_mel range) {mine}, "
                f"the model makes {theirs}"
            )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> VocoderConfig:
        if not isinstance(data, dict):
            raise VocoderError(f"vocoder config: expected an object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise VocoderError(f"vocoder config: unknown fields {unknown}")
        try:
            return cls(**data)
        except TypeError as e:
            raise VocoderError(f"vocoder config: {e}") from e


PRESETS = {
    "tiny": VocoderConfig(),
    # tests: a few thousand parameters; odd widths, where a plain GEMM is not row-invariant (model/linear.py)
    "test": VocoderConfig(name="test", dim=13, mlp_dim=37, n_layers=2, kernel=3, in_kernel=2),
}


def get_preset(name: str) -> VocoderConfig:
    if name not in PRESETS:
        raise VocoderError(f"unknown vocoder preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]


def _plain_matmul(x: Tensor, w: Tensor) -> Tensor:
    return x @ w


def _causal_conv_input(x: Tensor, ctx: Tensor) -> Tensor:
    """(B, T, C) with (B, k-1, C) of left context -> (B, T+k-1, C)."""
    return torch.cat([ctx.to(x.dtype), x], dim=1)


class Block(nn.Module):
    """ConvNeXt block, causal: depthwise conv over time, LayerNorm, MLP, layer-scaled residual."""

    def __init__(self, vc: VocoderConfig) -> None:
        super().__init__()
        self.dw_weight = nn.Parameter(torch.randn(vc.kernel, vc.dim) / math.sqrt(vc.kernel))
        self.dw_bias = nn.Parameter(torch.zeros(vc.dim))
        self.norm = nn.LayerNorm(vc.dim, eps=1e-6)
        self.w1 = nn.Parameter(torch.randn(vc.dim, vc.mlp_dim) / math.sqrt(vc.dim))
        self.b1 = nn.Parameter(torch.zeros(vc.mlp_dim))
        self.w2 = nn.Parameter(torch.randn(vc.mlp_dim, vc.dim) / math.sqrt(vc.mlp_dim))
        self.b2 = nn.Parameter(torch.zeros(vc.dim))
        self.scale = nn.Parameter(torch.full((vc.dim,), 1.0 / vc.n_layers))

    def forward(self, x: Tensor, ctx: Tensor, mm: MatMul) -> tuple[Tensor, Tensor]:
        """(B, T, C), context (B, k-1, C) -> (B, T, C), the next context."""
        k, T = self.dw_weight.shape[0], x.shape[1]
        padded = _causal_conv_input(x, ctx)
        # shifted products, summed in a fixed order: elementwise, hence per item
        h = self.dw_bias + padded[:, 0:T] * self.dw_weight[0]
        for j in range(1, k):
            h = h + padded[:, j : j + T] * self.dw_weight[j]
        h = self.norm(h)
        h = mm(F.gelu(mm(h, self.w1) + self.b1), self.w2) + self.b2
        return x + self.scale * h, padded[:, T:]


class NeuralVocoder(nn.Module):
    def __init__(self, vc: VocoderConfig) -> None:
        super().__init__()
        self.vc = vc
        self.w_in = nn.Parameter(torch.randn(vc.in_kernel * vc.n_mels, vc.dim) / math.sqrt(vc.in_kernel * vc.n_mels))
        self.b_in = nn.Parameter(torch.zeros(vc.dim))
        self.norm_in = nn.LayerNorm(vc.dim, eps=1e-6)
        self.blocks = nn.ModuleList(Block(vc) for _ in range(vc.n_layers))
        self.norm_out = nn.LayerNorm(vc.dim, eps=1e-6)
        self.w_out = nn.Parameter(torch.randn(vc.dim, vc.out_dim) * 0.01)
        self.b_out = nn.Parameter(torch.zeros(vc.out_dim))
        window = torch.hann_window(vc.n_fft, periodic=True)
        self.window: Tensor
        self.register_buffer("window", window, persistent=False)
        # sum over the overlapping frames of window**2 (constant for a Hann at a hop dividing n_fft/2)
        w2 = window.square().view(vc.chunks_per_frame, vc.sub_hop).sum(0)
        self.ola_norm = float(w2.mean())

    def initial_state(self, batch: int) -> list[Tensor]:
        """Left context of every convolution at t=0: silence for the mel input, zeros inside."""
        vc = self.vc
        mel = torch.full((batch, vc.in_kernel - 1, vc.n_mels), -1.0)  # unit-space silence
        return [mel] + [torch.zeros(batch, vc.kernel - 1, vc.dim) for _ in range(vc.n_layers)]

    def forward(
        self, unit_mel: Tensor, state: Sequence[Tensor] | None = None, mm: MatMul = _plain_matmul
    ) -> tuple[Tensor, list[Tensor]]:
        """(B, T, n_mels) unit-space mel -> (B, T*sub_frames, n_fft) windowed short frames, new state."""
        vc = self.vc
        B, T, _ = unit_mel.shape
        ctx = list(state) if state is not None else self.initial_state(B)
        padded = _causal_conv_input(unit_mel, ctx[0])
        # causal input conv as one matmul over the k stacked frames
        stacked = torch.cat([padded[:, j : j + T] for j in range(vc.in_kernel)], dim=-1)
        x = self.norm_in(mm(stacked, self.w_in) + self.b_in)
        new_state = [padded[:, T:]]
        for block, c in zip(self.blocks, ctx[1:], strict=True):
            x, c_next = block(x, c, mm)
            new_state.append(c_next)
        out = mm(self.norm_out(x), self.w_out) + self.b_out  # (B, T, S*3*K)
        out = out.view(B, T * vc.sub_frames, 3, vc.n_bins)
        mag = torch.exp(out[:, :, 0].clamp(max=_MAX_LOG_MAG))
        cos, sin = out[:, :, 1], out[:, :, 2]
        norm = torch.sqrt(cos.square() + sin.square() + 1e-9)  # the angle of (cos, sin)
        spec = torch.complex(mag * cos / norm, mag * sin / norm)
        frames = torch.fft.irfft(spec, n=vc.n_fft) * self.window  # (B, T*S, n_fft)
        return frames, new_state

    def overlap_add(self, frames: Tensor, carry: Tensor | None = None) -> Tensor:
        """(B, G, n_fft) frames at hop sub_hop, plus (B, Q-1, sub_hop) carried sums -> (B, G+Q-1,
        sub_hop) sub-hops; the first starts where frame 0 does."""
        vc = self.vc
        B, G, _ = frames.shape
        Q = vc.chunks_per_frame
        parts = frames.view(B, G, Q, vc.sub_hop)
        buf = frames.new_zeros(B, G + Q - 1, vc.sub_hop)
        if carry is not None:
            buf[:, : Q - 1] += carry
        for q in range(Q):
            buf[:, q : q + G] += parts[:, :, q]
        return buf / self.ola_norm

    def synthesize(self, logmel: Tensor) -> Tensor:
        """Offline, with autograd: (B, T, n_mels) log-mel -> (B, T*hop) waveform over samples
        [(f0-1)*hop, (f0+T-1)*hop) for a crop starting at frame f0 from the initial state."""
        frames, _ = self(mel_to_unit(logmel, _feature_cfg(self.vc)))
        return self.overlap_add(frames)[:, : logmel.shape[1] * self.vc.sub_frames].flatten(1)


def _feature_cfg(vc: VocoderConfig) -> ModelConfig:
    return ModelConfig(log_mel_min=vc.log_mel_min, log_mel_max=vc.log_mel_max)


def vocode(net: NeuralVocoder, logmel: Tensor) -> Tensor:
    """(F, n_mels) -> (F*hop,) waveform over samples [0, F*hop), aligned with log_mel's frames
    (the last hop lacks the next frame's share, as in model/vocoder.py's `griffin_lim`)."""
    check_logmel(logmel, net.vc.n_mels, None)
    with torch.inference_mode():
        y = net.synthesize(logmel[None].float())[0]  # starts at -hop
    hop = net.vc.hop_length
    return torch.cat([y[hop:], y.new_zeros(hop)])


@dataclass
class NeuralState:
    """One session's streaming state: each convolution's left context and the unfinished sub-hops."""

    context: list[Tensor]  # [(in_kernel-1, n_mels), (kernel-1, dim) per block]
    carry: Tensor  # (chunks_per_frame - 1, sub_hop)


class StreamingNeuralVocoder:
    """Per-session vocoder: frames_per_turn log-mel frames in, turn_samples samples out.

    Same interface and timing as StreamingGriffinLim: output lags the mel by one hop, and the
    very first hop out (before t=0) is zeros. `push_batch` runs many sessions in one call."""

    def __init__(self, cfg: ModelConfig, net: NeuralVocoder) -> None:
        net.vc.check_features(cfg)
        self.cfg = cfg
        self.net = net
        self.delay_samples = cfg.hop_length
        self.reset()

    def reset(self) -> None:
        self.frames_seen = 0
        vc = self.net.vc
        self.state = NeuralState(
            context=[c[0] for c in self.net.initial_state(1)],
            carry=torch.zeros(vc.chunks_per_frame - 1, vc.sub_hop),
        )

    def push(self, logmel: Tensor) -> Tensor:
        """(frames_per_turn, n_mels) -> (turn_samples,) waveform, delayed by delay_samples."""
        check_logmel(logmel, self.cfg.n_mels, self.cfg.frames_per_turn)
        return push_batch([self], logmel[None])[0]

    @staticmethod
    def push_many(vocoders: Sequence[StreamingNeuralVocoder], logmel: Tensor) -> Tensor:
        return push_batch(vocoders, logmel)


def push_batch(vocoders: Sequence[StreamingNeuralVocoder], logmel: Tensor, *, exact: bool = True) -> Tensor:
    """(B, frames_per_turn, n_mels) for B sessions -> (B, turn_samples), each as if pushed alone.

    `exact`: bitwise as if pushed alone (`per_item_matmul`, deterministic serving); False: one
    plain GEMM over the batch, the same values up to rounding, ~1.5x faster at 16-32 sessions."""
    if not vocoders:
        raise ValueError("vocoders: expected at least one")
    cfg, net = vocoders[0].cfg, vocoders[0].net
    if not isinstance(logmel, Tensor) or logmel.ndim != 3 or logmel.shape[0] != len(vocoders):
        shape = tuple(logmel.shape) if isinstance(logmel, Tensor) else type(logmel).__name__
        raise ValueError(f"logmel: expected ({len(vocoders)}, frames, n_mels), got {shape}")
    if any(v.net is not net or v.cfg != cfg for v in vocoders):
        raise ValueError("vocoders: a batch must share one network and config")
    for item in logmel:
        check_logmel(item, cfg.n_mels, cfg.frames_per_turn)
    T = logmel.shape[1]
    vc = net.vc
    ctx = [torch.stack([v.state.context[i] for v in vocoders]) for i in range(len(vocoders[0].state.context))]
    carry = torch.stack([v.state.carry for v in vocoders])
    with torch.inference_mode():
        frames, new_ctx = net(mel_to_unit(logmel.float(), cfg), ctx, per_item_matmul if exact else _plain_matmul)
        chunks = net.overlap_add(frames, carry * net.ola_norm)  # (B, T*S + Q-1, sub_hop)
    done = T * vc.sub_frames
    out = chunks[:, :done].flatten(1).clone()
    first = torch.tensor([v.frames_seen == 0 for v in vocoders])
    out[first, : cfg.hop_length] = 0.0  # before t=0
    for b, v in enumerate(vocoders):
        v.frames_seen += T
        v.state = NeuralState(context=[c[b].clone() for c in new_ctx], carry=chunks[b, done:].clone())
    return out


# --- loading and choosing a vocoder -------------------------------------------------------------


def save(path: str | Path, net: NeuralVocoder, dtype: torch.dtype = torch.bfloat16) -> tuple[Path, Path]:
    """Write vocoder.safetensors (in `dtype`) and vocoder.json into the directory `path`."""
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": "1"})
    (out / CONFIG).write_text(net.vc.to_json() + "\n")
    return out / WEIGHTS, out / CONFIG


def load(path: str | Path) -> NeuralVocoder:
    """The vocoder in directory `path` (float32, eval mode). VocoderError names the bad file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(path)
    try:
        vc = VocoderConfig.from_dict(json.loads((root / CONFIG).read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise VocoderError(f"{root / CONFIG}: unreadable vocoder config: {e}") from e
    except VocoderError as e:
        raise VocoderError(f"{root / CONFIG}: {e}") from e
    try:
        state = load_file(str(root / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise VocoderError(f"{root / WEIGHTS}: unreadable safetensors file: {e}") from e
    net = NeuralVocoder(vc)
    expected = net.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise VocoderError(f"{root / WEIGHTS}: tensors do not match {root / CONFIG}")
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval().requires_grad_(False)


class Vocoder(Protocol):
    """What a session's audio out needs (StreamingGriffinLim and StreamingNeuralVocoder)."""

    @property
    def delay_samples(self) -> int: ...

    @property
    def frames_seen(self) -> int: ...

    def reset(self) -> None: ...

    def push(self, logmel: Tensor) -> Tensor: ...


# The network each model config's sessions speak with. Keyed by the config object, because
# that object is what every session is created from (Engine.open passes model.cfg to
# SessionState.new): a checkpoint's loader attaches its vocoder here and every session of that
# model picks it up, with no new parameter threaded through the engine and its callers.
# Entries hold the config weakly and go when it does, so an id is never matched to a stale one.
_ATTACHED: dict[int, tuple[weakref.ref[ModelConfig], NeuralVocoder]] = {}


def attach(cfg: ModelConfig, net: NeuralVocoder | None) -> None:
    """Sessions created from `cfg` (this object) speak with `net`; None detaches."""
    if net is None:
        _ATTACHED.pop(id(cfg), None)
        return
    net.vc.check_features(cfg)
    key = id(cfg)
    if key not in _ATTACHED:
        weakref.finalize(cfg, _ATTACHED.pop, key, None)
    _ATTACHED[key] = (weakref.ref(cfg), net)


def attached(cfg: ModelConfig) -> NeuralVocoder | None:
    entry = _ATTACHED.get(id(cfg))
    return entry[1] if entry is not None and entry[0]() is cfg else None


def new_vocoder(cfg: ModelConfig, net: NeuralVocoder | None = None) -> Vocoder:
    """A session's vocoder: `net` (default: the one attached to `cfg`) unless MICROTURN_VOCODER
    is "griffin-lim" or there is none; then streaming Griffin-Lim."""
    choice = os.environ.get(ENV, "").strip().lower()
    if choice not in ("", "auto", "neural", "griffin-lim"):
        raise ValueError(f"{ENV}={choice!r}: expected griffin-lim, neural or auto")
    net = net if net is not None else attached(cfg)
    if choice == "griffin-lim" or net is None:
        if choice == "neural":
            raise ValueError(f"{ENV}=neural but this checkpoint ships no vocoder")
        return StreamingGriffinLim(cfg)
    return StreamingNeuralVocoder(cfg, net)


def vocode_batch(vocoders: Sequence[Vocoder], logmel: Tensor, *, exact: bool = True) -> Tensor:
    """(B, frames_per_turn, n_mels) -> (B, turn_samples): each kind of vocoder in one batched call.
    `exact`: each session's audio bitwise as if alone (see `push_batch`)."""
    from model import vocoder as griffin

    if not vocoders:
        raise ValueError("vocoders: expected at least one")
    groups: dict[type, list[int]] = {}
    for i, v in enumerate(vocoders):
        groups.setdefault(type(v), []).append(i)
    out: Tensor | None = None
    for kind, idx in groups.items():
        members = [vocoders[i] for i in idx]
        if kind is griffin.StreamingGriffinLim:
            audio = griffin.push_batch(members, logmel[idx])  # type: ignore[arg-type]
        elif kind is StreamingNeuralVocoder:
            audio = push_batch(members, logmel[idx], exact=exact)  # type: ignore[arg-type]
        else:
            audio = kind.push_many(members, logmel[idx])  # type: ignore[attr-defined]
        if len(groups) == 1:
            return audio
        if out is None:
            out = audio.new_zeros(len(vocoders), audio.shape[1])
        out[idx] = audio
    assert out is not None
    return out
