"""The training objective: text, caption, flow and MoE-balance losses on one teacher-forced pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.interaction import InteractionModel
from model.train.dataset import PAD_WEIGHT, Example


def compute_losses(
    model: InteractionModel, batch: Example, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    out = model(batch.positions)
    h = out.hidden  # (B, T, D)
    losses: dict[str, torch.Tensor] = {}

    text_mask = batch.text_target >= 0
    losses["text"] = _weighted_ce(
        model.text_head(h[text_mask]), batch.text_target[text_mask], batch.text_weight[text_mask]
    )
    cap_mask = batch.caption_target >= 0
    cap = batch.caption_target[cap_mask]
    losses["caption"] = _weighted_ce(model.caption_head(h[cap_mask]), cap, torch.where(cap == 0, PAD_WEIGHT, 1.0))
    turn_target = batch.turn_target[text_mask]  # (N, 2)
    turn_valid = turn_target >= 0
    turn_logits = model.turn_head(h[text_mask]).float()  # (N, 2)
    losses["turn"] = (
        F.binary_cross_entropy_with_logits(turn_logits[turn_valid], turn_target[turn_valid])
        if bool(turn_valid.any())
        else turn_logits.sum() * 0.0
    )

    cond = model.flow_cond(h[text_mask], batch.text_target[text_mask])  # teacher-forced token
    target = batch.mel_target[text_mask]  # (N, mel_dim)
    noise = torch.randn(target.shape, generator=generator)
    # logit-normal flow times concentrate training where the velocity is hardest (SD3)
    t = torch.sigmoid(torch.randn(target.shape[0], generator=generator))
    losses["flow"] = model.flow.loss(cond, target, noise.to(target.device), t.to(target.device))
    losses["balance"] = out.balance_loss(cfg.n_experts, batch.positions.valid)
    w = cfg.loss_weights
    losses["total"] = sum(w.get(k, 0.0) * v for k, v in losses.items())  # type: ignore[assignment]
    return losses


def _weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if target.numel() == 0:
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    return (ce * weight).sum() / weight.sum()
