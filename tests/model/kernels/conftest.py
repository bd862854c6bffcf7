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

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
