"""Mixture-of-experts FFN: SwiGLU experts stacked as tensors, softmax top-k routing.

Routing ties break toward the lower expert index (stable sort), so the same input picks the
same experts on every run and in every batch. Slot outputs are combined in slot order, the
same fixed order the Triton decode kernel uses. In batch-invariant mode the router softmax
and renormalization are built from exact elementwise operations (model/exact.py), so a
token's routing depends on its own logits alone, not on the softmax kernel's handling of
the other rows.

Experts run without a host sync and without a Python loop over experts (so the step can be
captured whole by torch.compile or a CUDA graph), formulated by mode and device:
- normal mode: one grouped GEMM (`torch._grouped_mm`) over the (token, slot) pairs sorted by
  expert; group offsets stay a device tensor. The same per-expert GEMMs as grouping by hand.
- deterministic mode on CUDA: the Triton gather+GEMV kernel (fixed reduction order, no atomics).
- deterministic mode elsewhere: fixed-shape GEMM tiles (model/linear.py). Eager on a CPU,
  pairs are grouped into per-expert tiles (`moe_grouped_rows`), which needs the per-expert
  counts on the host: a CPU tensor, so no device sync, but a Python loop over the experts
  used. Elsewhere (under torch.compile, or a device without Triton) up to one tile of tokens
  (decode) runs every expert on the whole tile and each pair picks its expert's row
  (`moe_dense_tiled`: no host read, no data-dependent shape). A row gets the same bits either
  way: the same (TILE, D) GEMM items. The trained router sends most of a decode step's tokens
  to one or two experts, so grouping runs ~50 rows where the dense tile runs E * TILE = 128:
  a B=16 deterministic step 57 -> 53 ms on a CPU, its host read and loop included.
`moe_gather` is the PyTorch gather+bmm formulation of the Triton kernel (a device without
Triton); on a CPU it copies K weight matrices per token and loses to the grouped GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.exact import softmax as exact_softmax
from model.kernels import moe_decode
from model.kernels._dispatch import triton_available
from model.linear import TILE, Linear
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
        """Run each token's chosen experts; combine slots in slot order."""
        w = weight.to(x.dtype)
        if self.batch_invariant:
            if x.is_cuda:
                # Triton gather+GEMV: fixed reduction order per (token, slot), no atomics
                return moe_decode(x, self.w_gate, self.w_up, self.w_down, idx, w)
            dense = x.shape[0] <= TILE and (x.device.type != "cpu" or torch.compiler.is_compiling())
            experts = moe_dense_tiled if dense else moe_grouped_rows
            return _combine(experts(x, self.w_gate, self.w_up, self.w_down, idx), w)
        if x.is_cuda and moe_decode_available(x) and idx.numel() <= self.cfg.n_experts:
            # decode: fewer (token, slot) pairs than experts, so gathering beats grouping
            return moe_decode(x, self.w_gate, self.w_up, self.w_down, idx, w)
        grouped = moe_grouped if grouped_mm_supported(x) else moe_gather
        return _combine(grouped(x, self.w_gate, self.w_up, self.w_down, idx), w)


