"""The one premise a CPU bitwise batch-invariance test cannot avoid (model/linear.py).

On CPU, batch-invariant Linear and MoE experts run `rowwise_matmul`: one batched GEMM of
fixed-shape 16-row tiles. Whether the BLAS computes every row alike wherever it sits is the BLAS's
business, not a guarantee of the code, and on some shapes it does not (MKL: output widths that
are not a multiple of 4). A bitwise test of a whole model checks this premise for the model's
own weight shapes first and skips, naming the shape, where it does not hold.
"""

from __future__ import annotations

import torch
from torch import nn

from model.linear import Linear, rowwise_matmul
from model.moe import MoE


def weight_shapes(model: nn.Module) -> set[tuple[int, int, bool]]:
    """(K, N, has bias) of every matrix `rowwise_matmul` multiplies by in `model`."""
    shapes: set[tuple[int, int, bool]] = set()
    for m in model.modules():
        if isinstance(m, Linear):
            shapes.add((m.in_features, m.out_features, m.bias is not None))
        if isinstance(m, MoE):
            _, D, inner = m.w_gate.shape
            shapes |= {(D, inner, False), (inner, D, False)}
    return shapes


@torch.no_grad()
def batched_gemm_breaks_rows(model: nn.Module, batches: tuple[int, ...] = (2, 5, 16, 37)) -> str | None:
    """None if, for every weight shape of `model`, each row of a batched `rowwise_matmul` is
    bitwise the row computed alone on this machine; else which shape and batch size is not."""
    g = torch.Generator().manual_seed(0)
    for K, N, has_bias in sorted(weight_shapes(model)):
        w = torch.randn(K, N, generator=g)
        bias = torch.randn(N, generator=g) if has_bias else None
        for R in batches:
            x = torch.randn(R, K, generator=g)
            together = rowwise_matmul(x, w, bias)
            for r in range(R):
                if not torch.equal(rowwise_matmul(x[r : r + 1].clone(), w, bias)[0], together[r]):
                    return f"this CPU's batched GEMM rounds row {r} of {R} differently for (K={K}, N={N})"
    return None
