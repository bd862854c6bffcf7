"""A work queue with consumer-group semantics for background tasks (DESIGN.md §7).

Every task goes to exactly one consumer at a time and stays *pending* (owned by that
consumer) until it is acked. A consumer that dies leaves its tasks pending; after `min_idle`
without a sign of life another consumer `reclaim`s them, and the delivery count tells how
often a task was handed out, so a task that keeps killing agents can be dead-lettered
instead of looping forever. A live consumer `touch`es what it is working on so a long task
is not mistaken for an abandoned one.

`RedisTaskQueue` is the real thing on one stream (bg:tasks) and group ("agents"):
XADD / XREADGROUP / XACK / XAUTOCLAIM (following its cursor) / XPENDING for delivery counts
/ XCLAIM JUSTID to touch. Dead letters go to bg:dead *before* the ack, so a crash between
the two duplicates a dead letter rather than losing a task. Trimming never drops an entry
that is not acked: Redis 7 has no ACKED trim option, so `trim` cuts with XTRIM MINID at the
oldest pending entry (or just past the last delivered one when none is pending).

`MemoryTaskQueue` has the same semantics in one process (`microturn serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.exceptions import RedisError, ResponseError

from infra import keys
from infra.bus import BusUnavailable
from infra.logging import get_logger
from infra.messages import BackgroundTask
from infra.redis_bus import RedisSettings

log = get_logger(__name__)

DEFAULT_MAX_TASKS = 10_000


class QueueFull(RuntimeError):
    pass


@dataclass(frozen=True)
class Delivery:
    entry_id: str  # position in the queue; ack/touch/dead_letter name the task by it
    task: BackgroundTask
    deliveries: int  # times handed to a consumer, this one included (1 = first delivery)


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str  # of the original task
    task: BackgroundTask
    reason: str
    deliveries: int


class TaskQueue(ABC):
    """All methods raise infra.bus.BusUnavailable when the backing store cannot be reached."""

    @abstractmethod
    async def submit(self, task: BackgroundTask) -> str:
        """Enqueue; returns the entry id. Raises QueueFull past the queue's bound."""

    @abstractmethod
    async def read(self, consumer: str, count: int, block_s: float) -> list[Delivery]:
        """Tasks never delivered before, now pending on `consumer`; waits up to block_s."""

    @abstractmethod
    async def reclaim(self, consumer: str, min_idle_s: float, count: int) -> list[Delivery]:
        """Tasks pending on any consumer for >= min_idle_s, now pending on `consumer`."""

    @abstractmethod
    async def touch(self, consumer: str, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of tasks `consumer` is still working on."""

    @abstractmethod
    async def ack(self, entry_id: str) -> None:
        """Done with the task (whatever the outcome): no one gets it again."""

    @abstractmethod
    async def release(self, delivery: Delivery) -> None:
        """Give an unfinished task back for another consumer to take at once (graceful
        shutdown); its delivery count starts over."""

    @abstractmethod
    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Record a task given up on. Does not ack: call ack after it."""

    @abstractmethod
    async def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """The newest dead letters, oldest first (operators and tests)."""

    @abstractmethod
    async def pending(self) -> int:
        """Tasks delivered and not acked."""

    @abstractmethod
    async def trim(self) -> int:
        """Drop acked entries from storage; returns how many went."""

    async def generation(self) -> int:
        """Changes when the queue's storage may have lost entries (a Redis server that
        restarted without persistence): submitters re-send what they still wait for."""
        return 0

    @abstractmethod
    async def close(self) -> None: ...


def _encode(task: BackgroundTask) -> bytes:
    return msgspec.msgpack.encode(task)


_decoder = msgspec.msgpack.Decoder(BackgroundTask)


# --- in process ---------------------------------------------------------------------------------


@dataclass
class _Pending:
    consumer: str
    since: float  # monotonic time of the last delivery or touch
    deliveries: int


class MemoryTaskQueue(TaskQueue):
    def __init__(self, max_tasks: int = DEFAULT_MAX_TASKS, max_dead: int = 1000) -> None:
        self.max_tasks = max_tasks
        self._entries: OrderedDict[int, BackgroundTask] = OrderedDict()  # not yet acked
        self._next = 1
        self._delivered_up_to = 0  # entries <= this were handed out at least once
        self._pending: dict[int, _Pending] = {}
        self._dead: deque[DeadLetter] = deque(maxlen=max_dead)
        self._wake = asyncio.Event()

    async def submit(self, task: BackgroundTask) -> str:
        if len(self._entries) >= self.max_tasks:
            raise QueueFull(f"{len(self._entries)} background tasks queued")
        n = self._next
        self._next += 1
        self._entries[n] = task
        self._wake.set()
        return _mid(n)

    async def read(self, consumer: str, count: int, block_s: float) -> list[Delivery]:
        deadline = time.monotonic() + block_s
        while True:
            out: list[Delivery] = []
            for n, task in self._entries.items():
                if len(out) >= count:
                    break
                if n > self._delivered_up_to:
                    self._delivered_up_to = n
                    self._pending[n] = _Pending(consumer, time.monotonic(), 1)
                    out.append(Delivery(_mid(n), task, 1))
            if out:
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()

    async def reclaim(self, consumer: str, min_idle_s: float, count: int) -> list[Delivery]:
        now = time.monotonic()
        out: list[Delivery] = []
        for n, p in sorted(self._pending.items()):
            if len(out) >= count:
                break
            if now - p.since >= min_idle_s:
                p.consumer, p.since, p.deliveries = consumer, now, p.deliveries + 1
                out.append(Delivery(_mid(n), self._entries[n], p.deliveries))
        return out

    async def touch(self, consumer: str, entry_ids: Sequence[str]) -> None:
        now = time.monotonic()
        for eid in entry_ids:
            p = self._pending.get(_num(eid))
            if p is not None:
                p.consumer, p.since = consumer, now

    async def ack(self, entry_id: str) -> None:
        n = _num(entry_id)
        if self._pending.pop(n, None) is not None:
            self._entries.pop(n, None)

    async def release(self, delivery: Delivery) -> None:
        n = _num(delivery.entry_id)
        if self._pending.pop(n, None) is not None:
            task = self._entries.pop(n)
            m = self._next
            self._next += 1
            self._entries[m] = task
            self._wake.set()

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._dead.append(DeadLetter(delivery.entry_id, delivery.task, reason, delivery.deliveries))

    async def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        return list(self._dead)[-count:]

    async def pending(self) -> int:
        return len(self._pending)

    async def trim(self) -> int:
        return 0  # acked entries are dropped at ack time

    async def close(self) -> None:
        self._wake.set()


def _mid(n: int) -> str:
    return f"{n}-0"


def _num(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


# --- Redis ------------------------------------------------------------------------------------------

TASK = b"t"


class RedisTaskQueue(TaskQueue):
    def __init__(
        self,
        settings: RedisSettings,
        *,
        stream: str | None = None,
        group: str = keys.AGENT_GROUP,
        dead_stream: str | None = None,
        max_tasks: int = DEFAULT_MAX_TASKS,
        max_dead: int = 10_000,
    ) -> None:
        self.settings = settings
        self.stream = stream or keys.bg_tasks()
        self.group = group
        self.dead_stream = dead_stream or keys.bg_dead()
        self.max_tasks = max_tasks
        self.max_dead = max_dead
        self._redis = settings.client()
        self._group_ready = False
        self._cursor = b"0-0"  # XAUTOCLAIM resumes where its last call stopped
        self._run_id: bytes | None = None
        self._generation = 0
        self._unbased = False  # an entry went in while the server's run_id was unknown

    @classmethod
    def from_dsn(cls, dsn: str) -> RedisTaskQueue:
        return cls(RedisSettings.from_dsn(dsn))

    async def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run one command; create the group when Redis lost it (a restart without
        persistence, or a fresh server) and try once more; connection trouble becomes
        BusUnavailable."""
        try:
            if not self._group_ready:
                await self._ensure_group()
            try:
                return await fn(*args, **kw)
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                log.warning("taskqueue.group_missing", stream=self.stream, group=self.group)
                self._group_ready = False
                await self._ensure_group()
                return await fn(*args, **kw)
        except ResponseError:
            raise
        except (RedisError, OSError) as e:
            self._group_ready = False
            raise BusUnavailable(f"redis: {e}") from e

    async def _ensure_group(self) -> None:
        try:
            # id 0: tasks submitted before any agent existed are delivered too
            await self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    async def submit(self, task: BackgroundTask) -> str:
        # One round trip: add, then look at the length; over the cap the entry is taken back.
        # (Concurrent submitters may briefly overshoot by a few: a cap against runaway growth.)
        async def add() -> tuple[bytes, int]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self.stream, {TASK: _encode(task)})
                pipe.xlen(self.stream)
                eid, n = await pipe.execute()
            return eid, int(n)

        eid, n = await self._call(add)
        self._unbased |= self._run_id is None
        if n > self.max_tasks:
            await self._call(self._redis.xdel, self.stream, eid)
            raise QueueFull(f"{n - 1} background tasks queued")
        return _str(eid)

    async def read(self, consumer: str, count: int, block_s: float) -> list[Delivery]:
        block_ms = max(1, int(block_s * 1000))
        resp = await self._call(
            self._redis.xreadgroup, self.group, consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        out: list[Delivery] = []
        for _key, entries in resp or ():
            for eid, fields in entries:
                d = self._delivery(eid, fields, 1)
                if d is not None:
                    out.append(d)
                else:
                    await self._call(self._redis.xack, self.stream, self.group, eid)
        return out

    async def reclaim(self, consumer: str, min_idle_s: float, count: int) -> list[Delivery]:
        resp = await self._call(
            self._redis.xautoclaim,
            self.stream,
            self.group,
            consumer,
            int(min_idle_s * 1000),
            start_id=self._cursor,
            count=count,
        )
        self._cursor = resp[0]
        entries = [(eid, fields) for eid, fields in resp[1] if fields]
        if not entries:
            return []
        # XAUTOCLAIM does not say how often an entry was delivered; XPENDING does.
        ids = [e[0] for e in entries]
        rows = await self._call(
            self._redis.xpending_range,
            self.stream,
            self.group,
            min=min(ids, key=_order),
            max=max(ids, key=_order),
            count=len(ids) + 64,
            consumername=consumer,
        )
        counts = {_str(r["message_id"]): int(r["times_delivered"]) for r in rows}
        out: list[Delivery] = []
        for eid, fields in entries:
            d = self._delivery(eid, fields, counts.get(_str(eid), 2))
            if d is not None:
                out.append(d)
            else:
                await self._call(self._redis.xack, self.stream, self.group, eid)
        return out

    async def touch(self, consumer: str, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            # XCLAIM to itself with JUSTID resets the idle time without counting a delivery
            await self._call(self._redis.xclaim, self.stream, self.group, consumer, 0, list(entry_ids), justid=True)

    async def ack(self, entry_id: str) -> None:
        await self._call(self._redis.xack, self.stream, self.group, entry_id)

    async def release(self, delivery: Delivery) -> None:
        async def requeue() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xadd(self.stream, {TASK: _encode(delivery.task)})
                pipe.xack(self.stream, self.group, delivery.entry_id)
                await pipe.execute()

        await self._call(requeue)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        fields = {
            TASK: _encode(delivery.task),
            b"reason": reason.encode(),
            b"entry": delivery.entry_id.encode(),
            b"deliveries": str(delivery.deliveries).encode(),
            b"at": f"{time.time():.3f}".encode(),
        }
        await self._call(self._redis.xadd, self.dead_stream, fields, maxlen=self.max_dead, approximate=True)

    async def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        rows = await self._call(self._redis.xrevrange, self.dead_stream, count=count)
        out = []
        for _eid, f in reversed(rows):
            out.append(
                DeadLetter(
                    entry_id=_str(f[b"entry"]),
                    task=_decoder.decode(f[TASK]),
                    reason=_str(f[b"reason"]),
                    deliveries=int(f[b"deliveries"]),
                )
            )
        return out

    async def pending(self) -> int:
        info = await self._call(self._redis.xpending, self.stream, self.group)
        return int(info["pending"])

    async def trim(self) -> int:
        groups = await self._call(self._redis.xinfo_groups, self.stream)
        group = next((g for g in groups if _str(g["name"]) == self.group), None)
        if group is None:
            return 0
        summary = await self._call(self._redis.xpending, self.stream, self.group)
        # XINFO before XPENDING: an entry delivered in between has an id past the stale
        # last-delivered-id, so the cut can only be too cautious, never too deep.
        # Pending: cut at the oldest entry someone still works on; none: everything before
        # the last delivered entry was delivered and acked.
        minid = summary["min"] if summary["pending"] else group["last-delivered-id"]
        if _order(minid) == (0, 0):
            return 0
        return int(await self._call(self._redis.xtrim, self.stream, minid=minid, approximate=False))

    async def generation(self) -> int:
        try:
            info = await self._redis.info("server")
        except (RedisError, OSError):
            return self._generation  # unknown yet; asked again on the next call
        run_id = info.get("run_id")
        if isinstance(run_id, str):
            run_id = run_id.encode()
        # A server first seen after entries went in may not be the one that took them: count
        # it as a restart too (a needless re-send is harmless, a lost task is not).
        if run_id != self._run_id and (self._run_id is not None or self._unbased):
            self._generation += 1
            self._group_ready = False
            self._cursor = b"0-0"
            log.warning("taskqueue.redis_restarted", generation=self._generation)
        self._run_id = run_id
        self._unbased = False
        return self._generation

    async def close(self) -> None:
        await self._redis.aclose()

    def _delivery(self, eid: bytes, fields: dict[bytes, bytes], deliveries: int) -> Delivery | None:
        try:
            task = _decoder.decode(fields[TASK])
        except (KeyError, msgspec.DecodeError) as e:
            # not ours to run and never will be: ack it away rather than loop on it
            log.error("taskqueue.bad_entry", entry=_str(eid), error=str(e))
            return None
        return Delivery(_str(eid), task, deliveries)


def _str(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _order(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = _str(entry_id).partition("-")
    return int(ms), int(seq or 0)
