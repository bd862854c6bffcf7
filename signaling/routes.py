"""The call API: WHIP-style SDP exchange plus a JSON flavour for the page.

    POST   /v1/sessions    -> 201 {"token", "expires_in"}           (anonymous or API key)
    POST   /v1/calls       offer (application/sdp | JSON {sdp, type}) -> 201 answer + Location
    PATCH  /v1/calls/{id}  application/trickle-ice-sdpfrag -> 204     (ICE restart -> 422)
    DELETE /v1/calls/{id}  -> 204

Every error under /v1/ is JSON `{"error": {"code", "message"}}` with the status saying what
kind (400 bad input, 401 credentials, 403 another site's page, 404 no such call, 413 too big,
415 wrong type, 422 ICE restart or too many candidates, 429 limits, 503 engine full or shutting
down), so a page or gateway can show the message as is; every 429 and 503 says when to retry
(`Retry-After`, seconds).

Anonymous pages are the open door, so they get the tightest limits: per client (IPv4 address
or IPv6 /64), a share of the engine's slots for all of them together, and only pages served
by this server (or an allowed origin) may mint their tokens. `Origin` is checked only when
present: browsers always send it on a cross-site POST, so a missing one means a non-browser
client (curl, a gateway), which could send any Origin it liked anyway — the check keeps other
sites from spending their visitors' addresses on our slots, it is not authentication.

Cheap checks run before expensive ones: credentials and limits before the body
is read, the body's size before it is parsed, the SDP before a slot is reserved, the slot
before ICE gathering.
"""

from __future__ import annotations

import ipaddress
import json
import math
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ConfigDict, ValidationError

from infra import metrics
from infra.logging import get_logger
from signaling.auth import AuthError, Principal, anonymous_client_id, client_address, parse_networks
from signaling.call import Call, CallClosedError, CallDeps, IceRestartError, OfferError
from signaling.ice import TooManyCandidatesError
from signaling.runtime import RUNTIME, SETTINGS, Runtime
from signaling.workers import WorkersFull

log = get_logger(__name__)

SDP = "application/sdp"
JSON = "application/json"
SDPFRAG = "application/trickle-ice-sdpfrag"

