"""Softmax whose every row depends only on that row, on any machine (batch-invariant mode).

A library softmax is one call over many rows, and its exp is vectorized code for most elements
and scalar code for a tensor's tail, which round differently (measured on PyTorch's CPU SiLU,
GELU and sigmoid). Here each step is an operation IEEE 754 rounds exactly, elementwise:
max (exact in any order), +, -, *, /, round-to-integer and a bit-built power of two, summed
with `row_sum`'s fixed tree. An element's result is then a function of its row alone, whatever
the SIMD width, tail, thread split or CPU.
"""

from __future__ import annotations

import torch

from model.norm import row_sum

# Cody-Waite split of ln 2: k * _LN2_HI is exact for the |k| <= 126 used here.
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_LOG2E = 1.4426950408889634
# Below this exp is < 2e-35 and flushed to 0: it keeps 2**k a normal float (no denormals,
# whose handling a process may switch to flush-to-zero) and cannot move a softmax row whose
# maximum term is exp(0) = 1.
_MIN_ARG = -80.0
_TAYLOR = [1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0]  # 1/7! .. 1/0!


def exp_nonpositive(x: torch.Tensor) -> torch.Tensor:
    """exp(x) for float32 x <= 0 (larger x is clamped to 0), within 2 ulp of torch.exp.

    exp(x) = 2**k * exp(r), k = round(x / ln 2), |r| <= ln 2 / 2, exp(r) by its degree-7
    Taylor polynomial (truncation < 6e-9, under half an ulp)."""
    x = x.float().clamp(max=0.0)
    k = torch.round(x.clamp(min=_MIN_ARG) * _LOG2E)
    r = (x.clamp(min=_MIN_ARG) - k * _LN2_HI) - k * _LN2_LO
    p = torch.full_like(r, _TAYLOR[0])
    for c in _TAYLOR[1:]:
        p = p * r + c
    two_k = ((k.to(torch.int32) + 127) << 23).view(torch.float32)
    return torch.where(x < _MIN_ARG, 0.0, p * two_k)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim in float32, each row by a fixed sequence of exact operations."""
    x = x.float()
    e = exp_nonpositive(x - x.amax(dim=-1, keepdim=True))
    return e / row_sum(e)
