"""The interleaved sequence `[IN_0][OUT_0][IN_1][OUT_1]...` as tensors.

One builder serves streaming, the batched engine and training, so what the model sees when
it is stepped live is by construction what it sees in a teacher-forced pass.

IN_k  = 4 user-audio positions (2 dMel frames each), V video patches, user-text tokens,
        background tokens.
OUT_k = 4 model-out positions; slot j carries output j-1 (its text token and its 2 mel
        frames as dMel bins; slot 0 carries the previous turn's last output) and its hidden
        state produces output j.

Times (seconds since the session started) are when the content became available: an audio
position at the end of the audio it holds, the rest of IN_k at the end of the turn, output
slot j at the moment its audio will start playing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from model.config import BACKGROUND, MODEL_OUT, PAD_STREAM, USER_AUDIO, USER_TEXT, VIDEO, ModelConfig


@dataclass
class Positions:
    stream: torch.Tensor  # (B, T) int64 stream type (PAD_STREAM for ragged padding)
    time: torch.Tensor  # (B, T) float64 seconds
    pos: torch.Tensor  # (B, T) int64 absolute position in the session's sequence
    audio: torch.Tensor  # (B, T, F, M) int64 dMel bins (user_audio, model_out)
    text: torch.Tensor  # (B, T) int64 token (user_text, background, model_out)
    video: torch.Tensor  # (B, T) int64 index into `patches` (video), -1 elsewhere
    patches: torch.Tensor  # (N, 3, P, P) float32 pixels in [0, 1]

    @property
    def valid(self) -> torch.Tensor:
        return self.stream != PAD_STREAM

    @property
    def shape(self) -> tuple[int, int]:
        B, T = self.stream.shape
        return B, T

    def to(self, device: torch.device | str) -> Positions:
        return Positions(**{k: v.to(device) for k, v in self.__dict__.items()})


def empty_patches(cfg: ModelConfig) -> torch.Tensor:
    return torch.zeros(0, 3, cfg.patch_size, cfg.patch_size)


def input_positions(
    cfg: ModelConfig,
    turn: int,
    start_pos: int,
    audio_bins: torch.Tensor,  # (frames_per_turn, M) int64
    patches: torch.Tensor | None,  # (n_patches, 3, P, P) or None
    text_ids: list[int],
    bg_ids: list[int],
) -> Positions:
    """IN_k of one session as a (1, T) Positions."""
    P, Fp = cfg.positions_per_turn, cfg.frames_per_position
    t0 = turn * cfg.micro_turn_ms / 1000
    t_end = (turn + 1) * cfg.micro_turn_ms / 1000
    n_vid = 0 if patches is None else patches.shape[0]
    n_text, n_bg = len(text_ids), len(bg_ids)
    T = P + n_vid + n_text + n_bg
    stream = torch.tensor([USER_AUDIO] * P + [VIDEO] * n_vid + [USER_TEXT] * n_text + [BACKGROUND] * n_bg)
    time = torch.full((T,), t_end, dtype=torch.float64)
    time[:P] = t0 + torch.arange(1, P + 1, dtype=torch.float64) * cfg.position_ms / 1000
    audio = torch.zeros(T, Fp, cfg.n_mels, dtype=torch.long)
    audio[:P] = audio_bins.view(P, Fp, cfg.n_mels)
    text = torch.zeros(T, dtype=torch.long)
    text[P + n_vid :] = torch.tensor(text_ids + bg_ids, dtype=torch.long)
    video = torch.full((T,), -1, dtype=torch.long)
    video[P : P + n_vid] = torch.arange(n_vid)
    return Positions(
        stream=stream[None],
        time=time[None],
        pos=torch.arange(start_pos, start_pos + T)[None],
        audio=audio[None],
        text=text[None],
        video=video[None],
        patches=empty_patches(cfg) if patches is None else patches.float(),
    )


def output_position(
    cfg: ModelConfig, turn: int, slot: int, pos: int, prev_token: int, prev_bins: torch.Tensor
) -> Positions:
    """Output slot `slot` of OUT_k as a (1, 1) Positions; prev_bins: (F, M) int64."""
    t = (turn + 1) * cfg.micro_turn_ms / 1000 + slot * cfg.position_ms / 1000
    return Positions(
        stream=torch.tensor([[MODEL_OUT]]),
        time=torch.tensor([[t]], dtype=torch.float64),
        pos=torch.tensor([[pos]]),
        audio=prev_bins.view(1, 1, cfg.frames_per_position, cfg.n_mels).long(),
        text=torch.tensor([[prev_token]]),
        video=torch.tensor([[-1]]),
        patches=empty_patches(cfg),
    )


def concat(parts: list[Positions]) -> Positions:
    """Concatenate along time (same batch size); patch indices are re-based."""
    return _cat(_rebase_video(parts), dim=1)


def stack(rows: list[Positions], length: int = 0) -> Positions:
    """Ragged (1, T_i) rows -> one (B, max(T_i, length)) batch, right-padded with PAD_STREAM."""
    T = max(length, *(r.shape[1] for r in rows))
    pad_value = {"stream": PAD_STREAM, "video": -1}
    padded = [
        Positions(
            **{
                f.name: getattr(r, f.name)
                if f.name == "patches"
                else pad_time(getattr(r, f.name), T - r.shape[1], pad_value.get(f.name, 0))
                for f in fields(Positions)
            }
        )
        for r in _rebase_video(rows)
    ]
    return _cat(padded, dim=0)


def _rebase_video(parts: list[Positions]) -> list[Positions]:
    """Point each part's video indices into the concatenation of all parts' patches."""
    out, offset = [], 0
    for p in parts:
        out.append(replace(p, video=torch.where(p.video >= 0, p.video + offset, -1)))
        offset += p.patches.shape[0]
    return out


def _cat(parts: list[Positions], dim: int) -> Positions:
    """Concatenate every field; patches (N, ...) always along their first dimension."""
    return Positions(
        **{
            f.name: torch.cat([getattr(p, f.name) for p in parts], dim=0 if f.name == "patches" else dim)
            for f in fields(Positions)
        }
    )


def pad_time(x: torch.Tensor, n: int, value: float) -> torch.Tensor:
    """Append n positions of `value` along dim 1 of a (B, T, ...) tensor."""
    if n == 0:
        return x
    pad = torch.full((x.shape[0], n, *x.shape[2:]), value, dtype=x.dtype)
    return torch.cat([x, pad], dim=1)
