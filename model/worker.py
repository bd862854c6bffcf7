"""The asyncio-facing worker: bus in, batched engine steps in a dedicated thread, bus out.

Every session that has its next input ready joins the next batch, and a ready batch waits a
little (at most about a step's time) for the inputs due before that step would end, so calls
that started at different phases of the turn share steps instead of each paying for its own
(`_gather`). A session whose input is late (not there `late_ms` after it was due, or overtaken
by a later turn) is stepped with a zero-filled input flagged `gap` so it never holds the batch
back and its output stream never stalls; when the late input finally arrives it is dropped as
stale. A session whose next input is further ahead than elapsed time explains (by more than
`max_pending` turns: its turn numbers jumped, e.g. the sender restarted its RTP timestamps)
skips straight to it instead of gap-stepping the missing turns one per pass: that would never
catch up, and every real input would be dropped as stale.
Turns are stepped strictly in order per session, so outputs are published in order, none
lost or duplicated.

The engine runs in one dedicated thread (the event loop never blocks on model compute); open
and close go through the same thread, so they serialize with steps without extra locking.
`microturn serve` puts the engine itself in a child process (model/engine_process.py), which
that thread drives over a pipe: the model then never waits on the event loop's GIL.
The vocoder runs in a second thread: the engine thread queues each step's synthesis there as
the step ends, and the step's outputs go to the publisher (a queue of one step), which waits for
their audio and publishes them, while the engine thread already computes the next step.
Griffin-Lim overlaps the model instead of adding to it; one vocoder thread keeps every
session's turns, and so its vocoder's overlap state, in order.

A session whose step raises is closed by the engine while the rest of its batch is stepped
(model/engine.py `step_isolated`); its call hears it as a last output carrying `error`. A step
that hangs, or steps that keep failing, show in `stalled_s()`, which /readyz reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple, TypeVar

import msgspec

from infra import keys, metrics
from infra.bus import Bus, BusClosed, Subscription
from infra.logging import get_logger
from infra.messages import MicroTurnInput, MicroTurnOutput, TurnRecord
from model.engine import Engine, StepResult
from model.engine_process import EngineProcess
from model.session import AudioJob

log = get_logger(__name__)
T = TypeVar("T")


STOP_FLUSH_S = 5.0  # stop(): how long outputs of finished steps may take to be synthesized and sent
_ESTIMATE_STEPS = 8  # recent steps whose mean time is the next step's estimate (gathering)


class Synthesis(NamedTuple):
    """A step's synthesis job and its run on the vocoder thread (already queued there)."""

    job: AudioJob
    done: Future[None]


@dataclass(frozen=True)
class WorkerSettings:
    worker_id: str = "local"
    turn_ms: float = 200.0
    # how long after its due time a session's input may arrive before the turn is gap-stepped
    late_ms: float = 120.0
    # after the first input wakes the loop, wait this long for other sessions' inputs to join
    gather_ms: float = 5.0
    # and up to this long for a session whose next input is due before a step would end (the
    # recent steps' mean time): it would wait for that step anyway, then cost one of its own
    max_gather_ms: float = 150.0
    # inputs held per session ahead of the turn being stepped: when the engine falls behind, the
    # oldest are dropped (and gap-stepped) so a call stays current instead of drifting seconds late
    max_pending: int = 3


@dataclass
class _SessionQueue:
    next_turn: int = 0
    due: float | None = None  # monotonic time the next input is expected; None before the first
    pending: dict[int, tuple[MicroTurnInput, float]] = field(default_factory=dict)  # turn -> (input, arrival)


