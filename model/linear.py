"""nn.Linear with a batch-invariant mode.

A GEMM library picks its blocking, hence its summation order, from the number of rows: the
same token can round differently alone and in a batch of 32. In batch-invariant mode every
row gets the same arithmetic whatever else shares the call — the Triton fixed-tile matmul on
CUDA, and on CPU one 1-row GEMM per row (a batched GEMM over a stride-0 expanded weight, no
copy). The parameters are those of nn.Linear, so checkpoints do not care about the mode.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from model.kernels import matmul


def rowwise_matmul(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(..., K) @ (K, N) [+ bias] with each row's result independent of the other rows."""
    lead = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1])  # (R, K)
    R = rows.shape[0]
    if x.is_cuda:
        out = matmul(rows.contiguous(), w)  # the kernel reads w's strides: no transpose copy
        out = out if bias is None else out + bias
    else:
        wx = w.expand(R, *w.shape)  # (R, K, N) stride-0 view
        if bias is None:
            out = torch.bmm(rows[:, None], wx)[:, 0]
        else:
            out = torch.baddbmm(bias.expand(R, 1, -1), rows[:, None], wx)[:, 0]
    return out.reshape(*lead, w.shape[1])


@runtime_checkable
class BatchInvariant(Protocol):
    """Any module with its own batch-invariant path (MoE, RMSNorm)."""

    batch_invariant: bool


class Linear(nn.Linear):
    batch_invariant: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_invariant:
            return rowwise_matmul(x, self.weight.t(), self.bias)
        return F.linear(x, self.weight, self.bias)


def set_batch_invariant(module: nn.Module, enabled: bool) -> None:
    """Switch every batch-aware submodule of `module` (Linear, MoE, RMSNorm) to batch-invariant mode."""
    for m in module.modules():
        if isinstance(m, Linear | BatchInvariant):
            m.batch_invariant = enabled
