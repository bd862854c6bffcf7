from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from infra.settings import Settings
from signaling.app import RUNTIME, create_app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    settings = Settings(checkpoint=tmp_path / "none", max_sessions=2)
    async with TestClient(TestServer(create_app(settings))) as c:
        yield c


async def test_health_ready_metrics(client: TestClient) -> None:
    assert (await client.get("/healthz")).status == 200
    r = await client.get("/readyz")
    body = await r.json()
    assert r.status == 200 and body["max_sessions"] == 2 and body["trained"] is False
    m = await (await client.get("/metrics")).text()
    assert "microturn_step_seconds" in m
    page = await (await client.get("/")).text()
    assert "Random weights" in page


async def test_readyz_reports_full(client: TestClient) -> None:
    rt = client.app[RUNTIME]
    await rt.worker.open("a")
    await rt.worker.open("b")
    r = await client.get("/readyz")
    assert r.status == 503 and (await r.json())["status"] == "full"
    await rt.worker.close("a")
    assert (await client.get("/readyz")).status == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_process_starts_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    port = _free_port()
    env = {**os.environ, "MICROTURN_PORT": str(port), "MICROTURN_CHECKPOINT": str(tmp_path / "none")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "signaling.cli", "serve"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.2)
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        err = proc.stderr.read() if proc.stderr else ""
        assert "RANDOM weights" in err and "serve.stopped" in err
    finally:
        proc.kill()
