"""Which workers are alive, how full they are, and atomic placement of a session on one.

A worker registers a hash (capacity, draining, started_at) whose EXPIRE is the heartbeat TTL
and adds its id to one set. A worker that stops heartbeating (kill -9, a lost host) vanishes
from placement when its hash expires; its id is dropped from the set by whoever reads next.

`reserve` is one Lua script, so the read of every worker's load and the SADD of the new session
happen with nothing in between: two edges placing at once can never both take a worker's last
slot (Redis runs a script to completion before any other command).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from infra import keys

# KEYS[1] = the workers set. ARGV[1] = worker hash prefix, ARGV[2] = sessions-set suffix,
# ARGV[3] = session id, ARGV[4..] = excluded worker ids.
_RESERVE = """
local prefix, suffix, session = ARGV[1], ARGV[2], ARGV[3]
local excluded = {}
for i = 4, #ARGV do excluded[ARGV[i]] = true end
local best, best_n = false, 0
local candidates = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = prefix .. id
  local fields = redis.call('HMGET', h, 'capacity', 'draining')
  if fields[1] == false then
    redis.call('SREM', KEYS[1], id)  -- heartbeat expired: the worker is gone
  elseif not excluded[id] and fields[2] ~= '1' then
    local s = h .. suffix
    if redis.call('SISMEMBER', s, session) == 1 then
      return id  -- already reserved here (a retried placement): same answer
    end
    local n = redis.call('SCARD', s)
    if n < tonumber(fields[1]) and (best == false or n < best_n or (n == best_n and id < best)) then
      best, best_n = id, n
    end
  end
end
if best then
  redis.call('SADD', prefix .. best .. suffix, session)
end
return best
"""


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    capacity: int
    sessions: int
    draining: bool


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class WorkerRegistry:
    """Works on any redis.asyncio client (bytes or decoded replies)."""

    def __init__(self, redis: aioredis.Redis, ttl_s: float = 3.0) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.redis = redis
        self.ttl_s = ttl_s
        self._ttl_ms = max(1, int(ttl_s * 1000))
        # a dead worker's sessions set outlives its hash a while, so whoever re-places its
        # sessions can still read it; then it goes by itself
        self._sessions_ttl_s = max(60, int(ttl_s * 20))
        self._capacity: dict[str, int] = {}  # what this process registered: heartbeat rewrites it
        self._reserve = self.redis.register_script(_RESERVE)
        self._prefix = keys.worker("")
        self._suffix = keys.worker_sessions("")[len(self._prefix) :]

    async def register(self, worker_id: str, capacity: int) -> None:
        """A fresh worker process: capacity, not draining, no sessions (a previous process of
        the same id had its sessions' KV caches die with it)."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity[worker_id] = capacity
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.worker_sessions(worker_id))
            pipe.hset(
                keys.worker(worker_id),
                mapping={"capacity": capacity, "draining": 0, "started_at": f"{time.time():.3f}"},
            )
            pipe.pexpire(keys.worker(worker_id), self._ttl_ms)
            pipe.sadd(keys.workers(), worker_id)
            await pipe.execute()

    async def heartbeat(self, worker_id: str, *, draining: bool = False, sessions: tuple[str, ...] = ()) -> None:
        """Refresh the TTL. Rewrites the hash too, so a worker whose entry was lost (a Redis
        restart, a pause longer than the TTL) is back after one beat; `sessions` (the ones
        open on it) are re-added for the same reason."""
        cap = self._capacity.get(worker_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.worker(worker_id), "draining", int(draining))
            if cap is not None:
                pipe.hset(keys.worker(worker_id), "capacity", cap)
            pipe.hsetnx(keys.worker(worker_id), "started_at", f"{time.time():.3f}")
            pipe.pexpire(keys.worker(worker_id), self._ttl_ms)
            pipe.sadd(keys.workers(), worker_id)
            if sessions:
                pipe.sadd(keys.worker_sessions(worker_id), *sessions)
            pipe.expire(keys.worker_sessions(worker_id), self._sessions_ttl_s)
            await pipe.execute()

    async def deregister(self, worker_id: str) -> None:
        self._capacity.pop(worker_id, None)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(keys.workers(), worker_id)
            pipe.delete(keys.worker(worker_id), keys.worker_sessions(worker_id))
            await pipe.execute()

    async def live(self) -> list[WorkerInfo]:
        """Every worker whose heartbeat has not expired, by id."""
        ids = sorted(_s(i) for i in await self.redis.smembers(keys.workers()))
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for wid in ids:
                pipe.hmget(keys.worker(wid), ["capacity", "draining"])
                pipe.scard(keys.worker_sessions(wid))
            replies = await pipe.execute()
        out, gone = [], []
        for i, wid in enumerate(ids):
            cap, draining = replies[2 * i]
            if cap is None:
                gone.append(wid)
                continue
            out.append(
                WorkerInfo(
                    worker_id=wid, capacity=int(cap), sessions=int(replies[2 * i + 1]), draining=_s(draining) == "1"
                )
            )
        if gone:
            await self.redis.srem(keys.workers(), *gone)
        return out

    async def reserve(self, session_id: str, exclude: tuple[str, ...] = ()) -> str | None:
        """Take a slot for `session_id` on the least-loaded live, non-draining worker with one
        free (ties: lowest id); None when there is none."""
        got = await self._reserve(keys=[keys.workers()], args=[self._prefix, self._suffix, session_id, *exclude])
        return None if got is None else _s(got)

    async def release(self, worker_id: str, session_id: str) -> None:
        await self.redis.srem(keys.worker_sessions(worker_id), session_id)

    async def sessions_of(self, worker_id: str) -> set[str]:
        return {_s(s) for s in await self.redis.smembers(keys.worker_sessions(worker_id))}
