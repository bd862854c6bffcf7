"""Batch-invariant matmul: a row's result never depends on how many other rows share the call.

cuBLAS picks tile shapes and split-K by problem size, so the same row can round differently at
M=1 and M=8. Here the tiles are fixed and each program runs the whole K loop in order, so every
output element sees the same reduction whatever M is.
"""

from __future__ import annotations

import torch

from model.kernels._dispatch import cdiv, check_triton_launch, use_triton

# Fixed, never autotuned or chosen from M: BLOCK_K sets the reduction order over K and must not
# change between calls; BLOCK_M/BLOCK_N are pinned so one compiled variant serves every batch.
# BLOCK_M = 16 is tl.dot's minimum and decode batches are small, so larger M tiles would be padding.
MATMUL_BLOCK_M = 16
MATMUL_BLOCK_N = 64
MATMUL_BLOCK_K = 32


def _check_shapes(x: torch.Tensor, w: torch.Tensor) -> None:
    """Reject mismatched operands: the Triton kernel reads raw pointers and would not notice."""
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"expected x (M, K) and w (K, N); got {tuple(x.shape)} and {tuple(w.shape)}")
    if x.dtype != w.dtype:
        raise TypeError(f"x and w must share a dtype; got {x.dtype} and {w.dtype}")


def matmul_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # (M, K) @ (K, N) -> (M, N)
    """Plain `x @ w`: the CPU path and the accuracy oracle for the kernel.

    Not batch-invariant: CPU BLAS picks kernels by M, so a row's bits can change with the batch.
    """
    _check_shapes(x, w)
    return x @ w


def bi_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # (M, K) @ (K, N) -> (M, N)
    """Triton matmul with fixed tiles and no split-K; fp32 accumulation, output in x's dtype."""
    _check_shapes(x, w)
    check_triton_launch(x)
    from model.kernels._matmul_triton import bi_matmul_kernel

    M, K = x.shape
    N = w.shape[1]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    bi_matmul_kernel[(cdiv(M, MATMUL_BLOCK_M), cdiv(N, MATMUL_BLOCK_N))](
        x,
        w,
        out,
        M,
        N,
        K,
        x.stride(0),
        x.stride(1),
        w.stride(0),
        w.stride(1),
        out.stride(0),
        out.stride(1),
        BLOCK_M=MATMUL_BLOCK_M,
        BLOCK_N=MATMUL_BLOCK_N,
        BLOCK_K=MATMUL_BLOCK_K,
        # fp32 operands would silently drop to TF32 on GPU; 16-bit operands ignore this setting
        INPUT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
    )
    return out


def matmul(x: torch.Tensor, w: torch.Tensor, *, force_triton: bool = False) -> torch.Tensor:
    """Triton on CUDA (when installed), `x @ w` otherwise; `force_triton` is for tests."""
    return bi_matmul(x, w) if use_triton(x, force_triton) else matmul_reference(x, w)
