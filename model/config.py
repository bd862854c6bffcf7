"""Model configuration: one frozen dataclass, named presets, and parameter counting.

The counts here are computed from the config alone (no weights are allocated), so
`microturn info --preset tml-small` works on a laptop. `tests/model/test_config.py`
checks that the formula equals `sum(p.numel())` of an instantiated model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# Stream types of the interleaved sequence (DESIGN.md §5). 0 is padding in ragged batches.
PAD_STREAM = 0
USER_AUDIO = 1
VIDEO = 2
USER_TEXT = 3
BACKGROUND = 4
MODEL_OUT = 5
N_STREAMS = 6
STREAM_NAMES = ("pad", "user_audio", "video", "user_text", "background", "model_out")


class ConfigError(ValueError):
    """A config or preset that cannot describe a valid model."""


@dataclass(frozen=True)
class GateConfig:
    """The speak gate over the text head (model/gate.py), stored with the checkpoint.

    Silent, the model starts speaking when p(not `<pad>`) >= `start`; speaking, it keeps going
    while p(not `<pad>`) >= `keep` (<= start: hysteresis); `<eot>` ends the turn. `start=None`
    is greedy argmax over the whole vocabulary, the behaviour of checkpoints from before the
    gate, so their config.json (which has no `gate`) loads unchanged. `temperature` > 0 samples
    among the non-pad tokens (noise keyed on seed, turn and position); 0 takes the best one.
    `voice` (needs the turn head): an output position is audible only while the text gate is
    speaking or the turn head's p(own voice active) >= `voice`; otherwise it plays silence, so
    a reply stops when the model hears it should, and nothing leaks into a pause. None = the
    flow head's audio always plays (checkpoints without a trained turn head).
    """

    start: float | None = None
    keep: float | None = None  # None = start (no hysteresis)
    temperature: float = 0.0
    voice: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.start is None and self.keep is not None:
            problems.append("keep needs start")
        if self.start is not None and not 0.0 < self.start <= 1.0:
            problems.append(f"start ({self.start}) must be in (0, 1]")
        if self.start is not None and self.keep is not None and not 0.0 < self.keep <= self.start:
            problems.append(f"keep ({self.keep}) must be in (0, start={self.start}]")
        if self.voice is not None and not 0.0 <= self.voice <= 1.0:
            problems.append(f"voice ({self.voice}) must be in [0, 1]")
        if not self.temperature >= 0.0:
            problems.append(f"temperature ({self.temperature}) must be >= 0")
        if problems:
            raise ConfigError("invalid gate config: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.start is None

    @property
    def keep_threshold(self) -> float | None:
        return self.start if self.keep is None else self.keep

    @classmethod
    def from_dict(cls, data: Any) -> GateConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"gate must be an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown gate fields: {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tiny"
    # trunk
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 48
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # MoE FFN: SwiGLU experts stacked as (E, D, I)
    n_experts: int = 8
    top_k: int = 2
    expert_dim: int = 256
    shared_expert_dim: int = 256  # 0 disables the shared expert
    # long calls: sliding window (in positions) plus attention sinks over a ring KV cache
    window: int = 1024
    n_sinks: int = 4
    # text (BPE vocab incl. special tokens; must equal the tokenizer's size)
    vocab_size: int = 1024
    # time
    sample_rate: int = 16000
    micro_turn_ms: int = 200
    position_ms: int = 50
    time_embed_dim: int = 64
    # dMel: 80 log-mel channels, 50 ms window, 25 ms hop, 16 bins over a pinned log10 range
    n_mels: int = 80
    win_length: int = 800
    hop_length: int = 400
    n_fft: int = 1024
    f_min: float = 0.0
    f_max: float = 8000.0
    dmel_bins: int = 16
    log_mel_min: float = -9.0
    log_mel_max: float = -1.0
    # video: 160x120 RGB -> 12 patches of 40x40, each through a 4-stage hMLP
    frame_width: int = 160
    frame_height: int = 120
    patch_size: int = 40
    # flow head (AdaLN MLP, rectified flow, Euler sampling)
    flow_dim: int = 192
    flow_depth: int = 3
    flow_steps: int = 4
    # serving
    max_text_tokens_per_turn: int = 32
    max_background_tokens_per_turn: int = 32
    deterministic: bool = False
    # the speak decision (calibrated after training; absent in older checkpoints = argmax)
    gate: GateConfig = field(default_factory=GateConfig)
    # training loss weights (used by model/train)
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {"text": 1.0, "caption": 1.0, "flow": 1.0, "turn": 0.5, "balance": 0.01}
    )

    def __post_init__(self) -> None:
        problems = []
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            problems.append(f"head_dim ({self.head_dim}) must be even for RoPE")
        if not 1 <= self.top_k <= self.n_experts:
            problems.append(f"top_k ({self.top_k}) must be in 1..n_experts ({self.n_experts})")
        if self.micro_turn_ms % self.position_ms:
            problems.append(
                f"micro_turn_ms ({self.micro_turn_ms}) must be a multiple of position_ms ({self.position_ms})"
            )
        if (self.position_ms * self.sample_rate // 1000) % self.hop_length:
            problems.append("position_ms must cover a whole number of dMel hops")
        if self.turn_samples % self.hop_length:
            problems.append("a micro-turn must cover a whole number of dMel hops")
        if self.win_length != 2 * self.hop_length:
            problems.append("win_length must be 2 * hop_length (each turn carries one hop of tail)")
        if self.frame_width % self.patch_size or self.frame_height % self.patch_size:
            problems.append("frame size must be a multiple of patch_size")
        if self.patch_size != 40:
            problems.append("the hMLP is built for 40x40 patches (5x5 -> 2x2 -> 2x2 -> 2x2)")
        if not self.log_mel_min < self.log_mel_max:
            problems.append("log_mel_min must be below log_mel_max")
        if self.window < 1 or self.n_sinks < 0:
            problems.append("window must be >= 1 and n_sinks >= 0")
        if self.time_embed_dim % 2:
            problems.append("time_embed_dim must be even")
        if problems:
            raise ConfigError(f"invalid model config {self.name!r}: " + "; ".join(problems))

    # derived quantities ------------------------------------------------------------------
    @property
    def turn_samples(self) -> int:
        return self.micro_turn_ms * self.sample_rate // 1000

    @property
    def frames_per_turn(self) -> int:
        return self.turn_samples // self.hop_length

    @property
    def frames_per_position(self) -> int:
        return self.position_ms * self.sample_rate // 1000 // self.hop_length

    @property
    def positions_per_turn(self) -> int:
        """Audio positions per micro-turn (the same count for input and output)."""
        return self.micro_turn_ms // self.position_ms

    @property
    def n_patches(self) -> int:
        return (self.frame_width // self.patch_size) * (self.frame_height // self.patch_size)

    @property
    def mel_dim(self) -> int:
        """Flow-head output size: one position's mel frames, flattened."""
        return self.frames_per_position * self.n_mels

    @property
    def max_chunk(self) -> int:
        """Most positions one streaming forward appends (a full IN_k)."""
        text = self.max_text_tokens_per_turn + self.max_background_tokens_per_turn
        return self.positions_per_turn + self.n_patches + text

    @property
    def ring_len(self) -> int:
        """Ring capacity: the window plus one chunk of slack, so a chunk's keys can be written
        before attention without evicting anything a query of that chunk still needs."""
        return self.window + self.max_chunk

    @property
    def cache_len(self) -> int:
        return self.n_sinks + self.ring_len

    # serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(unknown)}")
        if "gate" in data:
            data = {**data, "gate": GateConfig.from_dict(data["gate"])}
        return cls(**data)


