"""MoE decode: gather each token's top-k SwiGLU experts and run them as GEMVs.

At decode time each token touches only K experts, so instead of grouping tokens per expert (whose
reduction order would depend on which other sessions share the batch) every (token, slot) pair
gathers its expert's weights directly. Slots are summed in their fixed order 0..K-1 and every
output element is owned by one program, so results are bitwise independent of batch composition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.kernels._dispatch import cdiv, check_triton_launch, use_triton

# Fixed, never autotuned or derived from the batch: the block sizes define the reduction order
# over D and I (tree sum inside a block, sequential across blocks), so changing them between calls
# would change the bits. 64 keeps the gathered (64, 64) weight tiles coalesced on GPU.
MOE_BLOCK_D = 64
MOE_BLOCK_I = 64


def _check_shapes(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    expert_idx: torch.Tensor,
    expert_weight: torch.Tensor,
) -> None:
    """Reject inconsistent inputs: the Triton kernels read raw pointers and would not notice."""
    T, D = x.shape
    E, _, I = w_gate.shape
    if w_gate.shape != (E, D, I) or w_up.shape != (E, D, I) or w_down.shape != (E, I, D):
        raise ValueError(
            f"expert weights must be w_gate/w_up (E, D, I) and w_down (E, I, D) with D={D}; got "
            f"{tuple(w_gate.shape)}, {tuple(w_up.shape)}, {tuple(w_down.shape)}"
        )
    if expert_idx.dim() != 2 or expert_idx.shape[0] != T or expert_weight.shape != expert_idx.shape:
        raise ValueError(
            f"expert_idx and expert_weight must both be (T={T}, K); got "
            f"{tuple(expert_idx.shape)} and {tuple(expert_weight.shape)}"
        )
    if expert_idx.dtype != torch.int64:
        raise TypeError(f"expert_idx must be int64, got {expert_idx.dtype}")


def moe_decode_reference(
    x: torch.Tensor,  # (T, D)
    w_gate: torch.Tensor,  # (E, D, I)
    w_up: torch.Tensor,  # (E, D, I)
    w_down: torch.Tensor,  # (E, I, D)
    expert_idx: torch.Tensor,  # (T, K) int64
    expert_weight: torch.Tensor,  # (T, K)
) -> torch.Tensor:  # (T, D), dtype of x
    """Plain PyTorch MoE decode; accumulates in fp32 and sums slots in order 0..K-1 like the kernel.

    Not batch-invariant: the batched GEMMs go through CPU BLAS, whose kernel choice depends on T.
    """
    _check_shapes(x, w_gate, w_up, w_down, expert_idx, expert_weight)
    xf = x.float()[:, None, :]  # (T, 1, D)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # (T, D)
    for s in range(expert_idx.shape[1]):
        e = expert_idx[:, s]  # (T,)
        gate = torch.bmm(xf, w_gate[e].float())  # (T, 1, I)
        up = torch.bmm(xf, w_up[e].float())  # (T, 1, I)
        y = torch.bmm(F.silu(gate) * up, w_down[e].float())[:, 0]  # (T, D)
        out = out + expert_weight[:, s, None].float() * y
    return out.to(x.dtype)


def moe_decode_triton(
    x: torch.Tensor,  # (T, D)
    w_gate: torch.Tensor,  # (E, D, I)
    w_up: torch.Tensor,  # (E, D, I)
    w_down: torch.Tensor,  # (E, I, D)
    expert_idx: torch.Tensor,  # (T, K) int64
    expert_weight: torch.Tensor,  # (T, K)
) -> torch.Tensor:  # (T, D), dtype of x
    """Two launches: gate/up GEMVs with fused SwiGLU per (pair, I-block), then down GEMVs per token.

    Expert ids are not range-checked (that would force a device sync on every decode step); the
    router's top-k guarantees 0 <= id < E.
    """
    _check_shapes(x, w_gate, w_up, w_down, expert_idx, expert_weight)
    check_triton_launch(x)
    from model.kernels._moe_decode_triton import moe_down_kernel, moe_gate_up_kernel

    T, D = x.shape
    K = expert_idx.shape[1]
    I = w_gate.shape[2]
    idx = expert_idx.contiguous()
    weight = expert_weight.contiguous()
    # fp32 intermediate: the kernel accumulates in fp32 and rounding h to bf16 would add error
    h = torch.empty((T * K, I), dtype=torch.float32, device=x.device)
    out = torch.empty_like(x)
    moe_gate_up_kernel[(T * K, cdiv(I, MOE_BLOCK_I))](
        x,
        w_gate,
        w_up,
        idx,
        h,
        D,
        I,
        K,
        x.stride(0),
        x.stride(1),
        *w_gate.stride(),
        *w_up.stride(),
        BLOCK_D=MOE_BLOCK_D,
        BLOCK_I=MOE_BLOCK_I,
    )
    moe_down_kernel[(T, cdiv(D, MOE_BLOCK_D))](
        h,
        w_down,
        idx,
        weight,
        out,
        D,
        I,
        K,
        *w_down.stride(),
        out.stride(0),
        out.stride(1),
        BLOCK_D=MOE_BLOCK_D,
        BLOCK_I=MOE_BLOCK_I,
    )
    return out


def moe_decode(
    x: torch.Tensor,  # (T, D)
    w_gate: torch.Tensor,  # (E, D, I)
    w_up: torch.Tensor,  # (E, D, I)
    w_down: torch.Tensor,  # (E, I, D)
    expert_idx: torch.Tensor,  # (T, K) int64
    expert_weight: torch.Tensor,  # (T, K)
    *,
    force_triton: bool = False,
) -> torch.Tensor:  # (T, D), dtype of x
    """Triton on CUDA (when installed), the PyTorch reference otherwise; `force_triton` is for tests."""
    fn = moe_decode_triton if use_triton(x, force_triton) else moe_decode_reference
    return fn(x, w_gate, w_up, w_down, expert_idx, expert_weight)
