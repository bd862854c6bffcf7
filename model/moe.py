"""Mixture-of-experts FFN: SwiGLU experts stacked as tensors, softmax top-k routing.

Routing ties break toward the lower expert index (stable sort), so the same input picks the
same experts on every run and in every batch. Slot outputs are combined in slot order, the
same fixed order the Triton decode kernel uses. In batch-invariant mode the router softmax
and renormalization are built from exact elementwise operations (model/exact.py), so a
token's routing depends on its own logits alone, not on the softmax kernel's handling of
the other rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.exact import softmax as exact_softmax
from model.kernels import moe_decode
from model.linear import Linear, rowwise_matmul
from model.norm import row_sum


@dataclass
class Routing:
    idx: torch.Tensor  # (N, K) int64 expert of each slot
    weight: torch.Tensor  # (N, K) renormalized top-k probabilities
    probs: torch.Tensor  # (N, E) full softmax, for the balance loss


def route(logits: torch.Tensor, top_k: int, exact: bool = False) -> Routing:
    """Softmax over experts, then top-k with a deterministic tie-break, then renormalize.
    `exact`: each row by exact elementwise operations alone (batch-invariant mode)."""
    probs = exact_softmax(logits) if exact else logits.float().softmax(dim=-1)  # (N, E)
    # stable descending sort keeps equal probabilities in index order: ties go to the lower index
    top_p, top_i = torch.sort(probs, dim=-1, descending=True, stable=True)
    top_p, top_i = top_p[:, :top_k], top_i[:, :top_k]
    weight = top_p / (row_sum(top_p) if exact else top_p.sum(dim=-1, keepdim=True))
    return Routing(idx=top_i, weight=weight, probs=probs)


def balance_loss(r: Routing, n_experts: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Switch-Transformer load-balance loss: E * sum_e (fraction routed to e) * (mean prob of e).
    Equals 1 for perfectly uniform routing."""
    probs, idx = r.probs, r.idx
    if valid is not None:
        probs, idx = probs[valid], idx[valid]
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    counts = torch.zeros(n_experts, device=probs.device, dtype=probs.dtype)
    counts.scatter_add_(0, idx.reshape(-1), torch.ones(idx.numel(), device=probs.device, dtype=probs.dtype))
    frac = counts / idx.numel()
    return n_experts * (frac * probs.mean(dim=0)).sum()


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate = Linear(d_model, hidden, bias=False)
        self.up = Linear(d_model, hidden, bias=False)
        self.down = Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoE(nn.Module):
    batch_invariant: bool = False  # see model/linear.py; set by set_batch_invariant

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        E, D, I = cfg.n_experts, cfg.d_model, cfg.expert_dim
        self.router = Linear(D, E, bias=False)
        self.w_gate = nn.Parameter(torch.empty(E, D, I))  # (E, D, I)
        self.w_up = nn.Parameter(torch.empty(E, D, I))  # (E, D, I)
        self.w_down = nn.Parameter(torch.empty(E, I, D))  # (E, I, D)
        self.shared = SwiGLU(D, cfg.shared_expert_dim) if cfg.shared_expert_dim > 0 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        D, I = self.cfg.d_model, self.cfg.expert_dim
        nn.init.normal_(self.w_gate, std=D**-0.5)
        nn.init.normal_(self.w_up, std=D**-0.5)
        nn.init.normal_(self.w_down, std=I**-0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        """x: (N, D) flattened tokens -> (N, D), plus the routing (for the balance loss)."""
        r = route(self.router(x), self.cfg.top_k, exact=self.batch_invariant)
        out = self.experts(x, r.idx, r.weight)
        if self.shared is not None:
            out = out + self.shared(x)
        return out, r

    def experts(self, x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Run each token's chosen experts, grouped by expert; combine slots in slot order."""
        if self.batch_invariant and x.is_cuda:
            # Triton gather+GEMV: fixed reduction order per (token, slot), no atomics
            return moe_decode(x, self.w_gate, self.w_up, self.w_down, idx, weight.to(x.dtype))
        mm = rowwise_matmul if self.batch_invariant else torch.matmul
        N, K = idx.shape
        slot_out = x.new_zeros(N, K, x.shape[1])  # (N, K, D)
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.cfg.n_experts).tolist()
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            sel = order[start : start + n]  # flat (token, slot) indices routed to e
            start += n
            xe = x[sel // K]  # (n, D)
            h = F.silu(mm(xe, self.w_gate[e])) * mm(xe, self.w_up[e])  # (n, I)
            slot_out.view(N * K, -1)[sel] = mm(h, self.w_down[e])
        return _combine(slot_out, weight.to(x.dtype))


def _combine(slot_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_s weight[:, s] * slot_out[:, s] in slot order (explicit loop: a fixed reduction order)."""
    out = slot_out[:, 0] * weight[:, :1]
    for s in range(1, slot_out.shape[1]):
        out = out + slot_out[:, s] * weight[:, s : s + 1]
    return out
