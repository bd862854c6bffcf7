"""Where a call's model session runs: the seam between the edge and the workers (issue 12).

`WorkerPool` is what signaling needs from workers: place a session (`open` -> the worker id
whose `keys.inputs(...)` stream takes its micro-turns), close it, find its current worker,
and the load for /readyz and the anonymous share.

- `LocalWorkers` wraps the in-process `model.worker.Worker` of `microturn serve`.
- `RedisWorkers` is the edge of a split deployment: placement through the registry's atomic
  reserve (infra/registry.py), SessionOpen / SessionClose as control requests on the worker's
  control stream with replies on this edge's reply stream. It also moves sessions: when a
  worker drains (its last output carries `WORKER_DRAINING`) or its heartbeat expires, the
  session is placed again with `restore=True` and the call's listener hears `session_moved`.

This module never imports `model` (an edge process must not load torch): the worker type is
for the type checker only and `LocalWorkers` reaches model code through the object it wraps.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec

from infra import keys, metrics
from infra.bus import BusClosed, BusUnavailable, Subscription
from infra.logging import get_logger
from infra.messages import ControlReply, SessionClose, SessionOpen
from infra.redis_bus import cancel_and_wait

if TYPE_CHECKING:
    from infra.redis_bus import RedisBus
    from infra.registry import WorkerRegistry
    from model.worker import Worker

log = get_logger(__name__)

RETRY_AFTER_S = 5.0  # what a full pool tells callers (Retry-After)

MoveReason = Literal["worker_draining", "worker_lost"]  # the worker handed it back | its heartbeat expired


class WorkersFull(Exception):
    """No worker can take the session now (-> 503 with Retry-After)."""

    def __init__(self, retry_after_s: float, message: str, *, capacity: int = 0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.message = message
        self.capacity = capacity


@dataclass(frozen=True)
class PoolStats:
    active: int  # sessions placed (reserved or open)
    capacity: int  # slots on the workers that take new sessions

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.active)


@dataclass(frozen=True)
class Move:
    """A session now runs on another worker (the page hears `session.moved`)."""

    session_id: str
    from_worker: str
    to_worker: str
    gap_ms: float  # from noticing the loss to the new worker's acknowledgement
    reason: MoveReason


class PlacementListener(Protocol):
    """What a call hears about its session's placement after `open` returned."""

    def session_moved(self, move: Move) -> None: ...

    def session_lost(self, reason: str, message: str) -> None: ...


class WorkerPool(Protocol):
    async def open(self, session_id: str, seed: int, *, listener: PlacementListener | None = None) -> str:
        """Place the session; returns its worker id. Raises WorkersFull."""
        ...

    async def close(self, session_id: str) -> None:
        """Release the session wherever it is (idempotent)."""
        ...

    def worker_of(self, session_id: str) -> str | None:
        """The worker the session's inputs go to now (changes when it moves)."""
        ...

    def move(self, session_id: str, reason: MoveReason) -> None:
        """Its worker gave the session back (drain): place it elsewhere, in the background."""
        ...

    def stats(self) -> PoolStats: ...

    def stalled_s(self) -> float:
        """Seconds the workers made no progress while sessions wait (0.0 when unknown)."""
        ...


def _full_message(capacity: int) -> str:
    return f"all {capacity} session slots in use; try again later"


