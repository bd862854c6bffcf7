"""Grouped-query attention with RoPE, a sliding window with attention sinks, and a ring KV cache.

Keys are cached already rotated at their absolute sequence position, so streaming a
session chunk by chunk computes exactly what one teacher-forced pass over the whole
interleaved sequence computes: a query at position i sees the first `n_sinks` positions
and the last `window` positions up to and including i.

The cache is preallocated for a pool of slots: `(layers, slots, kv_heads, n_sinks + window,
head_dim)`. Sink positions live in the first `n_sinks` entries forever; every later
position p lives at `n_sinks + (p - n_sinks) % window`, overwriting the position that just
left the window. Memory per session is bounded, so a call never ends at a context limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.linear import Linear


@dataclass
class KVCache:
    """Static per-slot KV storage; `pos` holds each entry's absolute position (-1 = empty)."""

    k: torch.Tensor  # (L, S, Hkv, C, hd)
    v: torch.Tensor  # (L, S, Hkv, C, hd)
    pos: torch.Tensor  # (S, C) int64
    length: torch.Tensor  # (S,) int64: next absolute position of each slot
    n_sinks: int
    window: int

    @classmethod
    def allocate(
        cls, cfg: ModelConfig, slots: int, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> KVCache:
        shape = (cfg.n_layers, slots, cfg.n_kv_heads, cfg.cache_len, cfg.head_dim)
        return cls(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            pos=torch.full((slots, cfg.cache_len), -1, device=device, dtype=torch.long),
            length=torch.zeros(slots, device=device, dtype=torch.long),
            n_sinks=cfg.n_sinks,
            window=cfg.window,
        )

    @property
    def slots(self) -> int:
        return self.pos.shape[0]

    def reset(self, slot: int) -> None:
        """Forget a slot entirely: nothing of its previous session stays visible."""
        self.k[:, slot].zero_()
        self.v[:, slot].zero_()
        self.pos[slot].fill_(-1)
        self.length[slot] = 0

    def ring_index(self, pos: torch.Tensor) -> torch.Tensor:
        return torch.where(pos < self.n_sinks, pos, self.n_sinks + (pos - self.n_sinks) % self.window)

    def write_mask(self, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Which new tokens to store: a chunk longer than the window keeps only its newest
        `window` positions, so no two writes of one chunk land on the same entry."""
        newest = torch.where(valid, pos, -1).amax(dim=1, keepdim=True)  # (B, 1)
        return valid & ((pos < self.n_sinks) | (pos > newest - self.window))

    def write(
        self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor
    ) -> None:
        """k, v: (B, Hkv, T, hd) for rows `slots` (B,); pos, keep: (B, T)."""
        b, t = keep.nonzero(as_tuple=True)
        if b.numel() == 0:
            return
        idx = self.ring_index(pos[b, t])
        self.k[layer, slots[b], :, idx] = k[b, :, t]
        self.v[layer, slots[b], :, idx] = v[b, :, t]

    def commit(self, slots: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor) -> None:
        """After every layer has written a chunk: record positions and advance lengths."""
        b, t = keep.nonzero(as_tuple=True)
        self.pos[slots[b], self.ring_index(pos[b, t])] = pos[b, t]
        valid_pos = torch.where(keep, pos + 1, 0).amax(dim=1)  # (B,)
        self.length[slots] = torch.maximum(self.length[slots], valid_pos)


def rope_angles(pos: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (B, 1, T, hd/2). Angles in float64: positions grow without bound in
    long calls and float32 would lose the phase of the high frequencies."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float64) / head_dim)
    ang = pos.to(torch.float64)[..., None] * inv_freq  # (B, T, hd/2)
    return ang.cos().float()[:, None], ang.sin().float()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, hd); rotates interleaved-by-halves pairs."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def attention_mask(qpos: torch.Tensor, kpos: torch.Tensor, n_sinks: int, window: int) -> torch.Tensor:
    """(B, 1, Tq, Tk) bool: causal, within the window or a sink, and only real keys (kpos >= 0)."""
    q = qpos[:, :, None]
    k = kpos[:, None, :]
    allowed = (k >= 0) & (k <= q) & ((k < n_sinks) | (q - k < window))
    return allowed[:, None]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        rope: tuple[torch.Tensor, torch.Tensor],
        pos: torch.Tensor,  # (B, T) absolute positions
        valid: torch.Tensor,  # (B, T) real tokens (False = ragged padding)
        cache: KVCache | None = None,
        slots: torch.Tensor | None = None,  # (B,) cache slot of each row
        keep: torch.Tensor | None = None,  # (B, T) which new tokens the cache stores
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.wv(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)

        kpos_new = torch.where(valid, pos, -1)
        if cache is not None:
            assert slots is not None and keep is not None
            k_all = torch.cat([cache.k[self.layer, slots], k], dim=2)  # (B, Hkv, C + T, hd)
            v_all = torch.cat([cache.v[self.layer, slots], v], dim=2)
            kpos = torch.cat([cache.pos[slots], kpos_new], dim=1)  # (B, C + T)
            n_cached = cache.pos.shape[1]
        else:
            k_all, v_all, kpos, n_cached = k, v, kpos_new, 0
        mask = attention_mask(pos, kpos, self.cfg.n_sinks, self.cfg.window)
        # Padding queries see only themselves, so no row is fully masked (SDPA would give NaN).
        eye = torch.eye(T, dtype=torch.bool, device=x.device)
        mask[..., n_cached:] |= eye & ~valid[:, None, :, None]

        # GQA without copying the cache: fold each kv head's query heads into its query rows.
        rep = self.n_heads // self.n_kv
        qg = q.reshape(B, self.n_kv, rep * T, self.hd)  # (B, Hkv, rep*T, hd)
        mask = mask.repeat(1, 1, rep, 1)  # (B, 1, rep*T, Tk)
        y = F.scaled_dot_product_attention(qg, k_all, v_all, attn_mask=mask)
        y = y.view(B, self.n_heads, T, self.hd)  # (B, H, T, hd)

        if cache is not None:
            assert slots is not None and keep is not None
            cache.write(self.layer, slots, k, v, pos, keep)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))