Networks = list[ipaddress.IPv4Network | ipaddress.IPv6Network]
TRUSTED_PROXIES = web.AppKey("trusted_proxies", Networks)  # parsed MICROTURN_TRUSTED_PROXIES


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def json_error(status: int, code: str, message: str, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """ApiError -> JSON; under /v1/ aiohttp's own errors and crashes become JSON too."""
    try:
        return await handler(request)
    except ApiError as e:
        metrics.HTTP_REJECTED.labels(str(e.status)).inc()
        return json_error(e.status, e.code, e.message, retry_after=e.retry_after)
    except web.HTTPException as e:
        if not request.path.startswith("/v1/") or e.status < 400:
            raise
        metrics.HTTP_REJECTED.labels(str(e.status)).inc()
        return json_error(e.status, _HTTP_CODES.get(e.status, "http_error"), e.reason)
    except Exception:
        if not request.path.startswith("/v1/"):
            raise
        log.exception("http.internal_error", path=request.path, method=request.method)
        metrics.HTTP_REJECTED.labels("500").inc()
        return json_error(500, "internal_error", "the server failed to handle this request")


# helpers ---------------------------------------------------------------------------------------
def _authenticate(request: web.Request, rt: Runtime) -> Principal:
    try:
        return rt.auth.authenticate(request.headers.get("Authorization"))
    except AuthError as e:
        raise ApiError(401, "unauthorized", str(e)) from None


def _rate_limit(rt: Runtime, client_id: str) -> None:
    if not rt.limiter.allow(client_id):
        wait = rt.limiter.retry_after(client_id)
        raise ApiError(429, "rate_limited", f"too many requests; retry in {wait} s", retry_after=wait)


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, refusing (413) anything over `limit` bytes without buffering it."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"body is {request.content_length} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(16 * 1024):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _from_trusted_proxy(request: web.Request) -> bool:
    peer = client_address(request.remote, None, [])
    return peer is not None and any(ipaddress.ip_address(peer) in n for n in request.app[TRUSTED_PROXIES])


def anonymous_client(request: web.Request) -> str:
    """The limits key of an anonymous caller (X-Forwarded-For only from a trusted proxy)."""
    forwarded = request.headers.get("X-Forwarded-For")
    trusted: Networks = request.app[TRUSTED_PROXIES]
    return anonymous_client_id(client_address(request.remote, forwarded, trusted))


def check_origin(request: web.Request) -> None:
    """403 unless a browser's `Origin` is this server's own or listed in MICROTURN_ALLOWED_ORIGINS."""
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser: see the module docstring
    allowed = [o.rstrip("/").lower() for o in request.app[SETTINGS].allowed_origins]
    if "*" in allowed or origin.rstrip("/").lower() in allowed:
        return
    # behind a trusted proxy the public host is the one it forwards
    host = request.headers.get("X-Forwarded-Host") if _from_trusted_proxy(request) else None
    host = (host or request.host).split(",")[0].strip().lower()
    try:
        parts = urlsplit(origin)
        same = parts.scheme in ("http", "https") and parts.netloc.lower() == host
    except ValueError:
        same = False
    if not same:
        raise ApiError(
            403,
            "origin_not_allowed",
            f"pages from {origin[:100]!r} may not mint tokens here (MICROTURN_ALLOWED_ORIGINS)",
        )


def _runtime(request: web.Request) -> Runtime:
    rt = request.app.get(RUNTIME)
    if rt is None:
        raise ApiError(503, "starting", "the server is starting", retry_after=2)
    return rt


class _OfferBody(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    sdp: str
    type: str


# POST /v1/sessions -------------------------------------------------------------------------------
async def create_session(request: web.Request) -> web.Response:
    """Mint a short-lived session token for the page (anonymous when allowed, else by API key)."""
    rt = _runtime(request)
    settings = request.app[SETTINGS]
    if request.headers.get("Authorization"):
        principal = _authenticate(request, rt)
        if principal.kind != "api_key":
            raise ApiError(401, "unauthorized", "session tokens are minted anonymously or with an API key")
        # each token minted by an integrator is its own client for the per-client limits
        subject = f"{principal.client_id}/{Call.new_id()[:12]}"
    elif settings.allow_anonymous:
        check_origin(request)
        subject = anonymous_client(request)
        _rate_limit(rt, subject)
    else:
        raise ApiError(401, "unauthorized", "anonymous access is off: Authorization: Bearer <API key> required")
    return web.json_response({"token": rt.auth.mint(subject), "expires_in": rt.auth.ttl_s}, status=201)


# POST /v1/calls ----------------------------------------------------------------------------------
async def create_call(request: web.Request) -> web.Response:
    rt = _runtime(request)
    settings = request.app[SETTINGS]
    principal = _authenticate(request, rt)
    if not rt.calls.accepting:
        raise ApiError(503, "shutting_down", "the server is shutting down", retry_after=5)
    if principal.limited:
        _rate_limit(rt, principal.client_id)

    ctype = request.content_type
    if ctype not in (SDP, JSON):
        raise ApiError(415, "unsupported_media_type", f"send the offer as {SDP} or {JSON}, not {ctype or 'nothing'}")
    body = await _read_body(request, settings.max_sdp_bytes)
    if ctype == SDP:
        try:
            offer = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "bad_sdp", "SDP must be UTF-8 text") from None
    else:
        try:
            parsed = _OfferBody.model_validate(json.loads(body))
        except (ValueError, RecursionError) as e:  # includes ValidationError
            detail = "; ".join(err["msg"] for err in e.errors()) if isinstance(e, ValidationError) else str(e)
            expected = 'expected JSON {"sdp": str, "type": "offer"}'
            raise ApiError(400, "bad_request", f"{expected}: {detail[:200]}") from None
        if parsed.type != "offer":
            raise ApiError(400, "bad_request", f'type must be "offer", not {parsed.type[:32]!r}')
        offer = parsed.sdp

    if principal.limited and rt.calls.count_for(principal.client_id) >= settings.max_calls_per_client:
        raise ApiError(
            429,
            "too_many_calls",
            f"this client already has {settings.max_calls_per_client} calls (the per-client limit)",
            retry_after=10,
        )
    stats = rt.workers.stats()
    if stats.free <= 0:  # fast path; open_session() below is the authoritative check
        raise _engine_full(WorkersFull(5.0, f"all {stats.capacity} session slots in use; try again later"))
    anon_slots = anonymous_slots(settings.anonymous_slot_share, stats.capacity)
    if principal.anonymous and rt.calls.anonymous_count >= anon_slots:
        raise ApiError(
            503,
            "anonymous_full",
            f"all {anon_slots} of the {stats.capacity} session slots open to anonymous callers are in use;"
            " try again later",
            retry_after=10,
        )

    deps = CallDeps(
        bus=rt.bus,
        workers=rt.workers,
        settings=settings,
        model_name=rt.model_name,
        trained=rt.trained,
        on_closed=rt.calls.remove,
        background=rt.background,
    )
    call = Call(Call.new_id(), principal, deps)
    rt.calls.add(call)
    try:
        await call.apply_offer(offer)
        await call.open_session()
        answer = await call.answer()
        call.start()
    except OfferError as e:
        await call.close("bad_offer")
        raise ApiError(400, "bad_sdp", str(e)[:300]) from None
    except WorkersFull as e:
        await call.close("engine_full")
        raise _engine_full(e) from None
    except CallClosedError as e:  # shutdown (or the peer) ended it mid-setup
        await call.close("setup_failed")
        raise ApiError(503, "call_closed", str(e), retry_after=5) from None
    except BaseException:
        await call.close("setup_failed")
        raise
    metrics.CALLS_STARTED.inc()
    location = f"/v1/calls/{call.id}"
    if ctype == SDP:
        return web.Response(status=201, text=answer, content_type=SDP, headers={"Location": location})
    return web.json_response(
        {"sdp": answer, "type": "answer", "call_id": call.id}, status=201, headers={"Location": location}
    )


def anonymous_slots(share: float, max_sessions: int) -> int:
    """Slots anonymous callers may hold together: the share rounded down, at least one if > 0."""
    return 0 if share <= 0 else max(1, math.floor(share * max_sessions + 1e-9))


def _engine_full(e: WorkersFull) -> ApiError:
    return ApiError(503, "engine_full", e.message, retry_after=max(1, math.ceil(e.retry_after_s)))


# PATCH / DELETE /v1/calls/{id} -------------------------------------------------------------------
def _call(request: web.Request, rt: Runtime) -> Call:
    call = rt.calls.get(request.match_info["call_id"])
    if call is None:
        raise ApiError(404, "not_found", "no such call (it ended or never existed)")
    return call


async def patch_call(request: web.Request) -> web.Response:
    """Trickle ICE (RFC 8840 fragment). The call id is the capability: no token needed."""
    rt = _runtime(request)
    call = _call(request, rt)
    if request.content_type != SDPFRAG:
        raise ApiError(415, "unsupported_media_type", f"send candidates as {SDPFRAG}")
    if not call.ice.allow_patch():
        wait = call.ice.patch_retry_after()
        raise ApiError(429, "rate_limited", f"too many PATCHes for this call; retry in {wait} s", retry_after=wait)
    body = await _read_body(request, request.app[SETTINGS].max_sdp_bytes)
    try:
        await call.add_ice(body.decode("utf-8"))
    except IceRestartError as e:
        raise ApiError(422, "ice_restart_unsupported", str(e)) from None
    except TooManyCandidatesError as e:
        raise ApiError(422, "too_many_candidates", str(e)) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "bad_candidate", str(e)[:200]) from None
    return web.Response(status=204)


async def delete_call(request: web.Request) -> web.Response:
    """Hang up and wait until the call released everything. The call id is the capability."""
    rt = _runtime(request)
    call = _call(request, rt)
    await call.close("hangup")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app[TRUSTED_PROXIES] = parse_networks(app[SETTINGS].trusted_proxies)
    app.router.add_post("/v1/sessions", create_session)
    app.router.add_post("/v1/calls", create_call)
    app.router.add_patch("/v1/calls/{call_id}", patch_call)
    app.router.add_delete("/v1/calls/{call_id}", delete_call)
