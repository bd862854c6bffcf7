from __future__ import annotations

import time

import pytest

from signaling.auth import (
    Authenticator,
    AuthError,
    Principal,
    RateLimiter,
    anonymous_client_id,
    client_address,
    parse_networks,
)


class Clock:
    """An injectable monotonic clock: tests move time instead of sleeping."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_tokens_round_trip_expire_and_resist_forgery() -> None:
    auth = Authenticator([], b"secret-1", ttl_s=60)
    now = time.time()
    tok = auth.mint("anon:1.2.3.4", now=now)
    p = auth.verify_token(tok, now=now + 59)
    assert p.client_id == "anon:1.2.3.4" and p.kind == "token" and p.limited and p.anonymous
    with pytest.raises(AuthError, match="expired"):
        auth.verify_token(tok, now=now + 61)
    with pytest.raises(AuthError, match="invalid"):
        Authenticator([], b"secret-2", ttl_s=60).verify_token(tok, now=now)  # another server's key
    body, sig = tok.split(".")
    for bad in (f"{body}x.{sig}", f"{body}.{sig[:-1]}", body, "", "a.b.c"):
        with pytest.raises(AuthError):
            auth.verify_token(bad, now=now)
    assert auth.mint("x") != auth.mint("x")  # unique per mint (jti)


def test_token_expiry_is_exact_to_the_second() -> None:
    """Valid until just before mint + ttl, expired at mint + ttl: no second more, no second less."""
    auth = Authenticator([], b"k", ttl_s=60)
    tok = auth.mint("anon:x", now=1000.0)
    assert auth.verify_token(tok, now=1059.999).client_id == "anon:x"
    with pytest.raises(AuthError, match="expired"):
        auth.verify_token(tok, now=1060.0)
    # a fractional mint time does not buy a second either
    tok = auth.mint("anon:x", now=1000.9)
    assert auth.verify_token(tok, now=1059.5).client_id == "anon:x"
    with pytest.raises(AuthError, match="expired"):
        auth.verify_token(tok, now=1060.0)


def test_default_secret_is_random_per_process() -> None:
    """Unset MICROTURN_TOKEN_SECRET must not mean a key anyone knows: two servers without
    one do not accept each other's tokens, and neither accepts a token signed with a guess."""
    a = Authenticator([], None, ttl_s=60)
    b = Authenticator([], None, ttl_s=60)
    tok = a.mint("anon:x")
    assert a.verify_token(tok).client_id == "anon:x"
    with pytest.raises(AuthError, match="invalid"):
        b.verify_token(tok)
    for guess in (b"", b"secret", b"microturn", b"changeme", b"\0" * 32):
        forged = Authenticator([], guess, ttl_s=60).mint("anon:x") if guess else None
        if forged is not None:
            with pytest.raises(AuthError, match="invalid"):
                a.verify_token(forged)


def test_api_keys_and_header_parsing() -> None:
    auth = Authenticator(["key-a", "key-b"], None, ttl_s=60)
    p = auth.authenticate("Bearer key-b")
    assert p.kind == "api_key" and not p.limited and p.client_id.startswith("key:") and "key-b" not in p.client_id
    assert not p.anonymous
    assert auth.authenticate("bearer  key-a ").kind == "api_key"
    assert auth.authenticate(f"Bearer {auth.mint('anon:x')}").kind == "token"
    for header in (None, "", "Bearer", "Bearer ", "Basic key-a", "key-a", "Bearer key-c"):
        with pytest.raises(AuthError):
            auth.authenticate(header)


@pytest.mark.parametrize(
    "header",
    [
        "Bearer é",
        "Bearer ключ",
        "Bearer key-a\u00e9",
        "Bearer \udcff",  # what a non-UTF-8 byte becomes with surrogateescape
        "Bearer abc.déf",  # looks like a token: reached compare_digest with str before
        "Bearer " + "a" * 5000,
    ],
)
def test_non_ascii_or_huge_credentials_are_auth_errors(header: str) -> None:
    """AuthError (-> 401), never TypeError (-> 500)."""
    auth = Authenticator(["key-a"], None, ttl_s=60)
    with pytest.raises(AuthError):
        auth.authenticate(header)


