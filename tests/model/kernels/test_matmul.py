"""Batch-invariant matmul: Triton (interpreter on CPU) vs `x @ w`, and rows independent of M."""

import importlib

import pytest
import torch

from model.kernels import bi_matmul, matmul, matmul_reference
from model.kernels.matmul import MATMUL_BLOCK_K, MATMUL_BLOCK_M, MATMUL_BLOCK_N
from tests.model.kernels._helpers import assert_rows_batch_invariant, cuda_only

# Ragged sizes so the K loop runs several blocks and both K and N hit masked tails.
K = 2 * MATMUL_BLOCK_K + 7
N = MATMUL_BLOCK_N + 13


def _operands(m: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, K, generator=g)  # (m, K)
    w = torch.randn(K, N, generator=g) / K**0.5  # (K, N), scaled so outputs are O(1)
    return x.to(device, dtype), w.to(device, dtype)


@pytest.mark.parametrize("m", [8, MATMUL_BLOCK_M + 5])  # one M tile, and rows spread over two
def test_rows_batch_invariant_and_match_reference(m: int) -> None:
    x, w = _operands(m)
    assert_rows_batch_invariant(lambda rows: bi_matmul(rows, w), x)
    torch.testing.assert_close(bi_matmul(x, w), matmul_reference(x, w), atol=1e-5, rtol=1e-5)


def test_dispatcher_uses_reference_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_triton(*args: object) -> torch.Tensor:
        raise AssertionError("Triton path taken for CPU tensors")

    # the package re-exports the dispatcher under the module's name, so fetch the module itself
    monkeypatch.setattr(importlib.import_module("model.kernels.matmul"), "bi_matmul", no_triton)
    x, w = _operands(8)
    assert torch.equal(matmul(x, w), matmul_reference(x, w))


def test_rejects_mismatched_operands() -> None:
    x, w = _operands(2)
    with pytest.raises(ValueError, match=r"\(M, K\)"):
        bi_matmul(x, w[1:])


@pytest.mark.cuda
@cuda_only
def test_cuda_bf16_batch_invariant() -> None:
    x, w = _operands(2 * MATMUL_BLOCK_M + 3, torch.bfloat16, "cuda")
    assert_rows_batch_invariant(lambda rows: bi_matmul(rows, w), x)
    out = bi_matmul(x, w)
    assert torch.equal(matmul(x, w), out), "dispatcher did not take the Triton path on CUDA"
    torch.testing.assert_close(out.float(), matmul_reference(x.float(), w.float()), atol=3e-2, rtol=2e-2)
