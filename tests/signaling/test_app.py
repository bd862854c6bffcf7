from __future__ import annotations

import asyncio
import logging
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
import structlog
import structlog.testing
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


# --- exposure (issue 8) ---------------------------------------------------------------------------
async def test_ops_key_closes_metrics_and_readyz_but_not_healthz(tmp_path: Path) -> None:
    settings = Settings(checkpoint=None, web_dir=tmp_path / "absent", ops_key="ops-secret", api_keys=["k"])
    async with TestClient(TestServer(create_app(settings, checkpoint=tiny_checkpoint()))) as c:
        for path in ("/metrics", "/readyz"):
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": "Bearer k"},
                {"Authorization": "Bearer é"},
            ):
                r = await c.get(path, headers=headers)
                assert r.status == 401, (path, headers, r.status)
                assert (await r.json())["error"]["code"] == "unauthorized"
            assert (await c.get(path, headers={"Authorization": "Bearer ops-secret"})).status == 200
        assert (await c.get("/healthz")).status == 200


async def test_metrics_and_readyz_are_open_without_an_ops_key(client: TestClient) -> None:
    assert (await client.get("/metrics")).status == 200 and (await client.get("/readyz")).status == 200


async def test_every_response_carries_the_security_headers(tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><script type=module src=/static/app.js></script>")
    (web / "app.js").write_text("export const x = 1;")
    settings = Settings(checkpoint=None, web_dir=web)
    async with TestClient(TestServer(create_app(settings, checkpoint=tiny_checkpoint()))) as c:
        for method, path, status in [
            ("GET", "/", 200),
            ("GET", "/static/app.js", 200),
            ("GET", "/static/missing.js", 404),
            ("GET", "/healthz", 200),
            ("POST", "/v1/calls", 401),
            ("GET", "/v1/nothing", 404),
        ]:
            r = await c.request(method, path)
            assert r.status == status, (path, r.status)
            csp = r.headers.get("Content-Security-Policy", "")
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, (path, csp)
            assert "unsafe-inline" not in csp
            assert r.headers.get("X-Content-Type-Options") == "nosniff", path
            assert r.headers.get("X-Frame-Options") == "DENY", path
            assert r.headers.get("Referrer-Policy") == "no-referrer", path


async def test_access_log_does_not_show_call_ids(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """A call id alone allows PATCH and DELETE: it must not end up in the access log."""
    secret_id = "Zm9vYmFyLXNlY3JldC1jYWxsLWlk"
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        await client.delete(f"/v1/calls/{secret_id}")
        await client.patch(f"/v1/calls/{secret_id}?x=1", data="", headers={"Content-Type": "text/plain"})
        await client.get("/healthz")
        for _ in range(50):  # the access log line is written after the response is sent
            if sum(r.name == "aiohttp.access" for r in caplog.records) >= 3:
                break
            await asyncio.sleep(0.02)
    lines = [r for r in caplog.records if r.name == "aiohttp.access"]
    assert len(lines) >= 3, "aiohttp's access log wrote nothing: the test would prove nothing"
    text = "\n".join(r.getMessage() + " " + str(r.__dict__.get("first_request_line", "")) for r in lines)
    assert secret_id not in text, text
    assert "/v1/calls/<redacted>" in text and "/healthz" in text


@pytest.mark.parametrize(
    ("host", "anonymous", "warned"),
    [("0.0.0.0", True, True), ("192.0.2.10", True, True), ("::", True, True), ("127.0.0.1", True, False),
     ("localhost", True, False), ("::1", True, False), ("0.0.0.0", False, False)],
)  # fmt: skip
async def test_startup_warns_loudly_when_anonymous_callers_can_reach_the_server(
    host: str, anonymous: bool, warned: bool
) -> None:
    settings = Settings(checkpoint=None, host=host, allow_anonymous=anonymous, api_keys=["k"])
    with structlog.testing.capture_logs() as logs:
        async with TestClient(TestServer(create_app(settings, checkpoint=tiny_checkpoint()))):
            pass
    warnings = [
        e for e in logs if e.get("event") == "serve.exposed" and "ANONYMOUS ACCESS IS ON" in e.get("message", "")
    ]
    assert bool(warnings) == warned, logs
    if warned:
        assert warnings[0]["log_level"] == "warning" and host in warnings[0]["message"]
