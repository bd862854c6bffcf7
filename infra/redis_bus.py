"""The message bus on Redis Streams, for edge, worker and agents in separate processes.

Same contract as `MemoryBus` (infra/bus.py): every subscriber of a topic gets every message
published after it subscribed, in publish order, through a bounded queue that drops the
oldest when its consumer falls behind.

- A topic is a stream. `publish` is XADD with an approximate MAXLEN trim plus an EXPIRE, in
  one round trip: topics are per session and short-lived, so a stream nobody writes to any
  more disappears by itself instead of being deleted by someone who might have crashed.
- Each subscription owns one reader task that XREADs (blocking) from the last id it saw. It
  starts from the id current when it subscribed (`Subscription.ready()` waits until that is
  known; `publish` on the same bus waits for it too, so in-process ordering is exact).
- Redis going away never ends a reader: it logs, backs off (bounded, exponential) and reads
  on from its last id once the server is back. A server that restarted without persistence
  lost whatever it held; callers that must not lose work detect that themselves (the task
  queue's `generation()`, infra/taskqueue.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from infra.bus import DEFAULT_QUEUE, Bus, BusClosed, BusUnavailable, Subscription
from infra.logging import get_logger

log = get_logger(__name__)

DATA = b"d"  # the one field of a bus stream entry


@dataclass(frozen=True)
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"
    stream_maxlen: int = 10_000  # per topic, approximate (XADD MAXLEN ~)
    stream_ttl_s: int = 3600  # a topic nobody published to for this long is deleted
    block_ms: int = 1000  # one blocking XREAD; bounds how long a closed reader lingers
    read_count: int = 256  # entries per XREAD
    connect_timeout_s: float = 2.0
    socket_timeout_s: float = 5.0  # > block_ms, or a blocking read would time out
    backoff_min_s: float = 0.05
    backoff_max_s: float = 2.0

    @classmethod
    def from_dsn(cls, dsn: str, **overrides: object) -> RedisSettings:
        """`redis://[:password@]host:port/db?stream_ttl_s=600&block_ms=500`: query parameters
        that name a field here are taken (and removed from the URL redis-py sees)."""
        parts = urlsplit(dsn)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"not a Redis URL: {dsn!r} (expected redis://host:port/db)")
        ours = {f.name: f.type for f in fields(cls) if f.name != "url"}
        kept, taken = [], {}
        for k, v in parse_qsl(parts.query):
            if k in ours:
                taken[k] = float(v) if ours[k] == "float" else int(v)
            else:
                kept.append((k, v))
        url = urlunsplit(parts._replace(query=urlencode(kept)))
        return replace(cls(url=url), **taken, **overrides)  # type: ignore[arg-type]

    def client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.connect_timeout_s,
            socket_timeout=self.socket_timeout_s,
            decode_responses=False,
        )


class Backoff:
    """Exponential backoff between reconnect attempts, reset by a success."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        self.delay = lo
        self.failures = 0

    async def wait(self) -> None:
        self.failures += 1
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.hi)

    def reset(self) -> None:
        self.delay = self.lo
        self.failures = 0


async def cancel_and_wait(task: asyncio.Task[Any], every_s: float = 0.2) -> None:
    """Cancel `task` and wait for it to end, cancelling again while it runs: redis-py can
    swallow a cancellation that lands at the wrong moment inside a command (redis-py #2028,
    #2551), which would leave a loop running forever after a single cancel()."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=every_s)
    with contextlib.suppress(asyncio.CancelledError):
        await task


class RedisSubscription(Subscription):
    def __init__(self, bus: RedisBus, topic: str, maxsize: int) -> None:
        super().__init__(bus, topic, maxsize)
        self._ready = asyncio.Event()
        self.reconnects = 0
        self._reader: asyncio.Task[None] | None = None

    async def ready(self) -> None:
        await self._ready.wait()


class RedisBus(Bus):
    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self._redis = settings.client()
        self._subs: dict[str, list[RedisSubscription]] = {}
        self._closed = False

    @classmethod
    def from_dsn(cls, dsn: str) -> RedisBus:
        return cls(RedisSettings.from_dsn(dsn))

    async def publish(self, topic: str, data: bytes) -> None:
        """Raises BusUnavailable when Redis cannot be reached (the caller decides whether a
        retry is worth it: stale media is not, a task result is)."""
        if self._closed:
            raise BusClosed("bus is closed")
        starting = [s._ready.wait() for s in self._subs.get(topic, ()) if not s._ready.is_set()]
        if starting:
            # A subscriber of this process that does not yet know where the stream stands
            # would miss this message; it finds out within one round trip when Redis is up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.socket_timeout_s):
                    await asyncio.gather(*starting)
        s = self.settings
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(topic, {DATA: data}, maxlen=s.stream_maxlen, approximate=True)
                pipe.expire(topic, s.stream_ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as e:
            raise BusUnavailable(f"redis: {e}") from e

    def subscribe(self, topic: str, maxsize: int = DEFAULT_QUEUE) -> RedisSubscription:
        if self._closed:
            raise BusClosed("bus is closed")
        sub = RedisSubscription(self, topic, maxsize)
        sub._reader = asyncio.create_task(self._read(sub), name=f"redis-bus-read:{topic}")
        self._subs.setdefault(topic, []).append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic)
        if subs and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.topic]
        reader = getattr(sub, "_reader", None)
        if reader is not None:
            reader.cancel()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        readers = [s._reader for subs in self._subs.values() for s in subs if s._reader is not None]
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close()
        for r in readers:
            await cancel_and_wait(r)
        await self._redis.aclose()

    async def _read(self, sub: RedisSubscription) -> None:
        s = self.settings
        backoff = Backoff(s.backoff_min_s, s.backoff_max_s)
        last_id: Any = None  # bytes entry id; redis-py's stubs type replies loosely
        # `_closed` as well as the cancel from close(): see cancel_and_wait
        while not sub._closed:
            try:
                if last_id is None:
                    # XREVRANGE, not "$": the id is fixed before the first read, so nothing
                    # published between subscribe() and that read is missed.
                    top = await self._redis.xrevrange(sub.topic, count=1)
                    last_id = top[0][0] if top else b"0-0"
                    sub._ready.set()
                resp: Any = await self._redis.xread({sub.topic: last_id}, count=s.read_count, block=s.block_ms)
                if backoff.failures:
                    log.info("bus.reconnected", topic=sub.topic, after_failures=backoff.failures)
                    sub.reconnects += 1
                backoff.reset()
                for _key, entries in resp or ():
                    for entry_id, entry in entries:
                        last_id = entry_id
                        data = entry.get(DATA)
                        if data is not None:
                            sub._deliver(data)
            except (RedisError, OSError) as e:
                if backoff.failures in (0, 5) or backoff.failures % 50 == 0:
                    log.warning("bus.redis_unavailable", topic=sub.topic, error=str(e), failures=backoff.failures)
                await backoff.wait()
