"""What only the Redis bus has: settings from a DSN, stream hygiene, surviving a restart."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from infra.bus import BusUnavailable
from infra.redis_bus import RedisBus, RedisSettings
from tests.redis_server import RedisServer


def test_settings_from_dsn_take_our_query_parameters() -> None:
    s = RedisSettings.from_dsn("redis://:pw@h:6390/2?stream_ttl_s=60&block_ms=250&backoff_max_s=0.5&ssl_cert_reqs=none")
    assert (s.stream_ttl_s, s.block_ms, s.backoff_max_s) == (60, 250, 0.5)
    assert s.url == "redis://:pw@h:6390/2?ssl_cert_reqs=none"
    assert RedisSettings.from_dsn("redis://h", stream_maxlen=5).stream_maxlen == 5
    with pytest.raises(ValueError, match="not a Redis URL"):
        RedisSettings.from_dsn("http://h:6379")


async def test_topics_are_capped_and_expire(redis_server: RedisServer) -> None:
    bus = RedisBus(RedisSettings.from_dsn(redis_server.url, stream_maxlen=100, stream_ttl_s=30))
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        for i in range(2000):
            await bus.publish("bg:results:s1", str(i).encode())
        # approximate trim: never unbounded, never below the cap
        assert 100 <= await r.xlen("bg:results:s1") < 400
        assert 0 < await r.ttl("bg:results:s1") <= 30
    finally:
        await r.aclose()
        await bus.close()


async def test_subscriber_survives_a_redis_restart(redis_server: RedisServer) -> None:
    bus = RedisBus(RedisSettings.from_dsn(redis_server.url, block_ms=100, backoff_max_s=0.2))
    try:
        sub = bus.subscribe("t")
        await bus.publish("t", b"before")
        assert await sub.get(5) == b"before"
        redis_server.stop(kill=True)
        with pytest.raises(BusUnavailable):
            await bus.publish("t", b"lost")
        await asyncio.sleep(0.3)  # the reader is failing and backing off now
        redis_server.start()
        await asyncio.sleep(0.05)
        for _ in range(100):  # the publisher reconnects on its own too
            try:
                await bus.publish("t", b"after")
                break
            except BusUnavailable:
                await asyncio.sleep(0.05)
        assert await sub.get(10) == b"after"
        assert sub.reconnects >= 1
        assert bus._subs["t"][0]._reader is not None and not bus._subs["t"][0]._reader.done()
    finally:
        await bus.close()


async def test_subscribe_while_redis_is_down_starts_when_it_is_back(redis_server: RedisServer) -> None:
    redis_server.stop(kill=True)
    bus = RedisBus(RedisSettings.from_dsn(redis_server.url, block_ms=100, backoff_max_s=0.2))
    try:
        sub = bus.subscribe("t")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sub.ready(), 0.3)
        redis_server.start()
        await asyncio.wait_for(sub.ready(), 5)
        await bus.publish("t", b"x")
        assert await sub.get(5) == b"x"
    finally:
        await bus.close()