def test_token_verification_with_non_ascii_signature_is_an_auth_error() -> None:
    auth = Authenticator([], b"k", ttl_s=60)
    body, _ = auth.mint("anon:x").split(".")
    with pytest.raises(AuthError, match="invalid"):
        auth.verify_token(f"{body}.sïg")


def test_rate_limiter_refills_and_stays_bounded() -> None:
    clock = Clock(0.0)
    rl = RateLimiter(per_min=3, max_clients=2, clock=clock)
    assert [rl.allow("a") for _ in range(4)] == [True, True, True, False]
    assert rl.retry_after("a") == 20  # one token per 20 s, none left
    clock.t = 10.0
    assert not rl.allow("a")  # 10 s refill half a token
    assert rl.retry_after("a") == 10
    clock.t = 20.5
    assert rl.allow("a")  # one token after 20 s
    clock.t = 21.0
    rl.allow("b")
    rl.allow("c")
    assert len(rl) == 2  # the least recently used client was evicted


def test_idle_client_cannot_save_up_more_than_one_burst() -> None:
    """The bucket refills to `per_min` and no further: an hour idle is worth 30 requests, not 1800."""
    clock = Clock()
    rl = RateLimiter(per_min=30, clock=clock)
    assert rl.allow("a")
    clock.t += 3600.0
    granted = sum(rl.allow("a") for _ in range(100))
    assert granted == 30
    clock.t += 2.0  # two seconds buy one more
    assert [rl.allow("a"), rl.allow("a")] == [True, False]


def test_principal_kinds() -> None:
    assert Principal("anon:1.2.3.4", "token").anonymous
    assert not Principal("key:abc/xyz", "token").anonymous  # a page token an integrator minted
    assert not Principal("key:abc", "api_key").anonymous


def test_ipv6_clients_are_keyed_by_64() -> None:
    a = anonymous_client_id("2001:db8:1:2::1")
    assert a == "anon:2001:db8:1:2::/64"
    assert anonymous_client_id("2001:db8:1:2:ffff:ffff:ffff:ffff") == a  # same /64, any address
    assert anonymous_client_id("2001:db8:1:3::1") != a  # the next /64 is another client
    assert anonymous_client_id("fe80::1%eth0") == "anon:fe80::/64"
    assert anonymous_client_id("203.0.113.7") == "anon:203.0.113.7"
    assert anonymous_client_id("203.0.113.8") != anonymous_client_id("203.0.113.7")  # IPv4: per address
    assert anonymous_client_id("::ffff:203.0.113.7") == "anon:203.0.113.7"
    assert anonymous_client_id(None) == anonymous_client_id("garbage") == "anon:unknown"


def test_forwarded_for_only_from_trusted_proxies() -> None:
    proxies = parse_networks(["10.0.0.0/8", "192.0.2.1"])
    xff = "198.51.100.9, 203.0.113.5"
    assert client_address("10.1.2.3", xff, proxies) == "203.0.113.5"  # right-most untrusted hop
    assert client_address("192.0.2.1", xff, proxies) == "203.0.113.5"
    assert client_address("192.0.2.2", xff, proxies) == "192.0.2.2"  # not a trusted peer: header ignored
    assert client_address("10.1.2.3", xff, []) == "10.1.2.3"  # no trusted proxies: header ignored
    # proxies chained: skip every trusted hop, a client-written left part proves nothing
    assert client_address("10.0.0.1", "6.6.6.6, 203.0.113.5, 10.0.0.2", proxies) == "203.0.113.5"
    assert client_address("10.0.0.1", "10.0.0.3, 10.0.0.2", proxies) == "10.0.0.3"
    assert client_address("10.0.0.1", None, proxies) == "10.0.0.1"
    assert client_address("10.0.0.1", "garbage", proxies) == "10.0.0.1"
    assert client_address("10.0.0.1", "2001:db8::5", proxies) == "2001:db8::5"
    with pytest.raises(ValueError, match="not-an-ip"):
        parse_networks(["not-an-ip"])
