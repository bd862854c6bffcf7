"""Bag-of-embeddings input layer (DESIGN.md §5).

Every position of the interleaved sequence is the sum of
  content  (dMel tables for audio, text table for tokens, hMLP for a video patch; a model-out
            position carries both its previous text token and its previous mel frames),
  stream   (which stream the position belongs to), and
  time     (sinusoidal features of seconds since the session started, projected),
so the model has a direct sense of elapsed time however the streams interleave.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import BACKGROUND, MODEL_OUT, N_STREAMS, USER_AUDIO, USER_TEXT, VIDEO, ModelConfig
from model.linear import Linear
from model.positions import Positions
from model.vision import HMLP


def sinusoidal(t: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """(...,) -> (..., dim) sin/cos features with geometrically spaced periods (in float64)."""
    half = dim // 2
    periods = min_period * (max_period / min_period) ** (torch.arange(half, dtype=torch.float64) / max(half - 1, 1))
    ang = t.to(torch.float64)[..., None] * (2 * math.pi / periods.to(t.device))
    return torch.cat([ang.sin(), ang.cos()], dim=-1).float()


# Session time spans 50 ms positions to multi-hour calls.
TIME_MIN_PERIOD_S = 0.1
TIME_MAX_PERIOD_S = 20000.0


class InputEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        F_, M, Q = cfg.frames_per_position, cfg.n_mels, cfg.dmel_bins
        # one table per (frame, mel channel), summed: the dMel paper's concat+project
        self.dmel = nn.EmbeddingBag(F_ * M * Q, cfg.d_model, mode="sum")
        self.text = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.stream = nn.Embedding(N_STREAMS, cfg.d_model)
        self.time = Linear(cfg.time_embed_dim, cfg.d_model)
        self.vision = HMLP(cfg)
        # table offset of each (frame, channel): bins index into their own 16-row table
        self.dmel_offset: torch.Tensor
        self.register_buffer("dmel_offset", torch.arange(F_ * M).view(F_, M) * Q, persistent=False)
        for emb in (self.dmel, self.text, self.stream):
            nn.init.normal_(emb.weight, std=0.02)

    def forward(self, p: Positions) -> torch.Tensor:
        B, T = p.stream.shape
        D = self.cfg.d_model
        x = self.stream(p.stream) + self.time(
            sinusoidal(p.time, self.cfg.time_embed_dim, TIME_MIN_PERIOD_S, TIME_MAX_PERIOD_S)
        )  # (B, T, D)
        # every table is looked up at every position and masked, instead of indexing the
        # positions of each kind: no data-dependent shape, no host sync (a compiled decode step
        # stays one graph); the non-audio positions' bins are 0 and text ids valid, so it's safe
        zero = x.new_zeros(())
        audio = ((p.stream == USER_AUDIO) | (p.stream == MODEL_OUT))[..., None]
        bins = (p.audio + self.dmel_offset).view(B * T, -1)  # (B*T, F*M)
        content = torch.where(audio, self.dmel(bins).view(B, T, D), zero)
        text = ((p.stream == USER_TEXT) | (p.stream == BACKGROUND) | (p.stream == MODEL_OUT))[..., None]
        content = torch.where(text, content + self.text(p.text), content)
        if p.patches.shape[0]:  # a static shape: no frame, no hMLP
            video = (p.stream == VIDEO)[..., None]
            content = torch.where(video, self.vision(p.patches)[p.video.clamp(min=0)], content)
        return x + content

    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.text.weight)