class Worker:
    def __init__(
        self,
        engine: Engine | EngineProcess,
        bus: Bus,
        settings: WorkerSettings | None = None,
        on_records: Callable[[list[TurnRecord]], None] | None = None,
    ) -> None:
        """`on_records`: gets each step's TurnRecords (with `engine.log_turns`), on the event loop."""
        self.engine = engine
        self.on_records = on_records
        self.bus = bus
        self.settings = settings or WorkerSettings()
        self.step_times: deque[float] = deque(maxlen=1000)  # seconds, most recent steps
        self.gather_waits: deque[float] = deque(maxlen=1000)  # seconds a ready batch waited for more inputs
        self.behind = 0
        self.gap_steps = 0
        self.stale_inputs = 0
        self.skipped_turns = 0
        self.failed_sessions = 0
        self._step_started: float | None = None  # monotonic start of the step in flight
        self._failing_since: float | None = None  # first of the steps that raised since the last success
        self._sessions: dict[str, _SessionQueue] = {}
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._vocoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vocoder")
        # one step's outputs wait here while the next step computes; a slower vocoder holds the loop back
        self._ready: asyncio.Queue[tuple[list[MicroTurnOutput], list[Synthesis]]] = asyncio.Queue(maxsize=1)
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: asyncio.Task[None] | None = None  # a formed batch's step and hand-off
        self._turn_samples = engine.model.cfg.turn_samples

    # lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        sub = self.bus.subscribe(keys.inputs(self.settings.worker_id))
        self._tasks = [
            asyncio.create_task(self._read_inputs(sub), name="worker-inputs"),
            asyncio.create_task(self._loop(), name="worker-loop"),
            asyncio.create_task(self._publish(), name="worker-publish"),
        ]
        self._sub = sub

    async def stop(self) -> None:
        if not self._tasks:  # never started, or stopped already
            return
        self._sub.close()
        *stepping, publisher = self._tasks
        for t in stepping:
            t.cancel()
        for t in stepping:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._inflight is not None:  # a batch formed before the stop still steps and queues
            with contextlib.suppress(Exception):
                await self._inflight
        # outputs of a finished step still waiting for their audio are published, not dropped
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_FLUSH_S):
                await self._ready.join()
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publisher
        self._tasks = []
        # let a step and a synthesis in flight finish, then release the threads
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._executor.shutdown, True)
        await loop.run_in_executor(None, self._vocoder.shutdown, True)

    async def open(self, session_id: str, seed: int = 0) -> None:
        """Reserve a slot; raises model.engine.CapacityError when the worker is full."""
        await self._in_engine_thread(self.engine.open, session_id, seed)
        if not self._sessions:
            self._failing_since = None  # failures with no session left waiting are history
        self._sessions[session_id] = _SessionQueue()
        metrics.ACTIVE_SESSIONS.set(self.engine.stats().active)

    async def restore(self, session_id: str, seed: int, records: list[TurnRecord]) -> None:
        """Like `open`, rebuilt from another worker's turn log (model/engine.py `Engine.restore`);
        inputs are expected from the turn after the last logged one."""
        await self._in_engine_thread(self.engine.restore, session_id, seed, records)
        next_turn = max((r.input_turn for r in records), default=-1) + 1
        self._sessions[session_id] = _SessionQueue(next_turn=next_turn)
        metrics.ACTIVE_SESSIONS.set(self.engine.stats().active)

    async def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        if session_id in self.engine:
            await self._in_engine_thread(self.engine.close, session_id)
        metrics.ACTIVE_SESSIONS.set(self.engine.stats().active)

    async def _in_engine_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # input side ---------------------------------------------------------------------------
    async def _read_inputs(self, sub: Subscription) -> None:
        async for data in sub:
            try:
                inp = msgspec.msgpack.decode(data, type=MicroTurnInput)
            except msgspec.DecodeError as e:
                log.warning("worker.bad_input", error=str(e))
                continue
            q = self._sessions.get(inp.session_id)
            if q is None:
                log.debug("worker.input_for_unknown_session", session_id=inp.session_id)
                continue
            if inp.turn < q.next_turn:
                self._stale(inp.session_id, inp.turn)
                continue
            q.pending[inp.turn] = (inp, time.monotonic())
            while len(q.pending) > self.settings.max_pending:
                self._stale(inp.session_id, q.pending.pop(min(q.pending))[0].turn)
            self._wake.set()

    def _stale(self, session_id: str, turn: int) -> None:
        self.stale_inputs += 1
        metrics.STALE_INPUTS.inc()
        log.info("worker.stale_input_dropped", session_id=session_id, turn=turn)

    def _form_batch(self, now: float) -> list[MicroTurnInput]:
        s = self.settings
        batch = []
        for sid, q in self._sessions.items():
            # turns that real time has made due since this session's next one (0 before its first input)
            overdue = 0.0 if q.due is None else max(0.0, now - q.due) / (s.turn_ms / 1000) + 1
            if q.pending and (first := min(q.pending)) - q.next_turn > s.max_pending + overdue:
                # a leap no elapsed time explains (timestamp jump): resync instead of gap-stepping
                # the missing turns one per pass, which would never catch up
                self.skipped_turns += first - q.next_turn
                metrics.SKIPPED_TURNS.inc(first - q.next_turn)
                log.info("worker.turns_skipped", session_id=sid, from_turn=q.next_turn, to_turn=first)
                q.next_turn = first
            entry = q.pending.pop(q.next_turn, None)
            if entry is not None:
                inp, arrived = entry
                q.due = arrived + s.turn_ms / 1000
            elif q.due is not None and (q.pending or now > q.due + s.late_ms / 1000):
                # overtaken by a later turn, or simply late: step silence rather than stall the batch
                inp = MicroTurnInput(audio=bytes(4 * self._turn_samples), session_id=sid, turn=q.next_turn, gap=True)
                q.due += s.turn_ms / 1000
                self.gap_steps += 1
                metrics.GAP_STEPS.inc()
            else:
                continue
            q.next_turn += 1
            batch.append(inp)
        return batch

    def _due_within(self, deadline: float) -> list[_SessionQueue]:
        """Sessions whose next input is not here yet but is due by `deadline`."""
        sessions = self._sessions.values()
        return [q for q in sessions if q.due is not None and q.due <= deadline and q.next_turn not in q.pending]

    def step_estimate_s(self) -> float:
        """What the next step should take: the mean of the last few (0 before any)."""
        recent = list(self.step_times)[-_ESTIMATE_STEPS:]
        return sum(recent) / len(recent) if recent else 0.0

    async def _gather(self) -> None:
        """Once an input is ready, wait for the inputs due before a step would end (at most
        `max_gather_ms`). Calls start at random phases of the 200 ms turn: stepping each input
        as it lands runs a batch of one per call, each paying the whole per-step cost, and past
        a few calls the steps no longer fit in a turn. Waiting costs the early inputs at most a
        step's time, which the late ones would have spent queued behind that step anyway; the
        batches then line up by themselves as load grows (a longer step gathers more). With one
        call, or a step faster than the spacing of the calls, nothing waits. The edge puts its
        calls' turns on one grid (media/assembler.py `align_clock`), so there the inputs of a
        turn land within a frame or so of each other and this waits only for those."""
        if not any(q.next_turn in q.pending for q in self._sessions.values()):
            return  # woken by a deadline: there is no ready input to hold back
        wait_s = min(self.step_estimate_s(), self.settings.max_gather_ms / 1000)
        deadline = time.monotonic() + wait_s
        while self._due_within(deadline) and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()
            self._wake.clear()
        waited = wait_s - max(0.0, deadline - time.monotonic())
        self.gather_waits.append(waited)
        metrics.GATHER_SECONDS.observe(waited)

    def _next_deadline(self) -> float | None:
        dues = [q.due for q in self._sessions.values() if q.due is not None]
        return min(dues) + self.settings.late_ms / 1000 if dues else None

    # the loop -----------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            deadline = self._next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            # asyncio.timeout, not wait_for: no helper task per iteration of a loop that never ends
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            if self.settings.gather_ms > 0:
                await asyncio.sleep(self.settings.gather_ms / 1000)
            await self._gather()
            batch = self._form_batch(time.monotonic())
            if not batch:
                continue
            # shielded: once its inputs are taken, a batch's outputs reach the queue even when
            # stop() cancels the loop mid-step (the engine thread would finish it regardless, and
            # its synthesis is already running on the vocoder thread)
            self._inflight = asyncio.create_task(self._step_and_queue(batch), name="worker-step")
            await asyncio.shield(self._inflight)
            self._inflight = None

    async def _step_and_queue(self, batch: list[MicroTurnInput]) -> None:
        try:
            result, audio = await self._step(batch)
        except Exception:
            log.exception("worker.step_failed", batch=[i.session_id for i in batch])
            if self._failing_since is None:
                self._failing_since = time.monotonic()
            return
        if result.outputs:
            self._failing_since = None
        elif result.failed and self._failing_since is None:
            self._failing_since = time.monotonic()
        outputs = list(result.outputs)
        turns = {inp.session_id: inp.turn for inp in batch}
        for out in outputs:
            # the input's turn number, not the session's step count: they differ once turns were skipped
            out.turn = turns[out.session_id]
        for inp in batch:
            if (why := result.failed.get(inp.session_id)) is not None:
                outputs.append(self._session_failed(inp, why))
        await self._ready.put((outputs, audio))

    async def _publish(self) -> None:
        """Each step's outputs, once the vocoder thread has filled in their audio, in step order."""
        while True:
            outputs, audio = await self._ready.get()
            try:
                sent = await self._synthesize_and_send(outputs, audio)
            finally:
                self._ready.task_done()
            if not sent:
                return

    async def _synthesize_and_send(self, outputs: list[MicroTurnOutput], audio: list[Synthesis]) -> bool:
        """False when the bus is closed (nothing more can be sent)."""
        for job, done in audio:
            try:
                await asyncio.wrap_future(done)
            except Exception:
                # the mel was checked finite before it left the engine: nothing known fails here
                log.exception("worker.vocoder_failed", sessions=[o.session_id for o in job.outputs])
                for out in job.outputs:
                    out.audio = bytes(4 * self._turn_samples)
        for out in outputs:
            try:
                await self.bus.publish_struct(keys.outputs(out.session_id), out)
            except BusClosed:
                return False
        return True

    def _session_failed(self, inp: MicroTurnInput, why: str) -> MicroTurnOutput:
        """The engine closed this session: forget it and tell its call (the last message it gets)."""
        self._sessions.pop(inp.session_id, None)
        self.failed_sessions += 1
        metrics.SESSION_FAILURES.inc()
        metrics.ACTIVE_SESSIONS.set(self.engine.stats().active)
        log.error("worker.session_failed", session_id=inp.session_id, turn=inp.turn, error=why)
        return MicroTurnOutput(session_id=inp.session_id, turn=inp.turn, audio=b"", gap=True, error=why)

    def stalled_s(self) -> float:
        """Seconds the engine has gone without completing a step while sessions wait on it: a
        step in flight that long (a hung thread), or every step failing since then. 0 when
        idle or healthy."""
        if not self._sessions:
            return 0.0
        since = [t for t in (self._step_started, self._failing_since) if t is not None]
        return time.monotonic() - min(since) if since else 0.0

    def _step_and_synthesize(self, batch: list[MicroTurnInput]) -> tuple[StepResult, list[Synthesis]]:
        """On the engine thread: the step, then its synthesis handed straight to the vocoder
        thread (one thread, FIFO: each session's turns stay in order). Handing it over from the
        event loop instead cost a round trip through a loop that is busy with the calls' packets:
        ~10 ms of every turn at 16 calls on 2 cores, measured."""
        result = self.engine.step_isolated(batch, defer_audio=True)
        return result, [Synthesis(job, self._vocoder.submit(job.run)) for job in result.audio]

    async def _step(self, batch: list[MicroTurnInput]) -> tuple[StepResult, list[Synthesis]]:
        # sessions closed while their input waited are not stepped
        batch = [i for i in batch if i.session_id in self.engine]
        t0 = time.perf_counter()
        self._step_started = time.monotonic()
        try:
            result, audio = await asyncio.get_running_loop().run_in_executor(
                self._executor, partial(self._step_and_synthesize, batch)
            )
        finally:
            self._step_started = None
        dt = time.perf_counter() - t0
        self.step_times.append(dt)
        metrics.STEP_SECONDS.observe(dt)
        metrics.BATCH_SIZE.observe(len(batch))
        if dt * 1000 > self.settings.turn_ms:
            self.behind += 1
            metrics.BEHIND.inc()
            log.warning(
                "worker.behind_real_time", step_ms=round(dt * 1000, 1), batch=len(batch), turn_ms=self.settings.turn_ms
            )
        if result.records and self.on_records is not None:
            self.on_records(result.records)
        return result, audio
