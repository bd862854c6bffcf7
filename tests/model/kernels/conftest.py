"""Run the Triton kernels under the CPU interpreter when there is no GPU.

`@triton.jit` reads TRITON_INTERPRET when it decorates a function, and triton decorates its own
`tl.zeros`/`tl.sum`/... on `import triton`, so the variable must be set before triton's first
import in the session. model.kernels never imports triton at import time, so setting it here
works even when test modules collected earlier imported torch or model.kernels. It would be too
late only if something collected earlier imported triton itself (or torch._inductor); then the
kernel tests fail with a clear message and the same line belongs in tests/conftest.py.
test_import_order.py checks both cases in a fresh process.
"""

import os
from collections.abc import Iterator

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def per_element_dot(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the interpreter's `tl.dot` compute each output from its own row and column alone.

    The interpreter runs `tl.dot` as numpy's matmul, i.e. the host's BLAS, which may round an
    output row differently by its place in the tile (OpenBLAS does on AMD EPYC: a row gives
    other bits at tile row 6 than at tile row 0). A GPU's MMA has no such dependence: that is
    the contract the kernel is written against. With this dot (products added over k in
    order, elementwise) a batch-invariance test checks the kernel's own part — fixed tiles,
    the K loop in order, nothing chosen from M — on every CPU, not the host's BLAS.
    """
    from triton.runtime import interpreter

    calls = 0
    real_dot = interpreter.InterpreterBuilder.create_dot

    def dot(
        self: object, a: object, b: object, d: object, input_precision: object, max_num_imprecise_acc: object
    ) -> object:
        nonlocal calls
        calls += 1
        x, w, acc = a.data, b.data, d.data  # type: ignore[attr-defined]
        if not np.issubdtype(x.dtype, np.floating) or x.dtype.itemsize < 2:
            return real_dot(self, a, b, d, input_precision, max_num_imprecise_acc)
        total = np.zeros((x.shape[0], w.shape[1]), dtype=acc.dtype)
        for k in range(x.shape[1]):
            total = total + x[:, k, None].astype(acc.dtype) * w[None, k, :].astype(acc.dtype)
        return interpreter.TensorHandle(total + acc, d.dtype.scalar)  # type: ignore[attr-defined]

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", dot)
    yield
    assert calls, "the interpreter never called create_dot: the fixture no longer replaces tl.dot"
