"""What the edge shows to whoever can reach it: response headers, logs, operator endpoints.

- Every response carries a Content-Security-Policy (the call page loads only its own files:
  no inline script or style, no framing), `nosniff`, `no-referrer` and a Permissions-Policy
  limiting the microphone and camera to the page itself.
- Call ids are bearer capabilities (an id alone allows PATCH and DELETE), so aiohttp's access
  log shows `/v1/calls/<redacted>`; the call's own log lines keep the id for debugging.
- MICROTURN_OPS_KEY closes /metrics and /readyz (load, memory, versions) to anyone without it;
  /healthz stays open (it says nothing but "up").
- Startup says loudly when anonymous callers can reach the server from other machines.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re

from aiohttp import web

from infra.settings import Settings
from signaling.routes import ApiError

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob: mediastream:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "microphone=(self), camera=(self), geolocation=(), payment=()",
}

_CALL_PATH = re.compile(r"(/v1/calls/)[^/\s?\"]+")
REDACTED = r"\1<redacted>"


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, static files and errors included."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def redact_call_ids(text: str) -> str:
    return _CALL_PATH.sub(REDACTED, text)


class RedactCallIds(logging.Filter):
    """On the `aiohttp.access` logger: call ids out of the message and its structured extras."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_call_ids(record.msg)
        if record.args:
            record.args = tuple(redact_call_ids(a) if isinstance(a, str) else a for a in record.args)
        for name in ("first_request_line", "request_path", "request_header"):
            value = record.__dict__.get(name)
            if isinstance(value, str):
                record.__dict__[name] = redact_call_ids(value)
        return True


def install_access_log_redaction() -> None:
    """Idempotent: every app in the process shares aiohttp's one access logger."""
    access = logging.getLogger("aiohttp.access")
    if not any(isinstance(f, RedactCallIds) for f in access.filters):
        access.addFilter(RedactCallIds())


def check_ops_key(request: web.Request, settings: Settings) -> None:
    """401 on /metrics and /readyz without the ops key, when one is configured."""
    if settings.ops_key is None:
        return
    header = request.headers.get("Authorization", "")
    expected = f"Bearer {settings.ops_key.get_secret_value()}".encode()
    presented = header.encode("utf-8", "replace")
    if not hmac.compare_digest(presented, expected):
        raise ApiError(401, "unauthorized", "Authorization: Bearer <MICROTURN_OPS_KEY> required")


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warnings(settings: Settings) -> list[str]:
    """What an operator should hear at startup about who can reach this server."""
    if _is_loopback(settings.host):
        return []
    out = []
    if settings.allow_anonymous:
        out.append(
            f"ANONYMOUS ACCESS IS ON and the server listens on {settings.host}: anyone who can reach it can"
            " place calls (per-client limits and MICROTURN_ANONYMOUS_SLOT_SHARE of the slots apply)."
            " Set MICROTURN_ALLOW_ANONYMOUS=false and MICROTURN_API_KEYS unless that is what you want."
        )
    if settings.ops_key is None:
        out.append(f"/metrics and /readyz are open on {settings.host}: set MICROTURN_OPS_KEY to close them")
    return out
