"""Process-wide test setup. Triton reads TRITON_INTERPRET when it is first imported, so the
CPU interpreter must be switched on here, before any test module can import it."""

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.redis_server import RedisServer

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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh real redis-server on a free port (no persistence), killed at teardown."""
    try:
        server = RedisServer(tmp_path)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=True)


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """Only explicit collections: what a test frees, it freed by reference counting or gc.collect()."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