@torch.library.custom_op("microturn::grouped_mm", mutates_args=())
def _grouped_mm_op(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    return torch._grouped_mm(a, b, offs=offs)


@_grouped_mm_op.register_fake
def _(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    return a.new_empty(a.shape[0], b.shape[-1])


def grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """(M, K) rows grouped by `offs` @ (G, K, N) -> (M, N). Under torch.compile through an opaque
    custom op: the fake (shape) function of `torch._grouped_mm` accepts bf16 only, the CPU
    kernel any float dtype."""
    if torch.compiler.is_compiling():
        return _grouped_mm_op(a, b, offs)
    return torch._grouped_mm(a, b, offs=offs)


def _sort_pairs(idx: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) expert ids -> (flat (token, slot) pair indices sorted by expert (stable), (E,)
    int32 end offset of each expert's group). Both stay on the device: no host sync."""
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(n_experts, dtype=torch.int32, device=idx.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
    return order, torch.cumsum(counts, 0, dtype=torch.int32)


def moe_grouped(
    x: torch.Tensor,  # (N, D)
    w_gate: torch.Tensor,  # (E, D, I)
    w_up: torch.Tensor,  # (E, D, I)
    w_down: torch.Tensor,  # (E, I, D)
    idx: torch.Tensor,  # (N, K)
) -> torch.Tensor:  # (N, K, D) each slot's expert output
    """Every (token, slot) pair through its expert as one grouped GEMM per projection, sorted by
    expert with device-side offsets: no host sync, no loop over experts, work = N*K rows."""
    N, K = idx.shape
    order, offs = _sort_pairs(idx, w_gate.shape[0])
    xs = x[order // K]  # (N*K, D) pairs grouped by expert
    h = F.silu(grouped_mm(xs, w_gate, offs)) * grouped_mm(xs, w_up, offs)
    ys = grouped_mm(h, w_down, offs)  # (N*K, D)
    out = torch.empty_like(ys)
    out[order] = ys  # back to (token, slot) order
    return out.view(N, K, -1)


def moe_grouped_rows(
    x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:  # (N, K, D)
    """`moe_grouped` in fixed-shape row tiles (batch-invariant; model/linear.py): each expert's
    pairs are zero-padded to whole `TILE`-row tiles of one buffer, and each expert multiplies
    its tiles as one batched GEMM of (TILE, D) items over its stride-0 weight. Each expert's
    tile count must be known on the host to slice its tiles: on a CPU that is a host read of a
    host tensor, not a device sync; on CUDA the Triton kernel replaces this."""
    N, K = idx.shape
    E, D, _ = w_gate.shape
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=E)
    tiles = [-(-c // TILE) for c in counts.tolist()]
    first = [0]
    for t in tiles[:-1]:
        first.append(first[-1] + t)
    # row of the tiled buffer for each pair in expert order: its expert's first tile row plus
    # its rank within the expert
    shift = torch.tensor(first, device=x.device) * TILE - (torch.cumsum(counts, 0) - counts)
    dst = torch.arange(N * K, device=x.device) + shift[flat[order]]
    n_tiles = first[-1] + tiles[-1]
    xt = x.new_zeros(n_tiles, TILE, D)
    xt.view(-1, D)[dst] = x[order // K]
    yt = torch.empty_like(xt)
    for e in range(E):
        if tiles[e]:
            a, b = first[e], first[e] + tiles[e]
            h = _swiglu_tiles(xt[a:b], w_gate[e], w_up[e])
            yt[a:b] = torch.bmm(h, w_down[e].expand(b - a, *w_down[e].shape))
    out = torch.empty(N * K, D, device=x.device, dtype=x.dtype)
    out[order] = yt.view(-1, D)[dst]
    return out.view(N, K, D)


def moe_dense_tiled(
    x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:  # (N, K, D)
    """`moe_grouped_rows` for at most `TILE` tokens (decode): the one tile of tokens through
    every expert (one batched GEMM of E (TILE, D) items per projection), then each pair picks
    its expert's row. No host read and no data-dependent shape; the same per-row GEMM items as
    grouping, so the same bits (tests/model/test_moe.py), at the cost of E tiles where
    grouping would run about N*K/TILE + E."""
    N = idx.shape[0]
    E, D, _ = w_gate.shape
    xt = x.new_zeros(TILE, D)
    xt[:N] = x
    xe = xt.expand(E, TILE, D)
    h = F.silu(torch.bmm(xe, w_gate)) * torch.bmm(xe, w_up)  # (E, TILE, I)
    y = torch.bmm(h, w_down)  # (E, TILE, D)
    return y[idx, torch.arange(N, device=x.device)[:, None]]  # (N, K, D)


def _swiglu_tiles(xt: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor) -> torch.Tensor:
    """silu(xt @ w_gate) * (xt @ w_up) for (T, TILE, D) tiles of one expert."""
    n = xt.shape[0]
    return F.silu(torch.bmm(xt, w_gate.expand(n, *w_gate.shape))) * torch.bmm(xt, w_up.expand(n, *w_up.shape))


def moe_gather(
    x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:  # (N, K, D)
    """Gather+bmm: each pair gathers its expert's weights and runs three GEMVs (sync-free; every
    pair the same arithmetic, so batch-invariant like `rowwise_matmul`)."""
    N, K = idx.shape
    flat = idx.reshape(-1)
    xp = x[:, None].expand(N, K, x.shape[1]).reshape(N * K, 1, x.shape[1])  # (N*K, 1, D)
    h = F.silu(torch.bmm(xp, w_gate[flat])) * torch.bmm(xp, w_up[flat])  # (N*K, 1, I)
    return torch.bmm(h, w_down[flat]).view(N, K, -1)


def grouped_mm_supported(x: torch.Tensor) -> bool:
    """`torch._grouped_mm` runs on CPU in any float dtype, on CUDA in bf16 on sm90+ only."""
    if not x.is_cuda:
        return True
    return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (9, 0)


def moe_decode_available(x: torch.Tensor) -> bool:
    """The Triton decode kernel can run on x's device."""
    return x.is_cuda and triton_available()


def _combine(slot_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_s weight[:, s] * slot_out[:, s] in slot order (explicit loop: a fixed reduction order)."""
    out = slot_out[:, 0] * weight[:, :1]
    for s in range(1, slot_out.shape[1]):
        out = out + slot_out[:, s] * weight[:, s : s + 1]
    return out
