"""The agent worker: background tasks from the queue, answers streamed to the session.

One loop takes tasks from the consumer group while a slot is free (`concurrency`), and every
`reclaim_every_s` touches the tasks it runs (so nobody takes them from a live agent),
reclaims tasks a dead agent left idle for `reclaim_idle_s`, and trims the stream. Each task
runs as its own owned asyncio task:

- the backend streams text; every piece becomes TaskEvent(task_id, seq, "delta") on
  bg:results:{session}, then one "done"; the task is acked after the last event is out.
- an attempt that raises or exceeds `task_timeout_s` is retried with backoff, from seq 0:
  the receiver drops (task_id, seq) it already has, so a retry re-sends nothing the session
  heard, provided the backend says the same thing again (the tools backend does; an LLM
  does at temperature 0). The same holds when another agent picks up a dead agent's task.
- after `max_attempts`, or when a task was delivered more than `max_deliveries` times
  (agents keep dying on it), it goes to the dead-letter stream, then the session gets a
  "failed" event, then it is acked. Dead letter before ack: a crash in between repeats the
  dead letter, it never loses the task.
- bg:control: TaskCancel stops a running task (the session gets failed "cancelled") and
  skips it if it is still queued; SessionEnded stops the session's tasks quietly, skips its
  queued ones and tells the backend (its timers and notes go).

While Redis is down nothing is given up early: publishing retries with backoff inside the
task's time limit, the loop backs off and reads on when the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec

from agents.backend import Backend, BackendError, FireCallback, TaskContext
from agents.settings import AgentSettings
from infra import keys, metrics
from infra.bus import Bus, BusClosed, BusUnavailable, Subscription
from infra.logging import get_logger
from infra.messages import BackgroundTask, ControlMessage, SessionEnded, TaskCancel, TaskEvent
from infra.redis_bus import Backoff, cancel_and_wait
from infra.taskqueue import Delivery, TaskQueue

log = get_logger(__name__)

BackendFactory = Callable[[FireCallback], Backend]
_control_decoder = msgspec.msgpack.Decoder(ControlMessage)
_REMEMBERED = 4096  # cancelled task ids / ended sessions kept to skip their queued tasks


class _Recent:
    """A bounded set: the oldest members are forgotten first."""

    def __init__(self, size: int = _REMEMBERED) -> None:
        self._items: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, key: str) -> None:
        self._items[key] = None
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._items


@dataclass
class _Run:
    delivery: Delivery
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None  # set by a control message before it cancels `task`
    quiet: bool = False  # the session is gone: no failed event for it
    next_seq: int = 0  # one past the highest seq sent for this task by this agent


@dataclass
class WorkerStats:
    started: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    dead_lettered: int = 0
    retries: int = 0
    reclaimed: int = 0
    released: int = 0
    timers_fired: int = 0
    first_delta_s: list[float] = field(default_factory=list)  # created_at -> first delta published (bounded)


class AgentWorker:
    def __init__(
        self, queue: TaskQueue, bus: Bus, backend_factory: BackendFactory, settings: AgentSettings | None = None
    ) -> None:
        self.queue = queue
        self.bus = bus
        self.settings = settings or AgentSettings()
        self.consumer = self.settings.consumer
        self.stats = WorkerStats()
        self._backend_factory = backend_factory
        self._backend: Backend | None = None
        self._runs: dict[str, _Run] = {}  # by task_id
        self._slot_freed = asyncio.Event()
        self._cancelled = _Recent()
        self._ended = _Recent()
        self._loops: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()  # acks of duplicate deliveries
        self._control: Subscription | None = None
        self._stopping = False
        self._log = log.bind(consumer=self.consumer)

    @property
    def backend(self) -> Backend:
        assert self._backend is not None, "start() first"
        return self._backend

    @property
    def running(self) -> int:
        return len(self._runs)

    # lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._backend = self._backend_factory(self._fire)
        self._control = self.bus.subscribe(keys.bg_control(), maxsize=1024)
        # Cancels sent once we are up must reach us; a Redis that is down delays only this.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._control.ready(), 5.0)
        self._loops = [
            asyncio.create_task(self._loop(), name=f"agent:{self.consumer}:loop"),
            asyncio.create_task(self._control_loop(self._control), name=f"agent:{self.consumer}:control"),
        ]
        self._log.info(
            "agent.started", backend=getattr(self._backend, "name", "?"), concurrency=self.settings.concurrency
        )

    async def stop(self, drain_s: float | None = None) -> None:
        """Take no new tasks; give running ones `drain_s` to finish, then hand the rest back
        to the queue (another agent takes them at once) and close the backend."""
        if self._stopping:
            return
        self._stopping = True
        if self._control is not None:
            self._control.close()
        # The loops see _stopping / the closed subscription within one bounded read, so they
        # are not cut mid-command (see cancel_and_wait for why a single cancel() is not enough)
        _, late = await asyncio.wait(self._loops, timeout=self.settings.read_block_s + 5.0)
        for t in late:
            await cancel_and_wait(t)
        self._loops = []
        drain = self.settings.drain_s if drain_s is None else drain_s
        runs = [r for r in self._runs.values() if r.task is not None]
        if runs and drain > 0:
            self._log.info("agent.draining", running=len(runs), drain_s=drain)
            await asyncio.wait([r.task for r in runs if r.task is not None], timeout=drain)
        left = [r for r in self._runs.values() if r.task is not None and not r.task.done()]
        for r in left:
            assert r.task is not None
            await cancel_and_wait(r.task)
            if await self._retrying(lambda r=r: self.queue.release(r.delivery), self.settings.give_up_s):  # type: ignore[misc]
                self.stats.released += 1
        if left:
            self._log.info("agent.released", tasks=len(left))
        if self._backend is not None:
            await self._backend.aclose()
        self._log.info("agent.stopped", done=self.stats.done, failed=self.stats.failed)

    # taking tasks ---------------------------------------------------------------------------------
    def _free(self) -> int:
        return self.settings.concurrency - len(self._runs)

    async def _loop(self) -> None:
        s = self.settings
        tick = min(s.reclaim_every_s, s.reclaim_idle_s / 3)
        backoff = Backoff(0.05, 2.0)
        next_maintain = 0.0
        next_trim = time.monotonic() + s.trim_every_s
        while not self._stopping:
            now = time.monotonic()
            if now >= next_maintain:
                trim = now >= next_trim
                await self._maintain(trim)
                next_maintain = now + tick
                if trim:
                    next_trim = now + s.trim_every_s
            wait = max(0.01, next_maintain - time.monotonic())
            if self._stopping:
                break
            self._slot_freed.clear()
            if self._free() <= 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._slot_freed.wait()
                continue
            try:
                deliveries = await self.queue.read(self.consumer, self._free(), min(s.read_block_s, wait))
            except BusUnavailable as e:
                if backoff.failures in (0, 5) or backoff.failures % 50 == 0:
                    self._log.warning("agent.queue_unavailable", error=str(e), failures=backoff.failures)
                await backoff.wait()
                continue
            if backoff.failures:
                self._log.info("agent.queue_back", after_failures=backoff.failures)
            backoff.reset()
            for d in deliveries:
                if self._stopping:  # read while stopping: straight back to the queue
                    await self._retrying(lambda d=d: self.queue.release(d), self.settings.give_up_s)
                else:
                    self._spawn(d)

    async def _maintain(self, trim: bool) -> None:
        try:
            mine = [r.delivery.entry_id for r in self._runs.values()]
            if mine:
                await self.queue.touch(self.consumer, mine)
            free = self._free()
            if free > 0 and not self._stopping:
                for d in await self.queue.reclaim(self.consumer, self.settings.reclaim_idle_s, free):
                    if d.task.task_id not in self._runs:
                        self.stats.reclaimed += 1
                        self._log.info(
                            "agent.reclaimed", task_id=d.task.task_id, entry=d.entry_id, deliveries=d.deliveries
                        )
                    self._spawn(d)
            if trim:
                await self.queue.trim()
        except BusUnavailable:
            pass  # the read right after reports it, with backoff

    def _spawn(self, d: Delivery) -> None:
        tid = d.task.task_id
        run = self._runs.get(tid)
        if run is not None:
            if run.delivery.entry_id != d.entry_id:
                # the same task submitted again (a client re-sending after a Redis restart)
                # while this agent runs it: the run in progress answers for both
                ack = asyncio.create_task(self._ack_quietly(d.entry_id), name=f"agent:ack-dup:{tid}")
                self._side_tasks.add(ack)
                ack.add_done_callback(self._side_tasks.discard)
            return
        run = _Run(d)
        self._runs[tid] = run
        run.task = asyncio.create_task(self._handle(run), name=f"agent:task:{tid}")
        run.task.add_done_callback(lambda t, tid=tid, run=run: self._finished(tid, run, t))  # type: ignore[misc]

    def _finished(self, tid: str, run: _Run, t: asyncio.Task[None]) -> None:
        if self._runs.get(tid) is run:
            del self._runs[tid]
        self._slot_freed.set()
        if not t.cancelled() and t.exception() is not None:
            self._log.error("agent.task_crashed", task_id=tid, error=repr(t.exception()))

    async def _ack_quietly(self, entry_id: str) -> None:
        await self._retrying(lambda: self.queue.ack(entry_id), self.settings.give_up_s)

    # running one task -----------------------------------------------------------------------------
    async def _handle(self, run: _Run) -> None:
        d, t = run.delivery, run.delivery.task
        self.stats.started += 1
        try:
            if d.deliveries > self.settings.max_deliveries:
                await self._give_up(
                    run, f"gave up after {d.deliveries - 1} deliveries (the agents handling it stopped)"
                )
                return
            if t.session_id in self._ended:
                await self._ack(d)
                return
            if t.task_id in self._cancelled:
                await self._emit_final(t, TaskEvent(task_id=t.task_id, seq=0, kind="failed", error="cancelled"))
                self.stats.cancelled += 1
                metrics.AGENT_TASKS.labels("cancelled").inc()
                await self._ack(d)
                return
            error = await self._attempts(run)
            if error is None:
                self.stats.done += 1
                metrics.AGENT_TASKS.labels("done").inc()
                await self._ack(d)
            else:
                await self._give_up(run, error)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if run.cancel_reason is None or task is None:
                raise  # shutdown: stop() hands the task back to the queue
            task.uncancel()
            self.stats.cancelled += 1
            metrics.AGENT_TASKS.labels("cancelled").inc()
            self._log.info("agent.task_cancelled", task_id=t.task_id, reason=run.cancel_reason)
            if not run.quiet:
                failed = TaskEvent(task_id=t.task_id, seq=run.next_seq, kind="failed", error=run.cancel_reason)
                await self._emit_final(t, failed)
            await self._ack(d)

    async def _attempts(self, run: _Run) -> str | None:
        """Run the backend up to max_attempts times; None when one attempt finished."""
        s = self.settings
        t = run.delivery.task
        ctx = TaskContext(
            task_id=t.task_id,
            session_id=t.session_id,
            messages=tuple(t.messages),
            created_at=t.created_at,
            timezone=t.timezone,
        )
        error = "no attempt made"
        for attempt in range(s.max_attempts):
            if attempt:
                self.stats.retries += 1
                metrics.AGENT_RETRIES.inc()
                await asyncio.sleep(s.retry_backoff_s * 2 ** (attempt - 1))
            seq = 0
            try:
                async with asyncio.timeout(s.task_timeout_s):
                    async with contextlib.aclosing(self.backend.run(ctx)) as stream:  # type: ignore[type-var]
                        async for text in stream:
                            if not text:
                                continue
                            await self._emit(t, TaskEvent(task_id=t.task_id, seq=seq, kind="delta", text=text))
                            if seq == 0 and len(self.stats.first_delta_s) < 10_000:
                                self.stats.first_delta_s.append(time.time() - t.created_at)
                            seq += 1
                            run.next_seq = max(run.next_seq, seq)
                    await self._emit(t, TaskEvent(task_id=t.task_id, seq=seq, kind="done"))
                    run.next_seq = max(run.next_seq, seq + 1)
                return None
            except TimeoutError:
                error = f"no answer within {s.task_timeout_s:g} s"
            except BackendError as e:
                error = str(e) or "the background model failed"
            except Exception as e:
                self._log.exception("agent.backend_crashed", task_id=t.task_id)
                error = f"internal error in the background agent ({type(e).__name__})"
            self._log.warning("agent.attempt_failed", task_id=t.task_id, attempt=attempt + 1, error=error)
        return error

    async def _give_up(self, run: _Run, error: str) -> None:
        d, t = run.delivery, run.delivery.task
        s = self.settings
        self._log.warning("agent.task_failed", task_id=t.task_id, session_id=t.session_id, error=error)
        # dead letter BEFORE ack: a crash between the two writes it twice, never loses the task
        if await self._retrying(lambda: self.queue.dead_letter(d, error), s.give_up_s):
            self.stats.dead_lettered += 1
        else:
            self._log.error("agent.dead_letter_failed", task_id=t.task_id)
        self.stats.failed += 1
        metrics.AGENT_TASKS.labels("failed").inc()
        await self._emit_final(t, TaskEvent(task_id=t.task_id, seq=run.next_seq, kind="failed", error=error))
        await self._ack(d)

    async def _ack(self, d: Delivery) -> None:
        if not await self._retrying(lambda: self.queue.ack(d.entry_id), self.settings.give_up_s):
            # left pending: it is reclaimed later and its outcome sent again (deduplicated)
            self._log.error("agent.ack_failed", task_id=d.task.task_id, entry=d.entry_id)

    # results out ----------------------------------------------------------------------------------
    async def _emit(self, t: BackgroundTask, ev: TaskEvent) -> None:
        """Publish, retrying through a Redis outage; the caller's time limit bounds it."""
        data = msgspec.msgpack.encode(ev)
        topic = keys.bg_results(t.session_id)
        backoff = Backoff(0.05, 1.0)
        while True:
            try:
                await self.bus.publish(topic, data)
                return
            except BusUnavailable as e:
                if backoff.failures in (0, 10):
                    self._log.warning("agent.publish_retry", task_id=t.task_id, error=str(e))
                await backoff.wait()

    async def _emit_final(self, t: BackgroundTask, ev: TaskEvent) -> None:
        ok = await self._retrying(lambda: self._emit(t, ev), self.settings.give_up_s)
        if not ok:
            self._log.error("agent.final_event_lost", task_id=t.task_id, kind=ev.kind)

    async def _fire(self, session_id: str, text: str) -> None:
        """A backend timer went off: a new task id with one delta and a done."""
        if session_id in self._ended or not text:
            return
        t = BackgroundTask(task_id=f"timer-{secrets.token_hex(6)}", session_id=session_id, messages=[], created_at=0)
        self.stats.timers_fired += 1
        await self._emit_final(t, TaskEvent(task_id=t.task_id, seq=0, kind="delta", text=text))
        await self._emit_final(t, TaskEvent(task_id=t.task_id, seq=1, kind="done"))

    async def _retrying(self, op: Callable[[], Awaitable[object]], limit_s: float) -> bool:
        backoff = Backoff(0.05, 1.0)
        try:
            async with asyncio.timeout(limit_s):
                while True:
                    try:
                        await op()
                        return True
                    except BusUnavailable:
                        await backoff.wait()
        except TimeoutError:
            return False
        except BusClosed:
            return False

    # control --------------------------------------------------------------------------------------
    async def _control_loop(self, sub: Subscription) -> None:
        async for data in sub:
            try:
                msg = _control_decoder.decode(data)
            except msgspec.DecodeError as e:
                self._log.warning("agent.bad_control", error=str(e))
                continue
            if isinstance(msg, TaskCancel):
                self._cancelled.add(msg.task_id)
                run = self._runs.get(msg.task_id)
                if run is not None and run.delivery.task.session_id == msg.session_id:
                    self._cancel(run, "cancelled", quiet=False)
            elif isinstance(msg, SessionEnded):
                self._ended.add(msg.session_id)
                for run in list(self._runs.values()):
                    if run.delivery.task.session_id == msg.session_id:
                        self._cancel(run, "session ended", quiet=True)
                try:
                    await self.backend.session_ended(msg.session_id)
                except Exception:
                    self._log.exception("agent.session_ended_failed", session_id=msg.session_id)

    def _cancel(self, run: _Run, reason: str, quiet: bool) -> None:
        if run.task is None or run.task.done() or run.cancel_reason is not None:
            return
        run.cancel_reason, run.quiet = reason, quiet
        run.task.cancel()
