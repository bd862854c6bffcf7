"""A worker process: an engine serving the sessions edges place on it over Redis.

`WorkerService` wraps model.worker.Worker (bus in, engine thread, bus out) with what a worker
needs once it lives in a process of its own (DESIGN.md §9):

- it registers in the WorkerRegistry and heartbeats every ttl/3, so edges place sessions on it
  while it lives and stop the moment its heartbeat expires;
- edges open and close sessions with control messages on keys.worker_ctl(worker_id), answered
  on the request's reply_to; the registry's session set follows (released on close, on a
  refused open, and for reservations whose edge never sent the open);
- drain (SIGTERM): the heartbeat says draining (no new placements), opens are refused, running
  sessions go on until the deadline; then each one still open gets a last output with error
  WORKER_DRAINING (its edge places it again elsewhere) and is closed.
- failover: every turn's TurnRecord (what it put into the session's sequence) is appended to
  keys.session_log(session), trimmed to the turns the window holds, with turn 0 (the attention
  sinks) kept apart in keys.session_log_head; written by one task of its own, off the step
  path, so the log costs the caller no latency. SessionOpen(restore=True) reads that log and rebuilds
  the session (model/engine.py `Engine.restore`); no log, or one that cannot be used, opens
  the session fresh (the call goes on without its context rather than not at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import cast

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from infra import keys, metrics
from infra.bus import Bus, BusClosed, BusUnavailable, Subscription
from infra.logging import get_logger
from infra.messages import (
    WORKER_DRAINING,
    ControlReply,
    ControlRequest,
    MicroTurnOutput,
    SessionClose,
    SessionOpen,
    TurnRecord,
)
from infra.redis_bus import DATA, cancel_and_wait
from infra.registry import WorkerRegistry
from model.engine import CapacityError, Engine
from model.worker import Worker, WorkerSettings

log = get_logger(__name__)

CAPACITY = Gauge("microturn_worker_capacity", "Session slots of this worker")
DRAINING = Gauge("microturn_worker_draining", "1 while this worker drains (takes no new sessions)")
LOG_DROPPED = Counter("microturn_turn_log_dropped_total", "Turn records not logged (writer behind or Redis away)")
RESTORED = Counter("microturn_sessions_restored_total", "Sessions opened from their turn log", ["outcome"])

LOG_QUEUE = 64  # steps' worth of records waiting for the writer


@dataclass(frozen=True)
class ServiceSettings:
    worker_id: str
    ttl_s: float = 3.0  # heartbeat TTL; a beat every ttl/3
    drain_s: float = 20.0  # SIGTERM: how long running sessions may go on before they are moved
    # a session reserved on this worker that it has not had open for this long is released
    # (the edge that reserved it died before sending the open)
    reserve_grace_s: float = 10.0
    stall_s: float = 10.0  # /healthz answers 503 past this engine stall
    log_turns: bool = True  # keep the failover log (keys.session_log)
    # a session's log outlives its last write by this much: enough for a heartbeat to expire and the
    # edge to place the session again, short because the log holds the caller's audio (as dMel bins)
    log_ttl_s: float = 60.0


class WorkerService:
    def __init__(
        self, engine: Engine, bus: Bus, registry: WorkerRegistry, settings: ServiceSettings, *, turn_ms: float = 200.0
    ) -> None:
        self.engine = engine
        self.bus = bus
        self.registry = registry
        self.settings = settings
        self.worker_id = settings.worker_id
        self.worker = Worker(
            engine, bus, WorkerSettings(worker_id=settings.worker_id, turn_ms=turn_ms), on_records=self._queue_records
        )
        engine.log_turns = settings.log_turns
        cfg = engine.model.cfg
        # every turn holds at least 2 * positions_per_turn positions: this many cover the window
        self.log_turns = cfg.window // (2 * cfg.positions_per_turn) + 1
        self._log_q: asyncio.Queue[list[TurnRecord]] = asyncio.Queue(maxsize=LOG_QUEUE)
        self.draining = False
        self.moved = 0  # sessions handed back at the drain deadline
        self._open: set[str] = set()  # opened through us and not yet closed (the engine may have failed some)
        self._unknown_since: dict[str, float] = {}  # reserved here but not open: first seen (monotonic)
        self._tasks: list[asyncio.Task[None]] = []
        self._ctl: Subscription | None = None
        self._decoder = msgspec.msgpack.Decoder(ControlRequest)

    # lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.worker.start()
        self._ctl = self.bus.subscribe(keys.worker_ctl(self.worker_id))
        await self._ctl.ready()  # requests sent once we are placeable are not missed
        await self.registry.register(self.worker_id, self.engine.max_sessions)
        CAPACITY.set(self.engine.max_sessions)
        DRAINING.set(0)
        self._tasks = [
            asyncio.create_task(self._serve_control(self._ctl), name="worker-control"),
            asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeat"),
        ]
        if self.settings.log_turns:
            self._tasks.append(asyncio.create_task(self._write_log(), name="worker-turn-log"))
        log.info("worker.registered", worker_id=self.worker_id, capacity=self.engine.max_sessions)

    async def drain(self, deadline_s: float | None = None) -> None:
        """No new sessions; wait for the running ones to end until the deadline, then move the rest."""
        deadline_s = self.settings.drain_s if deadline_s is None else deadline_s
        self.draining = True
        DRAINING.set(1)
        log.info("worker.draining", worker_id=self.worker_id, sessions=len(self.sessions()), deadline_s=deadline_s)
        await self._beat()
        end = time.monotonic() + deadline_s
        while self.sessions() and time.monotonic() < end:
            await asyncio.sleep(min(0.05, max(0.0, end - time.monotonic())))
        for sid in sorted(self.sessions()):
            await self._hand_back(sid)

    async def stop(self) -> None:
        """Leave the registry and stop (sessions still open are simply closed: drain first)."""
        for t in self._tasks:
            await cancel_and_wait(t)
        self._tasks = []
        if self._ctl is not None:
            self._ctl.close()
        with contextlib.suppress(Exception):  # Redis down at exit: the heartbeat TTL removes us
            await self.registry.deregister(self.worker_id)
        await self.worker.stop()
        log.info("worker.stopped", worker_id=self.worker_id, moved=self.moved)

    def sessions(self) -> set[str]:
        """Sessions open here now (a session the engine closed after a failed step is gone)."""
        self._open = {s for s in self._open if s in self.engine}
        return set(self._open)

    # control ------------------------------------------------------------------------------
    async def _serve_control(self, sub: Subscription) -> None:
        # one at a time, in order: an open and a close of one session never race
        async for data in sub:
            try:
                req = self._decoder.decode(data)
            except msgspec.DecodeError as e:
                log.warning("worker.bad_control", error=str(e))
                continue
            try:
                reply = await self._handle(req)
            except Exception as e:  # one bad request must not end the control loop
                log.exception("worker.control_failed", session_id=req.session_id)
                reply = self._reply(req, ok=False, code="error", error=f"{type(e).__name__}: {e}"[:300])
            try:
                await self.bus.publish_struct(req.reply_to, reply)
            except BusClosed:
                return
            except BusUnavailable as e:
                log.warning("worker.reply_lost", session_id=req.session_id, error=str(e))

    async def _handle(self, req: SessionOpen | SessionClose) -> ControlReply:
        sid = req.session_id
        if isinstance(req, SessionClose):
            # the log stays until it expires: the edge also closes on the old worker when it moves a
            # session, and deleting here would race the new worker's restore
            await self._close(sid)
            return self._reply(req, ok=True)
        if sid in self.sessions():  # a retried open: already done
            return self._reply(req, ok=True)
        if self.draining:
            await self.registry.release(self.worker_id, sid)
            return self._reply(req, ok=False, code="draining", error=f"worker {self.worker_id} is draining")
        try:
            restored = await self._open_session(req)
        except CapacityError as e:
            await self.registry.release(self.worker_id, sid)
            return self._reply(req, ok=False, code="full", error=str(e))
        self._open.add(sid)
        self._unknown_since.pop(sid, None)
        # the edge reserved it already; an open that did not go through reserve counts too
        await self.registry.heartbeat(self.worker_id, draining=self.draining, sessions=(sid,))
        log.info("worker.session_opened", session_id=sid, restore=req.restore, restored_turns=restored)
        return self._reply(req, ok=True)

    async def _open_session(self, req: SessionOpen) -> int:
        """Open (or restore) req's session; the number of logged turns it was rebuilt from."""
        if not req.restore:
            await self.worker.open(req.session_id, req.seed)
            return 0
        try:
            records = await self._read_log(req.session_id)
        except Exception as e:  # Redis trouble or a log we cannot decode: go on without it
            log.warning("worker.turn_log_unreadable", session_id=req.session_id, error=str(e))
            records = []
        if records:
            try:
                t0 = time.perf_counter()
                await self.worker.restore(req.session_id, req.seed, records)
                RESTORED.labels("ok").inc()
                log.info(
                    "worker.session_restored", session_id=req.session_id, turns=len({r.turn for r in records}),
                    restore_ms=round((time.perf_counter() - t0) * 1000, 1),
                )  # fmt: skip
                return len({r.turn for r in records})  # the head record may also be in the stream
            except CapacityError:
                raise
            except Exception as e:
                RESTORED.labels("failed").inc()
                log.warning("worker.restore_failed", session_id=req.session_id, error=f"{type(e).__name__}: {e}")
        else:
            RESTORED.labels("empty").inc()
        await self.worker.open(req.session_id, req.seed)
        return 0

    async def _read_log(self, sid: str) -> list[TurnRecord]:
        """The head record and the newest `log_turns` records, oldest first."""
        r = self.registry.redis
        # the bus's client returns bytes (decode_responses is off)
        head = cast("bytes | None", await r.get(keys.session_log_head(sid)))
        entries = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]", await r.xrevrange(keys.session_log(sid), count=self.log_turns)
        )
        raw: list[bytes] = [head] if head is not None else []
        raw += [fields[DATA] for _, fields in reversed(entries)]
        return [_RECORD.decode(b) for b in raw]

    def _queue_records(self, records: list[TurnRecord]) -> None:
        """Called after each step (event loop): hand the records to the writer, never block."""
        if self._log_q.full():  # writer behind: the oldest step goes (a restore uses the newest run)
            LOG_DROPPED.inc(len(self._log_q.get_nowait()))
        self._log_q.put_nowait(records)

    async def _write_log(self) -> None:
        r = self.registry.redis
        ttl = max(1, int(self.settings.log_ttl_s))
        while True:
            records = await self._log_q.get()
            try:
                async with r.pipeline(transaction=False) as pipe:
                    for rec in records:
                        data = msgspec.msgpack.encode(rec)
                        key = keys.session_log(rec.session_id)
                        pipe.xadd(key, {DATA: data}, maxlen=self.log_turns, approximate=True)
                        pipe.expire(key, ttl)
                        if rec.turn == 0:
                            pipe.set(keys.session_log_head(rec.session_id), data, ex=ttl)
                        else:
                            pipe.expire(keys.session_log_head(rec.session_id), ttl)
                    await pipe.execute()
            except Exception as e:  # Redis away: the call goes on; a failover then has less to go on
                LOG_DROPPED.inc(len(records))
                log.warning("worker.turn_log_failed", records=len(records), error=str(e))

    def _reply(self, req: SessionOpen | SessionClose, *, ok: bool, code: str = "", error: str = "") -> ControlReply:
        return ControlReply(request_id=req.request_id, ok=ok, worker_id=self.worker_id, code=code, error=error)

    async def _close(self, sid: str) -> None:
        self._open.discard(sid)
        await self.worker.close(sid)
        with contextlib.suppress(Exception):  # the reconcile pass releases it later
            await self.registry.release(self.worker_id, sid)

    async def _hand_back(self, sid: str) -> None:
        """Close `sid` here and tell its edge to place it again (the drain deadline passed)."""
        turn = self.engine.session(sid).turn if sid in self.engine else 0
        await self._close(sid)
        self.moved += 1
        out = MicroTurnOutput(session_id=sid, turn=turn, audio=b"", gap=True, error=WORKER_DRAINING)
        try:
            await self.bus.publish_struct(keys.outputs(sid), out)
        except (BusClosed, BusUnavailable) as e:
            log.warning("worker.hand_back_lost", session_id=sid, error=str(e))
        log.info("worker.session_handed_back", session_id=sid)

    # registry -----------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        every = self.settings.ttl_s / 3
        while True:
            try:
                await self._beat()
                await self._reconcile()
            except Exception as e:  # Redis away: keep beating, the TTL covers short outages
                log.warning("worker.heartbeat_failed", error=str(e))
            metrics.ACTIVE_SESSIONS.set(self.engine.stats().active)
            await asyncio.sleep(every)

    async def _beat(self) -> None:
        await self.registry.heartbeat(self.worker_id, draining=self.draining, sessions=tuple(self.sessions()))

    async def _reconcile(self) -> None:
        """Release reservations this worker never got an open for, and sessions the engine closed."""
        now = time.monotonic()
        reserved = await self.registry.sessions_of(self.worker_id)
        unknown = reserved - self.sessions()
        self._unknown_since = {s: self._unknown_since.get(s, now) for s in unknown}
        for sid, since in list(self._unknown_since.items()):
            if now - since >= self.settings.reserve_grace_s and sid not in self.sessions():
                await self.registry.release(self.worker_id, sid)
                del self._unknown_since[sid]
                log.info("worker.reservation_released", session_id=sid)

    # http ---------------------------------------------------------------------------------
    def http_app(self, ops_key: str | None = None) -> web.Application:
        """/healthz (liveness: 503 when the engine is stalled), /readyz (503 while draining),
        /metrics (Prometheus; a bearer `ops_key` when set)."""

        async def healthz(_: web.Request) -> web.Response:
            stalled = self.worker.stalled_s()
            body = {
                "worker_id": self.worker_id,
                "sessions": len(self.sessions()),
                "capacity": self.engine.max_sessions,
                "draining": self.draining,
                "stalled_s": round(stalled, 3),
            }
            return web.json_response(body, status=503 if stalled > self.settings.stall_s else 200)

        async def readyz(_: web.Request) -> web.Response:
            ready = not self.draining and self.worker.stalled_s() <= self.settings.stall_s
            return web.json_response({"ready": ready}, status=200 if ready else 503)

        async def prometheus(request: web.Request) -> web.Response:
            if ops_key and request.headers.get("Authorization") != f"Bearer {ops_key}":
                return web.Response(status=401, text="ops key required\n")
            resp = web.Response(body=generate_latest())
            resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
            return resp

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", prometheus)
        return app


_RECORD = msgspec.msgpack.Decoder(TurnRecord)
