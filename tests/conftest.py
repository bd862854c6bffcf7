"""Process-wide test setup. Triton reads TRITON_INTERPRET when it is first imported, so the
CPU interpreter must be switched on here, before any test module can import it."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: object, items: list) -> None:  # type: ignore[type-arg]
    """`@pytest.mark.cuda` tests are skipped, with the reason shown, on machines without CUDA."""
    import pytest

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