class LocalWorkers:
    """The in-process worker of `microturn serve`: one worker, nothing ever moves."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.worker_id = worker.settings.worker_id
        self._sessions: set[str] = set()

    async def open(self, session_id: str, seed: int, *, listener: PlacementListener | None = None) -> str:
        from model.engine import CapacityError  # loaded already: the worker wraps an engine

        try:
            await self.worker.open(session_id, seed=seed)
        except CapacityError as e:
            raise WorkersFull(RETRY_AFTER_S, _full_message(e.max_sessions), capacity=e.max_sessions) from None
        self._sessions.add(session_id)
        return self.worker_id

    async def close(self, session_id: str) -> None:
        self._sessions.discard(session_id)
        await self.worker.close(session_id)

    def worker_of(self, session_id: str) -> str | None:
        return self.worker_id if session_id in self._sessions else None

    def move(self, session_id: str, reason: MoveReason) -> None:
        # one worker and it never drains alone: nowhere to go (its call ends on its own)
        log.warning("workers.move_impossible", session_id=session_id, reason=reason)

    def stats(self) -> PoolStats:
        s = self.worker.engine.stats()
        return PoolStats(active=s.active, capacity=s.max_sessions)

    def stalled_s(self) -> float:
        return self.worker.stalled_s()


@dataclass
class _Placement:
    worker_id: str
    seed: int
    listener: PlacementListener | None
    placed_at: float = field(default_factory=time.monotonic)
    moving: asyncio.Task[None] | None = None
    moves: int = 0


@dataclass(frozen=True)
class RedisWorkersSettings:
    reply_timeout_s: float = 3.0  # a worker that does not answer in time is skipped
    watch_s: float = 0.5  # how often the registry is read (load, lost workers)
    retry_after_s: float = RETRY_AFTER_S
    max_attempts: int = 8  # workers tried per placement before giving up


@dataclass
class _Counters:
    placements: int = 0
    refusals: int = 0  # "full" / "draining" / error replies
    timeouts: int = 0
    moves: int = 0
    lost: int = 0


class RedisWorkers:
    """Sessions on `microturn worker` processes, reached over Redis (no model code here)."""

    def __init__(
        self,
        bus: RedisBus,
        registry: WorkerRegistry,
        edge_id: str,
        settings: RedisWorkersSettings | None = None,
    ) -> None:
        self.bus = bus
        self.registry = registry
        self.edge_id = edge_id
        self.settings = settings or RedisWorkersSettings()
        self.counters = _Counters()
        self._reply_topic = keys.replies(edge_id)
        self._placed: dict[str, _Placement] = {}
        self._pending: dict[str, asyncio.Future[ControlReply]] = {}
        self._stats = PoolStats(active=0, capacity=0)
        self._live: set[str] = set()
        self._last_watch_ok = time.monotonic()
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._aside: set[asyncio.Task[None]] = set()  # moves and abandoned placements being cleaned up
        self._closed = False

    # lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._sub = self.bus.subscribe(self._reply_topic)
        # Redis away at startup: serve anyway (health, 503s) and catch up when it is back
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.bus.settings.socket_timeout_s):
                await self._sub.ready()
        await self._watch_once()
        self._tasks = [
            asyncio.create_task(self._read_replies(self._sub), name=f"workers:{self.edge_id}:replies"),
            asyncio.create_task(self._watch(), name=f"workers:{self.edge_id}:watch"),
        ]

    async def aclose(self) -> None:
        """Stop watching; sessions still placed are closed on their workers first."""
        for sid in list(self._placed):
            with contextlib.suppress(Exception):
                await self.close(sid)
        self._closed = True
        if self._aside:  # give-backs in flight are one publish each: let them land
            await asyncio.wait(list(self._aside), timeout=1.0)
        for t in list(self._aside):
            await cancel_and_wait(t)
        for t in self._tasks:
            await cancel_and_wait(t)
        self._tasks = []
        if self._sub is not None:
            self._sub.close()
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()

    # WorkerPool ---------------------------------------------------------------------------------
    async def open(self, session_id: str, seed: int, *, listener: PlacementListener | None = None) -> str:
        if self._closed:
            raise BusClosed("the worker pool is closed")
        worker_id = await self._place(session_id, seed, restore=False, exclude=())
        self._placed[session_id] = _Placement(worker_id, seed, listener)
        return worker_id

    async def close(self, session_id: str) -> None:
        p = self._placed.pop(session_id, None)
        if p is None:
            return
        if p.moving is not None:
            await cancel_and_wait(p.moving)  # an abandoned new placement cleans up after itself
        await self._release(p.worker_id, session_id, wait=True)

    def worker_of(self, session_id: str) -> str | None:
        p = self._placed.get(session_id)
        return None if p is None else p.worker_id

    def move(self, session_id: str, reason: MoveReason) -> None:
        p = self._placed.get(session_id)
        if p is None or p.moving is not None or self._closed:
            return
        p.moving = asyncio.create_task(self._move(session_id, p, reason), name=f"workers:move:{session_id}")
        self._aside.add(p.moving)
        p.moving.add_done_callback(self._aside.discard)

    def stats(self) -> PoolStats:
        return self._stats

    def stalled_s(self) -> float:
        """Seconds the registry has been unreadable while sessions are placed."""
        if not self._placed:
            return 0.0
        return max(0.0, time.monotonic() - self._last_watch_ok - 2 * self.settings.watch_s)

    # placement ----------------------------------------------------------------------------------
    async def _place(self, session_id: str, seed: int, *, restore: bool, exclude: tuple[str, ...]) -> str:
        started = time.monotonic()
        tried = list(exclude)
        for _ in range(self.settings.max_attempts):
            try:
                worker_id = await self.registry.reserve(session_id, exclude=tuple(tried))
            except (OSError, BusUnavailable) as e:
                raise WorkersFull(self.settings.retry_after_s, f"the worker registry is unreachable: {e}") from None
            except Exception as e:  # redis-py errors
                raise WorkersFull(self.settings.retry_after_s, f"the worker registry failed: {e!r}") from None
            if worker_id is None:
                break
            request = SessionOpen(
                request_id=secrets.token_hex(8),
                session_id=session_id,
                seed=seed,
                reply_to=self._reply_topic,
                restore=restore,
            )
            try:
                reply = await self._request(worker_id, request)
            except BaseException:
                # cancelled (the caller hung up) or the bus is gone: the worker may open it anyway
                self._abandon(worker_id, session_id)
                raise
            if reply is not None and reply.ok:
                self.counters.placements += 1
                metrics.PLACEMENTS.labels("placed").inc()
                metrics.PLACEMENT_SECONDS.observe(time.monotonic() - started)
                log.info("workers.placed", session_id=session_id, worker_id=worker_id, restore=restore)
                return worker_id
            if reply is None:
                self.counters.timeouts += 1
                metrics.PLACEMENTS.labels("timeout").inc()
                log.warning("workers.open_timeout", session_id=session_id, worker_id=worker_id)
                self._abandon(worker_id, session_id)  # it may still open it late
            else:
                self.counters.refusals += 1
                metrics.PLACEMENTS.labels("refused").inc()
                log.info("workers.open_refused", session_id=session_id, worker_id=worker_id, code=reply.code)
                await self._release_slot(worker_id, session_id)
            tried.append(worker_id)
        metrics.PLACEMENTS.labels("full").inc()
        cap = self._stats.capacity
        message = _full_message(cap) if cap else "no worker is available; try again later"
        raise WorkersFull(self.settings.retry_after_s, message, capacity=cap)

    async def _move(self, session_id: str, p: _Placement, reason: MoveReason) -> None:
        noticed = time.monotonic()
        old = p.worker_id
        log.warning("workers.moving", session_id=session_id, from_worker=old, reason=reason)
        # a draining worker already closed it and a dead one hears nothing, but a worker that was
        # only cut off (a pause past its heartbeat TTL) must not keep stepping it next to the new one
        await self._release(old, session_id, wait=False)
        try:
            new = await self._place(session_id, p.seed, restore=True, exclude=(old,))
        except WorkersFull as e:
            self.counters.lost += 1
            metrics.SESSION_MOVES.labels(reason, "lost").inc()
            p.moving = None
            if self._placed.get(session_id) is p:
                del self._placed[session_id]
            log.error("workers.move_failed", session_id=session_id, from_worker=old, error=e.message)
            if p.listener is not None:
                p.listener.session_lost("worker_lost", f"the model's worker went away and none is free: {e.message}")
            return
        p.worker_id = new
        p.placed_at = time.monotonic()
        p.moves += 1
        p.moving = None
        self.counters.moves += 1
        metrics.SESSION_MOVES.labels(reason, "moved").inc()
        move = Move(session_id, old, new, round((time.monotonic() - noticed) * 1000.0, 1), reason)
        log.info("workers.moved", session_id=session_id, from_worker=old, to_worker=new, gap_ms=move.gap_ms)
        if p.listener is not None:
            p.listener.session_moved(move)

    def _abandon(self, worker_id: str, session_id: str) -> None:
        """Give back a placement whose outcome is unknown, in the background (not cancellable
        by whoever gave up on it)."""
        if self._closed:
            return
        task = asyncio.create_task(
            self._release(worker_id, session_id, wait=False), name=f"workers:abandon:{session_id}"
        )
        self._aside.add(task)
        task.add_done_callback(self._aside.discard)

    async def _release(self, worker_id: str, session_id: str, *, wait: bool) -> None:
        """SessionClose to the worker (its reply awaited when `wait`), then free the slot."""
        request = SessionClose(request_id=secrets.token_hex(8), session_id=session_id, reply_to=self._reply_topic)
        try:
            if wait:
                reply = await self._request(worker_id, request)
                if reply is None:
                    log.warning("workers.close_timeout", session_id=session_id, worker_id=worker_id)
            else:
                await self.bus.publish(keys.worker_ctl(worker_id), msgspec.msgpack.encode(request))
        except (BusClosed, BusUnavailable) as e:
            log.warning("workers.close_unsent", session_id=session_id, worker_id=worker_id, error=str(e))
        await self._release_slot(worker_id, session_id)

    async def _release_slot(self, worker_id: str, session_id: str) -> None:
        try:
            await self.registry.release(worker_id, session_id)
        except Exception as e:  # Redis away: the worker's heartbeat rewrites its set anyway
            log.warning("workers.release_failed", session_id=session_id, worker_id=worker_id, error=repr(e))

    # control requests ---------------------------------------------------------------------------
    async def _request(self, worker_id: str, request: SessionOpen | SessionClose) -> ControlReply | None:
        """Send one control request; its reply, or None when none came in time."""
        fut: asyncio.Future[ControlReply] = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = fut
        try:
            await self.bus.publish(keys.worker_ctl(worker_id), msgspec.msgpack.encode(request))
            try:
                async with asyncio.timeout(self.settings.reply_timeout_s):
                    return await fut
            except TimeoutError:
                return None
        except BusUnavailable:
            return None
        finally:
            self._pending.pop(request.request_id, None)

    async def _read_replies(self, sub: Subscription) -> None:
        decoder = msgspec.msgpack.Decoder(ControlReply)
        async for data in sub:
            try:
                reply = decoder.decode(data)
            except msgspec.DecodeError as e:
                log.warning("workers.bad_reply", error=str(e))
                continue
            fut = self._pending.get(reply.request_id)
            if fut is not None and not fut.done():
                fut.set_result(reply)

    # the registry -------------------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_s)
            await self._watch_once()

    async def _watch_once(self) -> None:
        started = time.monotonic()
        try:
            live = await self.registry.live()
        except Exception as e:  # Redis away: keep the last picture, readyz shows the staleness
            log.warning("workers.registry_unreadable", error=repr(e))
            return
        self._last_watch_ok = time.monotonic()
        taking = [w for w in live if not w.draining]
        self._stats = PoolStats(active=sum(w.sessions for w in taking), capacity=sum(w.capacity for w in taking))
        metrics.POOL_SLOTS.labels("capacity").set(self._stats.capacity)
        metrics.POOL_SLOTS.labels("active").set(self._stats.active)
        self._live = {w.worker_id for w in live}
        for sid, p in list(self._placed.items()):
            # (placed since the read began: on a worker this picture may not show yet)
            if p.worker_id not in self._live and p.placed_at < started:  # heartbeat expired: gone
                self.move(sid, "worker_lost")
