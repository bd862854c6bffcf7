"""Shared checks for the kernel tests."""

from collections.abc import Callable

import pytest
import torch

# GPU-only tests carry the `cuda` marker (pyproject) and skip themselves without a device.
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# CPU-tensor launches need TRITON_INTERPRET, which conftest sets only where there is no GPU;
# on a GPU machine the cuda-marked tests check the compiled kernels instead.
interpreter_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="runs the Triton interpreter; the cuda tests cover this here"
)


def assert_rows_batch_invariant(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> None:
    """Row i of fn(x) must be bitwise equal to fn on row i alone (a 1-row view into x)."""
    batched = fn(x)
    for i in range(x.shape[0]):
        alone = fn(x[i : i + 1])
        assert torch.equal(batched[i : i + 1], alone), f"row {i} differs between batch {x.shape[0]} and 1"
