"""nn.Linear with a batch-invariant mode.

A GEMM library picks its blocking, hence its summation order, from the number of rows: the
same token can round differently alone and in a batch of 32. In batch-invariant mode every
row gets the same arithmetic whatever else shares the call — the Triton fixed-tile matmul on
CUDA, and on CPU fixed-shape tiles: the rows are zero-padded to a multiple of `TILE` and
multiplied as one batched GEMM of identical (TILE, K) @ (K, N) items over a stride-0 expanded
weight (no copy). Every call the library sees then has the same shape whatever the batch, so
its blocking and reduction order are fixed; nearly the cost of one plain GEMM (a 1-row GEMM
per row, the previous formulation, was 3-5x a plain GEMM). The parameters are those of
nn.Linear, so checkpoints do not care about the mode.

What the CPU path guarantees, and what it does not: a row's result must not depend on where
it sits, neither on its row within a tile nor on its tile within the batched call, nor on
the other rows. That is not the argument of a per-row loop. A loop makes R separate calls,
each of which sees only its row (`per_item_matmul` also copies every item to an equally
aligned slot), so the only assumption is that the same call on the same inputs gives the same
bits. A GEMM is free to treat a row by its place (an edge tile, a scalar remainder loop) and
nothing in PyTorch's or the BLAS's contract says it will not. It does: with MKL on an AMD
EPYC and on this Intel AVX2 machine (PyTorch 2.13), rows round by their place when the output
width N is not a multiple of 4 (N = 1, 5, 7...; the 1-row batched formulation also for N = 37).
Every (K, N) the presets use is a multiple of 4 and measured row-invariant, so deterministic
serving holds on these machines, but that is an observed property of one BLAS, not a
guarantee; tests/model/_blas.py checks it for a model's shapes before a bitwise test relies on
it. A guaranteed CPU path would be one call per row (about 5 us each: a prefill of 400 rows
through ~60 projections is ~0.1 s) or a fixed tree of elementwise products (K times the
memory traffic); neither is paid yet.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from model.kernels import matmul

# CPU BLAS may take a different code path for a differently aligned operand; the allocator
# aligns fresh buffers to 64 bytes, so items padded to a multiple of 64 bytes all start aligned.
_ALIGN_BYTES = 64


def per_item_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B, n, K) @ (K, N) -> (B, n, N): one `torch.mm` per item, identical for every item and B.

    Each item is copied into its own 64-byte-aligned, equally strided slot of a fresh buffer, so
    the B calls differ only in the values they read: item b's result cannot depend on B or b,
    on any BLAS (a batched GEMM may group items; which way it goes differs between machines).
    One dispatch per item: for a few large items (the vocoder's sessions), not per-token rows.
    """
    B, n, K = x.shape
    per_item = n * K
    step = max(1, _ALIGN_BYTES // x.element_size())
    slot = -(-per_item // step) * step  # elements per item, rounded up to the alignment
    buf = x.new_zeros(B, slot)  # (B, slot)
    buf[:, :per_item] = x.reshape(B, per_item)
    items = [torch.mm(buf[b, :per_item].view(n, K), w) for b in range(B)]  # each (n, N)
    return torch.stack(items) if items else x.new_zeros(0, n, w.shape[1])


# Rows per fixed-shape GEMM item of the CPU batch-invariant path: a decode step of 16 sessions
# is one tile, and a GEMM of 16 rows runs near the speed of a large one.
TILE = 16


def rowwise_matmul(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(..., K) @ (K, N) [+ bias] with each row's result independent of the other rows."""
    if x.is_cuda:
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        out = matmul(rows, w)  # the kernel reads w's strides: no transpose copy
        out = out if bias is None else out + bias
        return out.view(*x.shape[:-1], w.shape[1])
    return tiled_matmul(x, w, bias)


def tiled_matmul(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(..., K) @ (K, N) [+ bias] on CPU as ceil(R / TILE) identical (TILE, K) GEMM items of one
    batched call over a stride-0 weight (R rows, the last tile zero-padded): the call's item
    shape never depends on R (see the module docstring for what that does and does not
    guarantee). Few calls: on small rows the dispatch is the cost."""
    K = x.shape[-1]
    R = x.numel() // K
    n_tiles = -(-R // TILE)
    if n_tiles * TILE == R and x.is_contiguous():
        tiles = x.view(n_tiles, TILE, K)
    else:
        tiles = x.new_zeros(n_tiles, TILE, K)
        tiles.view(-1, K)[:R] = x.reshape(R, K)
    wx = w.expand(n_tiles, *w.shape)  # (n_tiles, K, N) stride-0 view
    out = torch.bmm(tiles, wx) if bias is None else torch.baddbmm(bias, tiles, wx)
    if n_tiles * TILE != R:
        out = out.view(-1, w.shape[1])[:R]
    return out.view(*x.shape[:-1], w.shape[1])


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
