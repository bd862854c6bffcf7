"""Who is calling, and how often they may.

Two kinds of credentials arrive as `Authorization: Bearer ...`:

- API keys (MICROTURN_API_KEYS) for server-to-server integrators and telephony gateways. They
  are trusted: no per-client rate limit or call cap (the engine's slots still bound them).
- Session tokens minted by `POST /v1/sessions` for the call page: short-lived, HMAC-signed,
  stateless (no token table to grow or share between edges), carrying the client identity
  the limits are counted against. Anonymous minting (MICROTURN_ALLOW_ANONYMOUS) keys that
  identity on the remote address: IPv4 by address, IPv6 by /64, and behind a proxy listed in
  MICROTURN_TRUSTED_PROXIES by the address it forwards in X-Forwarded-For.

The call id (128 random bits) is a capability: PATCH and DELETE on `/v1/calls/{id}` need no
token, because a page's token may well have expired by the time the user hangs up, and
refusing the hang-up would only leave the call to the idle timeout.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

# Longer credentials are refused before any HMAC is computed (a token is ~150 characters).
MAX_CREDENTIAL_CHARS = 1024
ANON_PREFIX = "anon:"  # client ids of anonymous pages: "anon:<IPv4>" or "anon:<IPv6 /64>"


class AuthError(Exception):
    """Missing, malformed, forged or expired credentials (-> 401)."""


@dataclass(frozen=True)
class Principal:
    client_id: str  # what limits are counted against
    kind: Literal["api_key", "token", "anonymous"]

    @property
    def limited(self) -> bool:
        """API keys are trusted integrators; pages (tokens, anonymous) get per-client limits."""
        return self.kind != "api_key"

    @property
    def anonymous(self) -> bool:
        """A page token minted without an API key (its subject is the caller's address)."""
        return self.client_id.startswith(ANON_PREFIX)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Authenticator:
    """API-key checks and stateless session tokens (`<payload>.<hmac>`, both base64url)."""

    def __init__(self, api_keys: list[str], secret: bytes | None, ttl_s: int) -> None:
        self._keys = [k.encode() for k in api_keys if k]
        # a random key per process unless configured: tokens die with a restart, which only
        # costs the page one retry (it re-mints on 401)
        self._secret = secret or secrets.token_bytes(32)
        self.ttl_s = ttl_s

    # api keys ---------------------------------------------------------------------------------
    def api_key_principal(self, presented: str) -> Principal | None:
        p = presented.encode()
        # compare against every key (no early exit) so timing doesn't tell which one is close
        match = None
        for k in self._keys:
            if hmac.compare_digest(k, p):
                match = k
        if match is None:
            return None
        return Principal(client_id="key:" + hashlib.sha256(match).hexdigest()[:12], kind="api_key")

    # tokens -----------------------------------------------------------------------------------
    def mint(self, client_id: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        payload = {"sub": client_id, "exp": int(now) + self.ttl_s, "jti": secrets.token_hex(8)}
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}"

    def verify_token(self, token: str, now: float | None = None) -> Principal:
        # compare_digest takes str only when both are ASCII (TypeError otherwise): compare bytes
        body, dot, sig = token.partition(".")
        if not dot or not hmac.compare_digest(sig.encode(), self._sign(body).encode()):
            raise AuthError("invalid token")
        try:
            payload = json.loads(_unb64(body))
            sub, exp = payload["sub"], payload["exp"]
            if not isinstance(sub, str) or not isinstance(exp, int):
                raise TypeError
        except (ValueError, TypeError, KeyError):  # signed by us, so this means a bug or a key leak
            raise AuthError("invalid token") from None
        if exp <= (time.time() if now is None else now):
            raise AuthError("token expired: mint a new one with POST /v1/sessions")
        return Principal(client_id=sub, kind="token")

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest()[:24])

    # requests ---------------------------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> Principal:
        """`Authorization` header -> Principal (API key or session token); raises AuthError."""
        if not authorization:
            raise AuthError("missing Authorization: Bearer <session token or API key>")
        if len(authorization) > MAX_CREDENTIAL_CHARS or not authorization.isascii():
            # keys and tokens are ASCII; anything else is refused before any HMAC work
            raise AuthError("malformed Authorization header: expected Bearer <ASCII token or API key>")
        scheme, _, cred = authorization.partition(" ")
        cred = cred.strip()
        if scheme.lower() != "bearer" or not cred:
            raise AuthError("expected Authorization: Bearer <session token or API key>")
        principal = self.api_key_principal(cred)
        if principal is not None:
            return principal
        return self.verify_token(cred)


class RateLimiter:
    """Token buckets per client: `per_min` actions a minute, bursts up to `per_min`.

    Bounded: at most `max_clients` buckets are kept (least recently used evicted; an evicted
    client starts with a full bucket, which is what an idle client would have anyway).
    `clock` is injectable so tests can let an hour pass.
    """

    def __init__(self, per_min: int, max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_min)
        self.rate = per_min / 60.0
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def allow(self, client_id: str) -> bool:
        now = self.clock()
        tokens, at = self._buckets.pop(client_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        ok = tokens >= 1.0
        self._buckets[client_id] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return ok

    def retry_after(self, client_id: str) -> int:
        """Whole seconds until `client_id` has a token again (for Retry-After)."""
        tokens, at = self._buckets.get(client_id, (self.capacity, self.clock()))
        tokens = min(self.capacity, tokens + (self.clock() - at) * self.rate)
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def __len__(self) -> int:
        return len(self._buckets)


# client identity ---------------------------------------------------------------------------------
def parse_networks(specs: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """`["10.0.0.0/8", "127.0.0.1"]` -> networks; raises ValueError naming a bad entry."""
    nets = []
    for spec in specs:
        try:
            nets.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR network: {spec!r}") from None
    return nets


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.strip().split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_address(
    peer: str | None,
    forwarded_for: str | None,
    trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> str | None:
    """The caller's address: the direct peer, or — only when the peer is a trusted proxy —
    the right-most address in `X-Forwarded-For` that is not itself a trusted proxy (entries to
    its left were written by the client and prove nothing)."""
    ip = _ip(peer)
    if ip is None or not trusted or not any(ip in n for n in trusted):
        return str(ip) if ip is not None else None
    for hop in reversed((forwarded_for or "").split(",")):
        hop_ip = _ip(hop)
        if hop_ip is None:
            break  # garbage from here on: stop at the last proxy we trust
        ip = hop_ip
        if not any(hop_ip in n for n in trusted):
            break
    return str(ip)


def anonymous_client_id(address: str | None) -> str:
    """Limits key: IPv4 by address, IPv6 by /64 (one subscriber gets a whole /64 and can
    pick a new address from it for every request)."""
    ip = _ip(address)
    if ip is None:
        return ANON_PREFIX + "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        return ANON_PREFIX + str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return ANON_PREFIX + str(ip)
