"""Output heads: text (the model's own stream), caption (the user's words) and the flow head.

The flow head is a MAR-style AdaLN MLP trained with rectified flow: it predicts the velocity
from noise to one position's mel frames (in unit space, [-1, 1]), conditioned on the trunk's
hidden state plus the embedding of the text token that position just emitted. Sampling is a
few Euler steps from noise that comes from the counter-based generator (model/rng.py).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.embeddings import sinusoidal
from model.linear import Linear
from model.norm import LayerNorm

Modulation = tuple[torch.Tensor, ...]  # (shift, scale, gate) of a block, (shift, scale) of the output


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class AdaLNBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = Linear(dim, 3 * dim)
        self.fc1 = Linear(dim, dim)
        self.fc2 = Linear(dim, dim)
        # start as identity: the gate is zero until training moves it (DiT's adaLN-Zero)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.modulated(x, self.modulation(F.silu(c)))

    def modulation(self, c_act: torch.Tensor) -> Modulation:
        """(shift, scale, gate) of silu(c): a function of the condition alone."""
        shift, scale, gate = self.ada(c_act).chunk(3, dim=-1)
        return shift, scale, gate

    def modulated(self, x: torch.Tensor, m: Modulation) -> torch.Tensor:
        shift, scale, gate = m
        return x + gate * self.fc2(F.silu(self.fc1(_modulate(self.norm(x), shift, scale))))


class FlowHead(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        W = cfg.flow_dim
        self.in_proj = Linear(cfg.mel_dim, W)
        self.t_proj = Linear(cfg.time_embed_dim, W)
        self.cond_proj = Linear(cfg.d_model, W)
        self.blocks = nn.ModuleList(AdaLNBlock(W) for _ in range(cfg.flow_depth))
        self.final_norm = LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.final_ada = Linear(W, 2 * W)
        self.out_proj = Linear(W, cfg.mel_dim)
        nn.init.zeros_(self.final_ada.weight)
        nn.init.zeros_(self.final_ada.bias)

    @property
    def _blocks(self) -> list[AdaLNBlock]:
        return cast(list[AdaLNBlock], list(self.blocks))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (N, mel_dim) at flow time t: (N,), cond: (N, D) -> predicted velocity (N, mel_dim)."""
        return self._velocity(x, self.modulations(self.condition(cond, t)))

    def condition(self, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The AdaLN condition (..., W) of `cond` (..., D) at flow times t (...,)."""
        return self.cond_proj(cond) + self.t_proj(sinusoidal(t, self.cfg.time_embed_dim, 1e-3, 10.0))

    def modulations(self, c: torch.Tensor) -> list[Modulation]:
        """Every block's modulation of condition c (..., W), then the output's."""
        c_act = F.silu(c)
        shift, scale = self.final_ada(c_act).chunk(2, dim=-1)
        return [*(block.modulation(c_act) for block in self._blocks), (shift, scale)]

    def _velocity(self, x: torch.Tensor, mods: list[Modulation]) -> torch.Tensor:
        h = self.in_proj(x)
        for block, m in zip(self._blocks, mods, strict=False):  # the last modulation is the output's
            h = block.modulated(h, m)
        shift, scale = mods[-1]
        return self.out_proj(_modulate(self.final_norm(h), shift, scale))

    def loss(self, cond: torch.Tensor, target: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Rectified flow: x_t = t*x1 + (1-t)*x0, regress v = x1 - x0. All (N, ...) rows."""
        x_t = t[:, None] * target + (1 - t[:, None]) * noise
        return F.mse_loss(self.velocity(x_t, t, cond), target - noise)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Euler integration from x0 = noise (N, mel_dim) at t=0 to t=1."""
        n, N = self.cfg.flow_steps, noise.shape[0]
        # every step's condition at once: it depends on cond and the step's time, not on x
        t = (torch.arange(n, device=noise.device, dtype=torch.float32) / n)[:, None].expand(n, N)
        # ... and so is every block's modulation: one GEMM per block over all steps, not one per step
        mods = self.modulations(self.condition(cond.expand(n, *cond.shape), t))  # each (n, N, W)
        per_step = [[tuple(m[i] for m in mod) for mod in mods] for i in range(n)]
        x = noise
        for i in range(n):
            x = x + self._velocity(x, per_step[i]) / n
        return x
