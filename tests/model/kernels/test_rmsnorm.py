"""Batch-invariant RMSNorm: Triton (interpreter on CPU) vs PyTorch, and rows independent of M."""

import importlib

import pytest
import torch

from model.kernels import rms_norm, rms_norm_reference, rms_norm_triton
from model.kernels.rmsnorm import RMSNORM_BLOCK_D
from tests.model.kernels._helpers import assert_rows_batch_invariant, cuda_only, interpreter_only

D = 2 * RMSNORM_BLOCK_D + 37  # several blocks per row plus a masked tail
EPS = 1e-5


def _operands(m: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, D, generator=g) * 3.0  # (m, D)
    weight = 1.0 + 0.1 * torch.randn(D, generator=g)  # (D,)
    return x.to(device, dtype), weight.to(device, dtype)


@interpreter_only
def test_rows_batch_invariant_and_match_reference() -> None:
    x, weight = _operands(8)
    assert_rows_batch_invariant(lambda rows: rms_norm_triton(rows, weight, EPS), x)
    torch.testing.assert_close(
        rms_norm_triton(x, weight, EPS), rms_norm_reference(x, weight, EPS), atol=1e-5, rtol=1e-5
    )


def test_dispatcher_uses_reference_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_triton(*args: object) -> torch.Tensor:
        raise AssertionError("Triton path taken for CPU tensors")

    # the package re-exports the dispatcher under the module's name, so fetch the module itself
    monkeypatch.setattr(importlib.import_module("model.kernels.rmsnorm"), "rms_norm_triton", no_triton)
    x, weight = _operands(8)
    assert torch.equal(rms_norm(x, weight, EPS), rms_norm_reference(x, weight, EPS))


@pytest.mark.cuda
@cuda_only
def test_cuda_bf16_batch_invariant() -> None:
    x, weight = _operands(8, torch.bfloat16, "cuda")
    assert_rows_batch_invariant(lambda rows: rms_norm_triton(rows, weight, EPS), x)
    out = rms_norm_triton(x, weight, EPS)
    assert torch.equal(rms_norm(x, weight, EPS), out), "dispatcher did not take the Triton path on CUDA"
    ref = rms_norm_reference(x.float(), weight.float(), EPS)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=1e-2)
