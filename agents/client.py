"""The edge's handle on the background agents: submit, cancel, read a session's results.

Results come back on bg:results:{session} as TaskEvents. `ResultStream` hands them out
de-duplicated by (task_id, seq) and in seq order per task: a retried task (another attempt,
another agent after a crash, a re-submission) streams again from seq 0 and everything the
session already has is dropped, so no word is heard twice. A `done` waits for the pieces
before it; a `failed` ends its task at once, whatever its seq. Events of a finished task are
dropped.

Nothing submitted is silently lost. The client keeps every task it submitted until its
`done`/`failed` arrives, and re-submits it (same task_id) when the queue's storage may have
lost it (`TaskQueue.generation()` moved: Redis restarted) or when nothing was heard of it
for `stall_s`; after `max_resubmits` the session gets a local `failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec

from infra import keys
from infra.bus import Bus, BusUnavailable, Subscription
from infra.logging import get_logger
from infra.messages import BackgroundTask, SessionEnded, TaskCancel, TaskEvent
from infra.redis_bus import cancel_and_wait
from infra.taskqueue import TaskQueue

log = get_logger(__name__)

_event_decoder = msgspec.msgpack.Decoder(TaskEvent)
_MAX_TRACKED = 1024  # tasks per stream whose order state is kept
_MAX_HELD = 1024  # out-of-order events held per task waiting for a gap to fill


@dataclass
class _Track:
    next_seq: int = 0
    held: dict[int, TaskEvent] = field(default_factory=dict)
    finished: bool = False


class ResultStream:
    """Async iterator of one session's TaskEvents, de-duplicated and in order; `close()`."""

    def __init__(self, client: BackgroundClient, session_id: str, sub: Subscription, maxsize: int) -> None:
        self.session_id = session_id
        self.duplicates = 0
        self._client = client
        self._sub = sub
        self._out: asyncio.Queue[TaskEvent | None] = asyncio.Queue(maxsize)
        self._tracks: OrderedDict[str, _Track] = OrderedDict()
        self._closed = False
        self._pump = asyncio.create_task(self._read(), name=f"bg-results:{session_id}")

    async def ready(self) -> None:
        """Events published from now on reach this stream."""
        await self._sub.ready()

    def __aiter__(self) -> AsyncIterator[TaskEvent]:
        return self

    async def __anext__(self) -> TaskEvent:
        if self._closed and self._out.empty():
            raise StopAsyncIteration
        ev = await self._out.get()
        if ev is None:
            self._closed = True
            raise StopAsyncIteration
        return ev

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pump.cancel()
        self._sub.close()
        streams = self._client._streams.get(self.session_id)
        if streams is not None:
            streams.discard(self)
            if not streams:
                del self._client._streams[self.session_id]
        with contextlib.suppress(asyncio.QueueFull):
            self._out.put_nowait(None)

    async def _read(self) -> None:
        async for data in self._sub:
            try:
                ev = _event_decoder.decode(data)
            except msgspec.DecodeError as e:
                log.warning("bg_client.bad_event", session_id=self.session_id, error=str(e))
                continue
            for out in self._accept(ev):
                await self._out.put(out)

    def _inject(self, ev: TaskEvent) -> None:
        """A locally made event (the client gave up on a task)."""
        for out in self._accept(ev):
            with contextlib.suppress(asyncio.QueueFull):
                self._out.put_nowait(out)

    def _accept(self, ev: TaskEvent) -> list[TaskEvent]:
        tr = self._tracks.get(ev.task_id)
        if tr is None:
            tr = self._tracks[ev.task_id] = _Track()
            while len(self._tracks) > _MAX_TRACKED:
                self._tracks.popitem(last=False)
        if tr.finished:
            self.duplicates += 1
            return []
        if ev.kind == "failed":
            tr.finished, tr.held = True, {}
            self._client._progress(ev.task_id, finished=True)
            return [ev]
        if ev.seq < tr.next_seq or ev.seq in tr.held or len(tr.held) >= _MAX_HELD:
            self.duplicates += 1
            return []
        tr.held[ev.seq] = ev
        out: list[TaskEvent] = []
        while tr.next_seq in tr.held:
            e = tr.held.pop(tr.next_seq)
            tr.next_seq += 1
            out.append(e)
            if e.kind == "done":
                tr.finished, tr.held = True, {}
                break
        if out:
            self._client._progress(ev.task_id, finished=tr.finished)
        return out


