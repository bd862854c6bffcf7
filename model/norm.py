"""RMSNorm and LayerNorm with a batch-invariant mode.

The reduction is over D only, one row at a time. In batch-invariant mode RMSNorm runs the Triton
kernel on CUDA (one program per row, fixed reduction order); elsewhere both norms sum each row
with `row_sum`, a fixed tree of elementwise adds, instead of the library's reduction kernel,
whose blocking and threading are its own choice and may depend on how many rows share the call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.kernels import rms_norm


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (..., 1): the sum over D as a binary tree of elementwise adds, zero-padded to
    a power of two. Each add is one IEEE operation per element, so a row's sum depends only on
    the row: not on other rows, the thread count, the SIMD width or the CPU."""
    width = 1 << (x.shape[-1] - 1).bit_length()
    if width != x.shape[-1]:
        x = F.pad(x, (0, width - x.shape[-1]))
    while width > 1:  # one split and one add per level: on small rows the dispatch is the cost
        width //= 2
        low, high = x.chunk(2, dim=-1)
        x = low + high
    return x


class RMSNorm(nn.Module):
    batch_invariant: bool = False

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_invariant and x.is_cuda:
            return rms_norm(x.reshape(-1, x.shape[-1]), self.weight, self.eps).view_as(x)
        if not self.batch_invariant and x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one op: ~8 fewer dispatches
        xf = x.float()
        mean_sq = row_sum(xf * xf) / x.shape[-1] if self.batch_invariant else xf.pow(2).mean(-1, keepdim=True)
        return (xf * torch.rsqrt(mean_sq + self.eps)).type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters) whose batch-invariant mode sums rows with `row_sum`: the
    sum and the sum of squares of each row at once, one tree instead of two (the flow head runs
    ~100 small LayerNorms per micro-turn, where each level's dispatch is the cost)."""

    batch_invariant: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.batch_invariant:
            return super().forward(x)
        if len(self.normalized_shape) != 1:
            raise ValueError(f"batch-invariant LayerNorm normalizes the last dim only, got {self.normalized_shape}")
        xf = x.float()
        # both moments in one tree, in float64: the squares of float32 values are exact there and
        # E[x^2] - E[x]^2 loses nothing that matters (relative error ~1e-14 * (mean/std)^2)
        xd = xf.double()
        sums = row_sum(torch.stack([xd, xd * xd])) / x.shape[-1]  # (2, ..., 1)
        mean, mean_sq = sums[0], sums[1]
        var = (mean_sq - mean * mean).clamp(min=0.0)
        y = (xf - mean.float()) * torch.rsqrt(var.float() + self.eps)
        if self.weight is not None:
            y = y * self.weight.float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)
