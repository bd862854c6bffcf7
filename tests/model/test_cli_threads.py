"""`microturn worker` sets torch's intra-op threads before it serves, as `serve` does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import uvloop

from infra.threads import ENV_VAR, available_cores, torch_threads_for
from model import cli
from signaling.cli import main


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Run `worker` up to serve_worker and record torch's thread count at that moment."""
    seen: list[int] = []

    async def fake_serve_worker(*a: Any) -> int:
        seen.append(torch.get_num_threads())
        return 0

    monkeypatch.setattr(cli, "serve_worker", fake_serve_worker)
    monkeypatch.setattr(uvloop, "install", lambda: None)  # keep pytest's event loop policy
    monkeypatch.delenv(ENV_VAR, raising=False)
    before = torch.get_num_threads()
    yield seen
    torch.set_num_threads(before)


def worker(*extra: str) -> int:
    return main(["worker", "--redis", "redis://127.0.0.1:1/0", "--port", "0", *extra])


def test_flag_env_and_default_reach_torch(served: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    assert worker("--torch-threads", "3") == 0
    monkeypatch.setenv(ENV_VAR, "2")
    assert worker() == 0
    monkeypatch.delenv(ENV_VAR)
    want = torch_threads_for(available_cores())
    torch.set_num_threads(want + 1)
    assert worker() == 0
    assert served == [3, 2, want]


def test_bad_value_exits_2_before_serving(served: list[int]) -> None:
    assert worker("--torch-threads", "0") == 2
    assert served == []
