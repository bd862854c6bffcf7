"""Triton kernel for `model.kernels.rmsnorm` (imported lazily: see `_dispatch`)."""

import triton
import triton.language as tl


@triton.jit
def rms_norm_kernel(
    x_ptr,  # (M, D)
    w_ptr,  # (D,)
    out_ptr,  # (M, D)
    D,
    stride_xm,
    stride_xd,
    stride_om,
    stride_od,
    eps,
    BLOCK_D: tl.constexpr,
):
    """One program per row: sum of squares over D in fixed-order blocks, then scale the row."""
    row = tl.program_id(0)
    sq = tl.zeros((BLOCK_D,), dtype=tl.float32)  # per-lane partial sums, reduced once at the end
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + tl.arange(0, BLOCK_D)
        v = tl.load(x_ptr + row * stride_xm + offs * stride_xd, mask=offs < D, other=0.0).to(tl.float32)
        sq += v * v
    inv_rms = tl.rsqrt(tl.sum(sq, axis=0) / D + eps)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + tl.arange(0, BLOCK_D)
        mask = offs < D
        v = tl.load(x_ptr + row * stride_xm + offs * stride_xd, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = v * inv_rms * w
        tl.store(out_ptr + row * stride_om + offs * stride_od, y.to(out_ptr.dtype.element_ty), mask=mask)
