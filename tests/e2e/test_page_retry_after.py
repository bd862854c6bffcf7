"""The call page in headless Chromium under the server's security headers, against a server
that answers 503 + Retry-After: the page must run under the Content-Security-Policy (no inline
script or style it depends on), show the wait, hold Join for that long, then offer it again.

No `microturn serve` here: Playwright answers every request from web/ with the headers
signaling/exposure.py puts on every response, and plays the API's part.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from signaling.exposure import SECURITY_HEADERS
from tests.e2e.browser_support import CHROMIUM, chromium_args

try:
    from playwright.sync_api import Route, expect, sync_playwright

    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - depends on the machine
    HAVE_PLAYWRIGHT = False

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="the playwright Python package is missing (pip install playwright)"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]

WEB = Path(__file__).resolve().parents[2] / "web"
BASE = "http://microturn.test"
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def test_page_runs_under_the_csp_and_honours_retry_after(tmp_path: Path) -> None:
    wav = tmp_path / "silence.wav"
    sf.write(wav, np.zeros(48000, np.float32), 48000, subtype="PCM_16")
    api_calls: list[str] = []

    def serve(route: Route) -> None:
        req = route.request
        path = re.sub(r"^https?://[^/]+", "", req.url).split("?")[0]
        headers = dict(SECURITY_HEADERS)
        if path == "/v1/sessions" and req.method == "POST":
            api_calls.append("session")
            body = json.dumps({"token": "t", "expires_in": 300})
            route.fulfill(status=201, body=body, content_type="application/json", headers=headers)
        elif path == "/v1/calls" and req.method == "POST":
            api_calls.append("call")
            headers["Retry-After"] = "3"
            body = json.dumps(
                {"error": {"code": "engine_full", "message": "all 1 session slots in use; try again later"}}
            )
            route.fulfill(status=503, body=body, content_type="application/json", headers=headers)
        else:
            f = WEB / ("index.html" if path == "/" else path.removeprefix("/static/"))
            if not f.is_file() or WEB not in f.resolve().parents:
                route.fulfill(status=404, body="not found", headers=headers)
            else:
                route.fulfill(status=200, body=f.read_bytes(), content_type=TYPES.get(f.suffix), headers=headers)

    console: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=chromium_args(wav))
        try:
            page = browser.new_context().new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.route("**/*", serve)
            page.goto(BASE + "/")
            join = page.locator("#join")
            expect(join).to_have_text("Join")
            join.click()
            expect(page.locator("#state")).to_have_attribute("data-state", "error", timeout=20_000)
            expect(page.locator("#error-text")).to_contain_text("Try again in 3 s")
            expect(page.locator("#error-text")).to_contain_text("session slots in use")
            # Join waits out the Retry-After, counting down...
            expect(join).to_be_disabled()
            expect(join).to_have_text(re.compile(r"^Join again in [123] s$"))
            held_from = time.monotonic()
            # ...then works again
            expect(join).to_be_enabled(timeout=10_000)
            expect(join).to_have_text("Join again")
            assert time.monotonic() - held_from >= 1.0  # it did hold (lower bound only)
            assert api_calls == ["session", "call"], api_calls
            join.click()
            expect(page.locator("#state")).to_have_attribute("data-state", "error", timeout=20_000)
            assert api_calls[-1] == "call" and api_calls.count("call") == 2
        finally:
            browser.close()
    blocked = [c for c in console if "Content Security Policy" in c or "Refused to" in c]
    assert not blocked, blocked
    assert not [c for c in console if c.startswith("pageerror")], console
