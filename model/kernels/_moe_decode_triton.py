"""Triton kernels for `model.kernels.moe_decode` (imported lazily: see `_dispatch`).

Both kernels reduce in a fixed order that depends only on D, I and the block sizes, never on the
number of tokens, and each output element is written by exactly one program (no atomics, no
split-K), so a token's result is bitwise identical alone or batched.
"""

import triton
import triton.language as tl


@triton.jit
def moe_gate_up_kernel(
    x_ptr,  # (T, D)
    w_gate_ptr,  # (E, D, I)
    w_up_ptr,  # (E, D, I)
    idx_ptr,  # (T, K) int64, contiguous
    h_ptr,  # (T * K, I) fp32, contiguous
    D,
    I,
    K,
    stride_xt,
    stride_xd,
    stride_ge,
    stride_gd,
    stride_gi,
    stride_ue,
    stride_ud,
    stride_ui,
    BLOCK_D: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    """h[p, i-block] = silu(x[t] @ w_gate[e]) * (x[t] @ w_up[e]) for pair p = t * K + s."""
    pair = tl.program_id(0)
    pid_i = tl.program_id(1)
    t = pair // K
    e = tl.load(idx_ptr + pair)  # int64, so e * stride stays in range for large expert stacks
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)  # (BLOCK_I,)
    mask_i = offs_i < I
    acc_gate = tl.zeros((BLOCK_I,), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_I,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        mask_d = offs_d < D
        xv = tl.load(x_ptr + t * stride_xt + offs_d * stride_xd, mask=mask_d, other=0.0).to(tl.float32)
        mask_w = mask_d[:, None] & mask_i[None, :]  # (BLOCK_D, BLOCK_I)
        wg = tl.load(
            w_gate_ptr + e * stride_ge + offs_d[:, None] * stride_gd + offs_i[None, :] * stride_gi,
            mask=mask_w,
            other=0.0,
        ).to(tl.float32)
        wu = tl.load(
            w_up_ptr + e * stride_ue + offs_d[:, None] * stride_ud + offs_i[None, :] * stride_ui,
            mask=mask_w,
            other=0.0,
        ).to(tl.float32)
        # GEMV: a single row is below tl.dot's 16-row minimum, so reduce products explicitly.
        acc_gate += tl.sum(xv[:, None] * wg, axis=0)
        acc_up += tl.sum(xv[:, None] * wu, axis=0)
    h = acc_gate * tl.sigmoid(acc_gate) * acc_up
    tl.store(h_ptr + pair * I + offs_i, h, mask=mask_i)


@triton.jit
def moe_down_kernel(
    h_ptr,  # (T * K, I) fp32, contiguous
    w_down_ptr,  # (E, I, D)
    idx_ptr,  # (T, K) int64, contiguous
    weight_ptr,  # (T, K) float, contiguous
    out_ptr,  # (T, D)
    D,
    I,
    K,
    stride_de,
    stride_di,
    stride_dd,
    stride_ot,
    stride_od,
    BLOCK_D: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    """out[t, d-block] = sum over slots s in order 0..K-1 of weight[t, s] * (h[t*K+s] @ w_down[e])."""
    t = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    mask_d = offs_d < D
    out = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for s in range(K):
        pair = t * K + s
        e = tl.load(idx_ptr + pair)
        gate = tl.load(weight_ptr + pair).to(tl.float32)
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for i0 in range(0, I, BLOCK_I):
            offs_i = i0 + tl.arange(0, BLOCK_I)  # (BLOCK_I,)
            mask_i = offs_i < I
            hv = tl.load(h_ptr + pair * I + offs_i, mask=mask_i, other=0.0)
            wd = tl.load(
                w_down_ptr + e * stride_de + offs_i[:, None] * stride_di + offs_d[None, :] * stride_dd,
                mask=mask_i[:, None] & mask_d[None, :],
                other=0.0,
            ).to(tl.float32)  # (BLOCK_I, BLOCK_D)
            acc += tl.sum(hv[:, None] * wd, axis=0)
        out += gate * acc
    tl.store(out_ptr + t * stride_ot + offs_d * stride_od, out.to(out_ptr.dtype.element_ty), mask=mask_d)
