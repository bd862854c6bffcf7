"""Static checks of the call page (web/), no browser: local assets only, the JS parses as ES
modules, every server event type has a handler, and the basics of accessibility."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "web"

# The server -> client events of the call contract (DESIGN.md §8).
CONTRACT_EVENTS = {
    "session.created",
    "transcript.user.delta",
    "response.text.delta",
    "background.task.delta",
    "metrics.latency",
    "error",
}

URL_ATTRS = {"src", "href", "poster", "srcset", "action", "data"}
# absolute or protocol-relative URLs (a `//` comment is not one: it is not after a quote or paren)
EXTERNAL = re.compile(r"""https?://[^\s"')<>]+|(?<=["'(])//[^\s"')<>]+""", re.I)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []  # (tag, attr, value)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text_by_id: dict[str, str] = {}
        self._open: list[tuple[str, dict[str, str | None], list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        for k, v in attrs:
            if k in URL_ATTRS and v is not None:
                self.urls.append((tag, k, v))
        if tag in ("button", "label", "h2"):
            self._open.append((tag, a, []))

    def handle_data(self, data: str) -> None:
        for _, _, buf in self._open:
            buf.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == tag:
            _, a, buf = self._open.pop()
            if a.get("id"):
                self.text_by_id[str(a["id"])] = "".join(buf).strip()


def _page() -> _Page:
    p = _Page()
    p.feed((WEB / "index.html").read_text(encoding="utf-8"))
    return p


def _js_files() -> list[Path]:
    files = sorted(WEB.glob("*.js"))
    assert files, "web/ has no JavaScript"
    return files


def _server_event_types() -> set[str]:
    """The event types the server can send, read from signaling/events.py when it exists."""
    try:
        from signaling import events
    except ImportError:
        return set()
    found = set()
    for obj in vars(events).values():
        fields = getattr(obj, "model_fields", None)
        if isinstance(obj, type) and fields and "type" in fields and obj.__name__ != "InputTextAppend":
            default = fields["type"].default
            if isinstance(default, str):
                found.add(default)
    return found


def test_index_references_only_local_assets() -> None:
    page = _page()
    assert page.urls, "index.html references no assets at all?"
    for tag, attr, url in page.urls:
        ok = url.startswith("/static/") or url.startswith("data:") or url.startswith("#")
        assert ok, f"<{tag} {attr}={url!r}>: only /static/ assets (no CDNs, no relative paths that break at /)"
        if url.startswith("/static/"):
            assert (WEB / url.removeprefix("/static/")).is_file(), f"{url} is not a file in web/"
    scripts = [a for t, a in page.tags if t == "script" and a.get("src")]
    assert scripts and all(a.get("type") == "module" for a in scripts), "scripts must load as ES modules"
    assert any(a.get("src") == "/static/app.js" for a in scripts)
    assert any(t == "link" and a.get("href") == "/static/style.css" for t, a in page.tags)
    # nothing external anywhere: markup, styles (url(), @import, fonts) or scripts
    for f in [WEB / "index.html", *WEB.glob("*.css"), *_js_files()]:
        text = f.read_text(encoding="utf-8")
        hits = [h for h in EXTERNAL.findall(text) if "www.w3.org/" not in h]  # XML namespaces are names
        assert not hits, f"{f.name} references external URLs: {hits}"
        assert "@import" not in text or f.suffix != ".css", f"{f.name}: no @import"


def test_js_imports_are_local_modules() -> None:
    for f in _js_files():
        for spec in re.findall(r"""^\s*import\s[^;]*?from\s+["']([^"']+)["']""", f.read_text(), re.M):
            assert spec.startswith(("/static/", "./")), f"{f.name} imports {spec!r}: only local modules"
            target = WEB / spec.removeprefix("/static/").removeprefix("./")
            assert target.is_file(), f"{f.name} imports {spec}, which is not in web/"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (apt-get install nodejs)")
def test_js_parses_as_es_modules(tmp_path: Path) -> None:
    for f in _js_files():
        copy = tmp_path / (f.stem + ".mjs")  # .mjs: node parses it as an ES module
        copy.write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
        r = subprocess.run(["node", "--check", str(copy)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{f.name} does not parse as an ES module:\n{r.stderr}"


def _handler_keys(app_js: str) -> set[str]:
    m = re.search(r"const HANDLERS = \{(.*?)\n\};", app_js, re.S)
    assert m, "app.js has no `const HANDLERS = {...};` event table"
    # the table's own keys sit at two spaces: `"session.created"(m) {`, `error(m) {`, `"x": fn,`
    keys = re.findall(r"""^  (?:["']([\w.]+)["']|([A-Za-z_]\w*))\s*(?:\(|:)""", m.group(1), re.M)
    return {quoted or bare for quoted, bare in keys}


def test_every_server_event_has_a_handler() -> None:
    app_js = (WEB / "app.js").read_text(encoding="utf-8")
    handled = _handler_keys(app_js)
    server_types = _server_event_types()
    missing = (CONTRACT_EVENTS | server_types) - handled
    assert not missing, f"app.js HANDLERS has no handler for server events: {sorted(missing)}"
    if server_types:  # the contract and the server agree
        assert server_types >= CONTRACT_EVENTS, f"server lacks contract events: {CONTRACT_EVENTS - server_types}"


def test_client_side_of_the_contract() -> None:
    js = "\n".join(f.read_text(encoding="utf-8") for f in _js_files())
    assert re.search(r"""createDataChannel\(\s*["']events["']""", js), "the client must open the `events` channel"
    assert '"input_text.append"' in js, "typed text goes out as input_text.append"
    for path in ("/v1/sessions", "/v1/calls"):
        assert path in js, f"the page never calls {path}"
    assert '"DELETE"' in js, "Leave must DELETE the call"
    assert "iceGatheringState" in js, "non-trickle: the offer waits for ICE gathering"
    assert "window.__microturn" in js, "the browser test reads window.__microturn.pc"


def test_accessibility_basics() -> None:
    page = _page()
    html_tag = next(a for t, a in page.tags if t == "html")
    assert html_tag.get("lang"), "<html lang> is required"
    assert any(t == "meta" and a.get("name") == "viewport" for t, a in page.tags), "phone viewport meta"
    labels = {a.get("for") for t, a in page.tags if t == "label"}
    for t, a in page.tags:
        if t in ("input", "textarea", "select") and a.get("type") != "hidden":
            assert a.get("id") in labels or a.get("aria-label"), f"<{t} id={a.get('id')}> has no label"
        if t == "button":
            name = page.text_by_id.get(str(a.get("id")), "") or a.get("aria-label")
            assert name, f"<button id={a.get('id')}> has no accessible name"
    by_id = {a.get("id"): a for _, a in page.tags if a.get("id")}
    for cap in ("captions-user", "captions-model"):
        a = by_id[cap]
        assert a.get("aria-live") == "polite" or a.get("role") == "log", f"#{cap} must be a live region"
    assert by_id["state"].get("role") == "status" or by_id["state"].get("aria-live")
    assert by_id["error"].get("role") == "alert"
    assert "autoplay" in by_id["remote-audio"]


def test_page_needs_nothing_the_content_security_policy_forbids() -> None:
    """The server sends `script-src 'self'; style-src 'self'` (signaling/exposure.py): no inline
    script, inline style, event-handler attribute, javascript: URL or eval anywhere in web/."""
    page = _page()
    for tag, a in page.tags:
        assert tag != "style", "<style> blocks are inline styles: move them to style.css"
        assert not (tag == "script" and not a.get("src")), "inline <script>: move it to a module in web/"
        assert "style" not in a, f"<{tag} style=...>: inline style attributes are blocked by the CSP"
        handlers = [k for k in a if k.startswith("on")]
        assert not handlers, f"<{tag} {handlers[0]}=...>: inline event handlers are blocked by the CSP"
        for k, v in a.items():
            assert not (v or "").strip().lower().startswith("javascript:"), f"<{tag} {k}=javascript:...>"
    for f in _js_files():
        js = f.read_text(encoding="utf-8")
        for pattern in (r"\beval\(", r"new Function\(", r"""setAttribute\(\s*["']style["']""", r"\.innerHTML\s*="):
            assert not re.search(pattern, js), f"{f.name} uses {pattern}, which the CSP forbids or invites"


def test_page_honours_retry_after() -> None:
    """429/503 carry Retry-After; the page reads it and holds Join for that long (the browser
    side is tests/e2e/test_page_retry_after.py)."""
    call_js = (WEB / "call.js").read_text(encoding="utf-8")
    app_js = (WEB / "app.js").read_text(encoding="utf-8")
    assert 'headers.get("Retry-After")' in call_js
    assert "retryAfter" in app_js and "holdJoin" in app_js