@dataclass
class _Open:
    task: BackgroundTask
    last_progress: float  # monotonic: submitted, re-submitted or an event arrived
    resubmits: int = 0


class BackgroundClient:
    def __init__(
        self,
        bus: Bus,
        queue: TaskQueue,
        *,
        stall_s: float = 60.0,
        max_resubmits: int = 2,
        check_every_s: float = 0.5,
        max_open: int = 4096,
        stream_queue: int = 1024,
    ) -> None:
        self.bus = bus
        self.queue = queue
        self.stall_s = stall_s
        self.max_resubmits = max_resubmits
        self.check_every_s = check_every_s
        self.max_open = max_open
        self.stream_queue = stream_queue
        self.resubmitted = 0
        self.restarts_seen = 0  # times the queue's storage was found restarted
        self._open: OrderedDict[str, _Open] = OrderedDict()  # by task_id, oldest first
        self._streams: dict[str, set[ResultStream]] = {}
        self._generation: int | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closing = False

    async def submit(self, task: BackgroundTask) -> None:
        """Queue a task. Raises BusUnavailable / QueueFull when it could not be queued."""
        self._start_watchdog()
        if self._generation is None:
            # Know the storage before the first task goes in: a restart between this submit
            # and the watchdog's first look would otherwise become its baseline, and the task
            # the old server took with it would never be re-sent.
            self._generation = await self.queue.generation()
        await self.queue.submit(task)
        self._open[task.task_id] = _Open(task, time.monotonic())
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)

    async def cancel(self, session_id: str, task_id: str) -> None:
        self._open.pop(task_id, None)
        await self.bus.publish_struct(keys.bg_control(), TaskCancel(task_id=task_id, session_id=session_id))

    def results(self, session_id: str) -> ResultStream:
        stream = ResultStream(self, session_id, self.bus.subscribe(keys.bg_results(session_id)), self.stream_queue)
        self._streams.setdefault(session_id, set()).add(stream)
        return stream

    async def session_ended(self, session_id: str) -> None:
        for tid in [tid for tid, o in self._open.items() if o.task.session_id == session_id]:
            del self._open[tid]
        await self.bus.publish_struct(keys.bg_control(), SessionEnded(session_id=session_id))

    async def aclose(self) -> None:
        self._closing = True
        if self._watchdog is not None:
            await cancel_and_wait(self._watchdog)
            self._watchdog = None
        for streams in list(self._streams.values()):
            for s in list(streams):
                s.close()

    @property
    def open_tasks(self) -> int:
        return len(self._open)

    # keeping every task accounted for ------------------------------------------------------------
    def _progress(self, task_id: str, finished: bool) -> None:
        if finished:
            self._open.pop(task_id, None)
        elif (o := self._open.get(task_id)) is not None:
            o.last_progress = time.monotonic()

    def _start_watchdog(self) -> None:
        if not self._closing and (self._watchdog is None or self._watchdog.done()):
            self._watchdog = asyncio.create_task(self._watch(), name="bg-client-watchdog")

    async def _watch(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.check_every_s)
            try:
                await self._check()
            except BusUnavailable:
                pass  # tried again next tick
            except Exception:
                log.exception("bg_client.watchdog_error")

    async def _check(self) -> None:
        gen = await self.queue.generation()
        lost = self._generation is not None and gen != self._generation
        self._generation = gen
        self.restarts_seen += lost
        now = time.monotonic()
        for tid, o in list(self._open.items()):
            if not lost and now - o.last_progress < self.stall_s:
                continue
            if o.resubmits >= self.max_resubmits:
                del self._open[tid]
                log.warning("bg_client.task_lost", task_id=tid, resubmits=o.resubmits)
                self._fail_locally(o.task, "no background agent answered; try again")
                continue
            o.resubmits += 1
            o.last_progress = now
            self.resubmitted += 1
            log.info("bg_client.resubmit", task_id=tid, reason="storage restarted" if lost else "stalled")
            await self.queue.submit(o.task)

    def _fail_locally(self, task: BackgroundTask, error: str) -> None:
        ev = TaskEvent(task_id=task.task_id, seq=0, kind="failed", error=error)
        for s in list(self._streams.get(task.session_id, ())):
            s._inject(ev)