PRESETS: dict[str, ModelConfig] = {
    # CPU demo, trained on this 2-core machine in about an hour; ~7 M parameters.
    "tiny": ModelConfig(),
    # One GPU: ~1.9 B total / ~0.5 B active.
    "small": ModelConfig(
        name="small",
        d_model=1024,
        n_layers=16,
        n_heads=16,
        n_kv_heads=4,
        head_dim=64,
        n_experts=32,
        top_k=4,
        expert_dim=1024,
        shared_expert_dim=1024,
        window=4096,
        vocab_size=32768,
        time_embed_dim=128,
        flow_dim=1024,
        flow_depth=4,
        flow_steps=8,
    ),
    # Matches the published TML-Interaction-Small count: 276 B total / 12 B active.
    "tml-small": ModelConfig(
        name="tml-small",
        d_model=4096,
        n_layers=56,
        n_heads=32,
        n_kv_heads=8,
        head_dim=128,
        n_experts=256,
        top_k=6,
        expert_dim=1536,
        shared_expert_dim=2048,
        window=16384,
        n_sinks=16,
        vocab_size=131072,
        time_embed_dim=256,
        flow_dim=2048,
        flow_depth=6,
        flow_steps=8,
    ),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class ParamCount:
    total: int
    active: int
    by_part: dict[str, int]


def count_params(cfg: ModelConfig) -> ParamCount:
    """Total and per-token active parameters, from the config alone.

    Mirrors the modules in model/: keep in step with them (a test checks equality).
    """
    D, hd = cfg.d_model, cfg.head_dim
    # embeddings: dMel tables (frames x mels x bins), text, stream type, time projection, vision
    dmel = cfg.frames_per_position * cfg.n_mels * cfg.dmel_bins * D
    text = cfg.vocab_size * D
    stream = N_STREAMS * D
    time = cfg.time_embed_dim * D + D
    vision = _hmlp_params(cfg)
    # trunk
    attn = D * cfg.n_heads * hd + 2 * D * cfg.n_kv_heads * hd + cfg.n_heads * hd * D
    norms = 2 * D
    router = D * cfg.n_experts
    expert = 3 * D * cfg.expert_dim
    shared = 3 * D * cfg.shared_expert_dim
    layer_total = attn + norms + router + cfg.n_experts * expert + shared
    layer_active = attn + norms + router + cfg.top_k * expert + shared
    final_norm = D
    # heads
    text_head = D * cfg.vocab_size
    caption_head = D * cfg.vocab_size
    turn_head = 2 * D + 2
    flow = _flow_params(cfg)
    by_part = {
        "embeddings": dmel + text + stream + time + vision,
        "trunk": cfg.n_layers * layer_total + final_norm,
        "heads": text_head + caption_head + turn_head + flow,
    }
    total = sum(by_part.values())
    # Per token, only one of the embedding tables is touched, but all embedding parameters
    # are counted as active, as published counts do.
    active = total - cfg.n_layers * (layer_total - layer_active)
    return ParamCount(total=total, active=active, by_part=by_part)


def hmlp_dims(cfg: ModelConfig) -> tuple[int, int, int, int]:
    """Channel widths of the 4 hMLP stages (the last is d_model)."""
    D = cfg.d_model
    return (max(D // 4, 16), max(D // 4, 16), max(D // 2, 16), D)


def _hmlp_params(cfg: ModelConfig) -> int:
    c1, c2, c3, c4 = hmlp_dims(cfg)
    p = 0
    p += 5 * 5 * 3 * c1 + c1 + 2 * c1  # stage 1: 5x5x3 pixels -> c1, LayerNorm
    p += 4 * c1 * c2 + c2 + 2 * c2  # stage 2: 2x2 merge
    p += 4 * c2 * c3 + c3 + 2 * c3  # stage 3
    p += 4 * c3 * c4 + c4 + 2 * c4  # stage 4, LayerNorm into d_model
    return p


def _flow_params(cfg: ModelConfig) -> int:
    F, M, D = cfg.flow_dim, cfg.mel_dim, cfg.d_model
    p = M * F + F  # input projection of x_t
    p += cfg.time_embed_dim * F + F  # flow-time embedding
    p += D * F + F  # condition projection
    block = 3 * F * F + 3 * F + F * F + F + F * F + F  # adaLN (shift, scale, gate) + MLP (2 linears)
    p += cfg.flow_depth * block
    p += 2 * F * F + 2 * F  # final adaLN (shift, scale)
    p += F * M + M  # output projection
    return p
