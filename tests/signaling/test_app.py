from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from infra.settings import Settings
from signaling.app import RUNTIME, create_app
from tests.e2e.aiortc_client import Caller
from tests.e2e.aiortc_server import tiny_checkpoint

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
    assert "microturn_step_seconds" in m and "microturn_calls_active" in m


async def test_call_page_and_static_files_come_from_web_dir(tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><script type=module src=/static/app.js></script>")
    (web / "app.js").write_text("export const x = 1;")
    settings = Settings(checkpoint=None, web_dir=web)
    async with TestClient(TestServer(create_app(settings, checkpoint=tiny_checkpoint()))) as c:
        page = await c.get("/")
        assert page.status == 200 and "/static/app.js" in await page.text()
        js = await c.get("/static/app.js")
        assert js.status == 200 and js.content_type in ("text/javascript", "application/javascript")
        assert (await c.get("/static/../../etc/passwd")).status in (403, 404)
        assert (await c.get("/static/missing.js")).status == 404


async def test_status_page_when_there_is_no_call_page(tmp_path: Path) -> None:
    settings = Settings(checkpoint=None, web_dir=tmp_path / "absent")
    async with TestClient(TestServer(create_app(settings, checkpoint=tiny_checkpoint()))) as c:
        page = await c.get("/")
        assert page.status == 200 and "Random weights" in await page.text()


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


def _serve(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    """`microturn serve` in a child process on a free port; returns once /readyz says ready."""
    port = _free_port()
    env = {**os.environ, "MICROTURN_PORT": str(port), "MICROTURN_CHECKPOINT": str(tmp_path / "none")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "signaling.cli", "serve"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                assert r.status == 200
                return proc, port
        except OSError:
            if proc.poll() is not None:
                proc.kill()
                raise AssertionError(proc.stderr.read() if proc.stderr else "serve exited") from None
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_process_starts_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    proc, _ = _serve(tmp_path)
    try:
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        err = proc.stderr.read() if proc.stderr else ""
        assert "RANDOM weights" in err and "serve.stopped" in err and "loop=uvloop" in err
    finally:
        proc.kill()


@pytest.mark.timeout(60)
async def test_serve_closes_live_calls_on_sigterm(tmp_path: Path) -> None:
    """One process (edge + engine + bus on uvloop) with a live call; SIGTERM closes the call cleanly."""
    proc, port = await asyncio.to_thread(_serve, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            caller = Caller(f"http://127.0.0.1:{port}", http, np.zeros(16000 * 10, np.float32))
            try:
                await caller.mint_token()
                assert (await caller.connect()).status == 201
                await caller.wait_event(lambda e: e["type"] == "metrics.latency", timeout=15)
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 20) == 0
                await caller.wait_event(lambda e: e.get("code") == "server_shutdown", timeout=5)
            finally:
                await caller.close()
        err = proc.stderr.read() if proc.stderr else ""
        assert "reason=server_shutdown" in err and "call.closed" in err and "serve.stopped" in err
        assert "Traceback" not in err, err
    finally:
        proc.kill()
