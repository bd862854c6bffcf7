"""Ask in the background from the call page, in headless Chromium, end to end.

The app is `microturn serve`'s (create_app with its default wiring: the tools agent runs
in-process on the memory bus, nothing configured), served from a thread of this process so
the test can spy on that bus: every MicroTurnInput the edge hands the worker is decoded, and
the answer must arrive there as background text — what model/session.py tokenizes as
background tokens. The page asks an exact big-integer product, and its panel must go through
the task's states (sending/queued -> streaming -> done) and show the exact answer.

Needs /usr/bin/chromium (Debian `chromium`) and the `playwright` Python package.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

from infra import keys
from infra.messages import MicroTurnInput
from signaling.app import RUNTIME, create_app
from tests.e2e.aiortc_server import edge_settings, tiny_checkpoint
from tests.e2e.browser_support import ARTIFACTS, CHROMIUM, chromium_args, free_port, have_espeak, make_speech_wav

try:
    from playwright.sync_api import Page, expect, sync_playwright

    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - depends on the machine
    HAVE_PLAYWRIGHT = False

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="the playwright Python package is missing (pip install playwright)"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
    pytest.mark.skipif(not have_espeak(), reason="espeak-ng is missing (apt-get install espeak-ng)"),
]

QUESTION = "what is 12345678901234567890 times 3"
ANSWER = "37037036703703703670"  # 12345678901234567890 * 3, exactly

# Every data-state a task entry takes, in order (a transient "streaming" would be missed by polling).
WATCH_STATES_JS = """() => {
  window.__taskStates = [];
  new MutationObserver((records) => {
    for (const r of records) {
      const el = r.type === "attributes" ? r.target : null;
      if (el && el.dataset.state) window.__taskStates.push([el.dataset.taskId, el.dataset.state]);
      for (const n of r.addedNodes || []) {
        if (n.dataset && n.dataset.state) window.__taskStates.push([n.dataset.taskId, n.dataset.state]);
      }
    }
  }).observe(document.getElementById("tasks"), {subtree: true, childList: true, attributes: true,
                                                 attributeFilter: ["data-state"]});
}"""


class ThreadedServer:
    """The serve app on a free port, its event loop in a thread; `backgrounds` collects the
    non-empty MicroTurnInput.background of every input the worker is sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.backgrounds: list[str] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="serve", daemon=True)
        self._runner: web.AppRunner | None = None
        self._spy: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=120)

    async def _start(self) -> None:
        settings = edge_settings(host="127.0.0.1", port=self.port, idle_timeout_s=30.0)
        app = create_app(settings, checkpoint=tiny_checkpoint())
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        rt = app[RUNTIME]
        sub = rt.bus.subscribe(keys.inputs(rt.worker.settings.worker_id), maxsize=4096)

        async def spy() -> None:
            async for data in sub:
                inp = msgspec.msgpack.decode(data, type=MicroTurnInput)
                if inp.background:
                    self.backgrounds.append(inp.background)

        self._spy = asyncio.create_task(spy(), name="test-input-spy")

    def stop(self) -> None:
        async def _stop() -> None:
            if self._spy is not None:
                self._spy.cancel()
            if self._runner is not None:
                await self._runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)


@pytest.fixture
def server() -> Iterator[ThreadedServer]:
    s = ThreadedServer()
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _poll(fn: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not (value := fn()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def _dump(page: Page, console: list[str]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(Exception):
        page.screenshot(path=str(ARTIFACTS / "background_panel_failure.png"), full_page=True)
    print("browser console:\n" + "\n".join(console[-50:]))


def test_ask_in_the_background_streams_into_the_panel_and_the_session(server: ThreadedServer, tmp_path: Path) -> None:
    wav = make_speech_wav(tmp_path / "speech.wav", "Hello. Can you work something out for me?")
    console: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=chromium_args(wav))
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            try:
                _flow(page, server)
            except BaseException:
                _dump(page, console)
                raise
            assert not [c for c in console if c.startswith("pageerror")], console
        finally:
            browser.close()


def _flow(page: Page, server: ThreadedServer) -> None:
    page.goto(server.base + "/")
    ask_box = page.get_by_label("Ask in the background")
    expect(ask_box).to_be_disabled()  # nothing to ask before the call is up
    page.get_by_role("button", name="Join").click()
    expect(page.locator("#state")).to_have_attribute("data-state", "live", timeout=30_000)
    expect(ask_box).to_be_enabled(timeout=10_000)
    page.evaluate(WATCH_STATES_JS)

    # -- ask: the panel shows the task streaming, then done with the exact answer ------------
    ask_box.fill(QUESTION)
    page.get_by_role("button", name="Ask", exact=True).click()
    expect(ask_box).to_have_value("")
    task = page.locator("#tasks li.task")
    expect(task).to_have_count(1)
    expect(task).to_have_attribute("data-state", "done", timeout=30_000)
    expect(task.locator(".task-text")).to_contain_text(ANSWER)
    expect(task.locator(".task-ask")).to_have_text(QUESTION)
    expect(task.locator(".task-state")).to_have_text("done")
    expect(task.locator(".task-cancel")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()
    task_id = task.get_attribute("data-task-id")
    states = [s for tid, s in page.evaluate("() => window.__taskStates") if tid == task_id]
    assert states[0] in ("sending", "queued") and "streaming" in states and states[-1] == "done", states
    assert states.index("streaming") < states.index("done"), states

    # -- the session's next micro-turn inputs carried the answer as background text ----------
    carried = _poll(lambda: ANSWER in "".join(server.backgrounds), 15)
    assert carried, f"the answer never reached the worker's input; background inputs: {server.backgrounds}"
    assert "".join(server.backgrounds).count(ANSWER) == 1  # once, not repeated

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "background_panel.png"), full_page=True)

    # -- the cancel button sends background.task.cancel over the channel: for a task the
    # server does not know (made up on the page) the server's error comes back ------------
    page.evaluate(
        "(m) => window.__microturn.dispatch(m)",
        {"type": "background.task.created", "task_id": "made-up", "source": "client", "text": "slow one"},
    )
    made_up = page.locator('#tasks li[data-task-id="made-up"]')
    expect(made_up).to_have_attribute("data-state", "queued")
    made_up.get_by_role("button", name="Cancel background task made-up").click()
    expect(page.locator("#error-text")).to_contain_text("no background task 'made-up'", timeout=10_000)
    page.evaluate("(m) => window.__microturn.dispatch(m)", {"type": "background.task.cancelled", "task_id": "made-up"})
    expect(made_up).to_have_attribute("data-state", "cancelled")
    expect(made_up.locator(".task-cancel")).to_be_hidden()
    expect(page.locator("#state")).to_have_attribute("data-state", "live")

    page.get_by_role("button", name="Leave").click()
    expect(page.locator("#state")).to_have_attribute("data-state", "ended", timeout=10_000)
    expect(ask_box).to_be_disabled()
