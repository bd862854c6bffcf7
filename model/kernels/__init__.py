"""Batch-invariant kernels for deterministic serving (DESIGN.md §6).

Each kernel has a Triton implementation, a plain PyTorch reference and a dispatcher that picks
Triton for CUDA tensors and the reference otherwise. Importing this package never imports triton
and never needs CUDA.
"""

from model.kernels._dispatch import triton_available
from model.kernels.matmul import bi_matmul, matmul, matmul_reference
from model.kernels.moe_decode import moe_decode, moe_decode_reference, moe_decode_triton
from model.kernels.rmsnorm import rms_norm, rms_norm_reference, rms_norm_triton

__all__ = [
    "bi_matmul",
    "matmul",
    "matmul_reference",
    "moe_decode",
    "moe_decode_reference",
    "moe_decode_triton",
    "rms_norm",
    "rms_norm_reference",
    "rms_norm_triton",
    "triton_available",
]
