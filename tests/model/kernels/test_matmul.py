"""Batch-invariant matmul: Triton (interpreter on CPU) vs `x @ w`, and rows independent of M.

Under the interpreter `tl.dot` is the host's BLAS, whose rounding of a row may depend on the
row's place in the tile, so on CPU the bitwise checks use either exact data (small integers:
every summation order gives the same bits) or the `per_element_dot` fixture (conftest), and
random data is compared with a tolerance. The CUDA test checks the compiled kernel bitwise.
"""

import importlib

import pytest
import torch

from model.kernels import bi_matmul, matmul, matmul_reference
from model.kernels.matmul import MATMUL_BLOCK_K, MATMUL_BLOCK_M, MATMUL_BLOCK_N
from tests.model.kernels._helpers import assert_rows_batch_invariant, cuda_only, interpreter_only

# Ragged sizes so the K loop runs several blocks and both K and N hit masked tails.
K = 2 * MATMUL_BLOCK_K + 7
N = MATMUL_BLOCK_N + 13


def _operands(m: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, K, generator=g)  # (m, K)
    w = torch.randn(K, N, generator=g) / K**0.5  # (K, N), scaled so outputs are O(1)
    return x.to(device, dtype), w.to(device, dtype)


def _integer_operands(m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Small integers in fp32: every partial sum is exact (|sum| <= K * 64 < 2**24), so any BLAS,
    any summation order, gives the same bits and a difference can only be the kernel's."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-8, 9, (m, K), generator=g).float()  # (m, K)
    w = torch.randint(-8, 9, (K, N), generator=g).float()  # (K, N)
    return x, w


@interpreter_only
@pytest.mark.parametrize("m", [8, MATMUL_BLOCK_M + 5])  # one M tile, and rows spread over two
def test_matches_reference(m: int) -> None:
    x, w = _operands(m)
    torch.testing.assert_close(bi_matmul(x, w), matmul_reference(x, w), atol=1e-5, rtol=1e-5)


@interpreter_only
def test_exact_on_integer_data_alone_and_batched() -> None:
    """The real tl.dot path, bitwise: masks, tails and row addressing, alone or in two M tiles."""
    x, w = _integer_operands(MATMUL_BLOCK_M + 5)
    expected = matmul_reference(x.double(), w.double()).float()  # exact in fp64 as well
    assert torch.equal(bi_matmul(x, w), expected)
    for i in (0, 6, x.shape[0] - 1):
        assert torch.equal(bi_matmul(x[i : i + 1], w), expected[i : i + 1]), f"row {i} alone"


@interpreter_only
@pytest.mark.usefixtures("per_element_dot")
@pytest.mark.parametrize("m", [8, MATMUL_BLOCK_M + 5])  # one M tile, and rows spread over two
def test_rows_batch_invariant(m: int) -> None:
    """Random data, bitwise: nothing the kernel does (tiles, K order, masks) depends on M."""
    x, w = _operands(m)
    assert_rows_batch_invariant(lambda rows: bi_matmul(rows, w), x)


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
