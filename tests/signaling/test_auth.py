from __future__ import annotations

import time

import pytest

from signaling.auth import Authenticator, AuthError, RateLimiter


def test_tokens_round_trip_expire_and_resist_forgery() -> None:
    auth = Authenticator([], b"secret-1", ttl_s=60)
    now = time.time()
    tok = auth.mint("anon:1.2.3.4", now=now)
    p = auth.verify_token(tok, now=now + 59)
    assert p.client_id == "anon:1.2.3.4" and p.kind == "token" and p.limited
    with pytest.raises(AuthError, match="expired"):
        auth.verify_token(tok, now=now + 61)
    with pytest.raises(AuthError, match="invalid"):
        Authenticator([], b"secret-2", ttl_s=60).verify_token(tok, now=now)  # another server's key
    body, sig = tok.split(".")
    for bad in (f"{body}x.{sig}", f"{body}.{sig[:-1]}", body, "", "a.b.c"):
        with pytest.raises(AuthError):
            auth.verify_token(bad, now=now)
    assert auth.mint("x") != auth.mint("x")  # unique per mint (jti)


def test_api_keys_and_header_parsing() -> None:
    auth = Authenticator(["key-a", "key-b"], None, ttl_s=60)
    p = auth.authenticate("Bearer key-b")
    assert p.kind == "api_key" and not p.limited and p.client_id.startswith("key:") and "key-b" not in p.client_id
    assert auth.authenticate("bearer  key-a ").kind == "api_key"
    assert auth.authenticate(f"Bearer {auth.mint('anon:x')}").kind == "token"
    for header in (None, "", "Bearer", "Bearer ", "Basic key-a", "key-a", "Bearer key-c"):
        with pytest.raises(AuthError):
            auth.authenticate(header)


def test_rate_limiter_refills_and_stays_bounded() -> None:
    rl = RateLimiter(per_min=3, max_clients=2)
    assert [rl.allow("a", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert rl.retry_after("a") >= 1
    assert not rl.allow("a", now=10.0)  # 10 s refill half a token
    assert rl.allow("a", now=20.5)  # one token after 20 s
    rl.allow("b", now=21.0)
    rl.allow("c", now=21.0)
    assert len(rl) == 2  # the least recently used client was evicted
