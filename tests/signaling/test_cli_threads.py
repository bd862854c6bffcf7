"""`microturn serve` sets torch's intra-op threads before the app runs: flag > env > default."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import uvloop
from aiohttp import web

from infra.threads import ENV_VAR, available_cores, torch_threads_for
from signaling import cli


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Run `serve` up to web.run_app and record torch's thread count at that moment."""
    seen: list[int] = []

    def fake_run_app(app: web.Application, **kw: Any) -> None:
        seen.append(torch.get_num_threads())

    monkeypatch.setattr(web, "run_app", fake_run_app)
    monkeypatch.setattr(uvloop, "install", lambda: None)  # keep pytest's event loop policy
    monkeypatch.delenv(ENV_VAR, raising=False)
    before = torch.get_num_threads()
    yield seen
    torch.set_num_threads(before)


def test_flag_reaches_torch(served: list[int]) -> None:
    assert cli.main(["serve", "--torch-threads", "3"]) == 0
    assert served == [3]


def test_env_when_no_flag_and_flag_beats_env(served: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "3")
    assert cli.main(["serve"]) == 0
    assert cli.main(["serve", "--torch-threads", "2"]) == 0
    assert served == [3, 2]


def test_default_from_the_cores(served: list[int]) -> None:
    want = torch_threads_for(available_cores())
    torch.set_num_threads(want + 1)  # torch's own default on this machine may already be `want`
    assert cli.main(["serve"]) == 0
    assert served == [want]


def test_bad_values_exit_2_before_serving(served: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.main(["serve", "--torch-threads", "0"]) == 2
    monkeypatch.setenv(ENV_VAR, "many")
    assert cli.main(["serve"]) == 2
    assert served == []
