"""Process-wide test setup. Triton reads TRITON_INTERPRET when it is first imported, so the
CPU interpreter must be switched on here, before any test module can import it."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
