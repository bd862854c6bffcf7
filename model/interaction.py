"""The interaction model: bag-of-embeddings input, a MoE transformer trunk, four heads.

`forward(positions)` without a cache is the teacher-forced pass over whole interleaved
sequences (training, evaluation); with a `KVCache` and slot ids it appends a chunk to each
row's session (streaming and the batched engine). Both run the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.attention import Attention, CacheContext, KVCache, gqa_mask, rope_angles
from model.config import ModelConfig
from model.embeddings import InputEmbedding
from model.heads import FlowHead
from model.linear import Linear, set_batch_invariant
from model.moe import MoE, Routing, balance_loss
from model.norm import RMSNorm
from model.positions import Positions


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.moe = MoE(cfg)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        pos: torch.Tensor,
        valid: torch.Tensor,
        ctx: CacheContext | None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Routing]:
        x = x + self.attn(self.attn_norm(x), rope, pos, valid, ctx, mask)
        B, T, D = x.shape
        y, routing = self.moe(self.ffn_norm(x).view(B * T, D))
        return x + y.view(B, T, D), routing


@dataclass
class TrunkOutput:
    hidden: torch.Tensor  # (B, T, D) after the final norm
    routing: list[Routing]  # one per layer, over the B*T flattened tokens

    def balance_loss(self, n_experts: int, valid: torch.Tensor) -> torch.Tensor:
        flat = valid.reshape(-1)
        return torch.stack([balance_loss(r, n_experts, flat) for r in self.routing]).mean()


class InteractionModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = InputEmbedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.text_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.caption_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # turn state at an output position: logits of {own voice active now, onset within the
        # next few positions} (voice-activity projection); trained from the alignments
        self.turn_head = Linear(cfg.d_model, 2)
        self.flow = FlowHead(cfg)
        self.set_batch_invariant(cfg.deterministic)

    def forward(
        self,
        p: Positions,
        cache: KVCache | None = None,
        slots: torch.Tensor | None = None,
        *,
        rows: slice | list[int] | None = None,
        kv_len: int | None = None,
        lens: tuple[list[int], list[int]] | None = None,
    ) -> TrunkOutput:
        """`rows`, `kv_len`, `lens` (q_lens, kv_lens; batch-invariant mode): what the caller
        knows on the host about the slots (CacheContext.begin)."""
        valid = p.valid
        ctx = None
        if cache is not None:
            if slots is None:
                raise ValueError("slots: a cached forward needs the cache slot of every row")
            q_lens, kv_lens = lens if lens is not None else (None, None)
            ctx = CacheContext.begin(
                cache, slots, p.pos, valid, rows=rows, kv_len=kv_len, q_lens=q_lens, kv_lens=kv_lens
            )
        x = self.embed(p)  # (B, T, D)
        rope = rope_angles(p.pos, self.cfg.head_dim, self.cfg.rope_theta)
        mask = None  # built once here for every layer; batch-invariant attention builds its own
        if not self.runs_batch_invariant:
            kpos = torch.where(valid, p.pos, -1) if ctx is None else ctx.kpos
            rep = self.cfg.n_heads // self.cfg.n_kv_heads
            mask = gqa_mask(p.pos, kpos, valid, self.cfg.n_sinks, self.cfg.window, rep)
        routing = []
        for block in self.blocks:
            x, r = block(x, rope, p.pos, valid, ctx, mask)
            routing.append(r)
        return TrunkOutput(hidden=self.norm(x), routing=routing)

    @property
    def runs_batch_invariant(self) -> bool:
        """Deterministic serving is on (`set_batch_invariant`). Not named `batch_invariant`: that
        would make the model itself a `BatchInvariant` module for `set_batch_invariant`."""
        return bool(self.blocks[0].attn.batch_invariant)  # type: ignore[union-attr]

    def set_batch_invariant(self, enabled: bool) -> None:
        """Deterministic serving: every row's arithmetic independent of the batch (model/linear.py)."""
        set_batch_invariant(self, enabled)

    def flow_cond(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The flow head's condition: hidden state plus the embedding of the emitted token."""
        return hidden + self.embed.embed_text(tokens)
