"""One call's side of the background model (DESIGN.md §7): triggers out, results in.

A task starts from `<delegate>` in the model's text (`MicroTurnOutput.delegate`) or from the
client's `background.task.create`; `background.task.cancel` cancels. Each carries the call's
conversation window (user captions, typed text, model text, earlier results) as chat messages.
`CallBackground` hands it to `agents.client.BackgroundClient` (the bg:tasks queue, on the
memory bus in `microturn serve` or on Redis) and reads the call's bg:results stream back:
each answer piece goes to the page as a `background.task.*` event and into the session's next
micro-turn input as background text, in order — the model, not a harness, decides when to
say it. Timer firings arrive on the same stream with task ids "timer-...".

Bounded: at most `max_tasks` running tasks per call (more is refused with an error event),
an outbox of submissions and cancels, a remembered set of finished ids, and the window. A task
nobody answers is re-submitted and finally reported failed by the client (agents/client.py),
never left spinning. All work runs inside the one `run()` coroutine the call owns as its
task; `aclose()` after it drops the subscription and tells the agents the session ended, so
its timers never fire into a later call.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from infra.logging import get_logger
from infra.messages import BackgroundTask, ChatMessage, TaskEvent
from signaling.events import (
    TIMER_PREFIX,
    BackgroundTaskCancel,
    BackgroundTaskCancelled,
    BackgroundTaskCreate,
    BackgroundTaskCreated,
    BackgroundTaskDelta,
    BackgroundTaskDone,
    BackgroundTaskFailed,
    ClientEventError,
    ServerEvent,
)

if TYPE_CHECKING:  # types only: the adapter is handed a client and a window, it builds neither
    from agents.client import BackgroundClient, ResultStream
    from agents.context import ConversationWindow

log = get_logger(__name__)

TaskState = Literal["queued", "streaming"]
Source = Literal["client", "delegate", "timer"]

_OUTBOX = 32  # submissions/cancels waiting for the queue; more is a client hammering it
_MAX_FINISHED = 256  # finished task ids remembered so their late events are ignored
_CLOSE_TIMEOUT_S = 3.0  # telling the agents the call ended must not hold up a teardown
_READY_TIMEOUT_S = 5.0  # the results subscription finding its place in the stream


@dataclass
class _Task:
    source: Source
    state: TaskState


@dataclass(frozen=True)
class _Submit:
    task: BackgroundTask


@dataclass(frozen=True)
class _Cancel:
    task_id: str


class CallBackground:
    """The adapter between one call and the BackgroundClient.

    `emit` sends a server event to the page; `feed` queues background text for the session's
    next micro-turn input; `window` is the call's conversation (the transport feeds it
    captions, typed text and model text; answers are added here)."""

    def __init__(
        self,
        session_id: str,
        client: BackgroundClient,
        emit: Callable[[ServerEvent], object],
        feed: Callable[[str], None],
        *,
        window: ConversationWindow,
        max_tasks: int,
    ) -> None:
        self.session_id = session_id
        self.client = client
        self.emit = emit
        self.feed = feed
        self.max_tasks = max_tasks
        self.window = window
        self.timezone: str | None = None  # the page's, from its last create event
        self._tasks: dict[str, _Task] = {}  # running: queued or streaming
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._outbox: asyncio.Queue[_Submit | _Cancel] = asyncio.Queue(_OUTBOX)
        self._stream: ResultStream | None = None
        self._started = False
        self._closed = False
        self._log = log.bind(call_id=session_id)
        self.created = 0  # tasks queued
        self.refused = 0  # over the cap

    @property
    def running(self) -> int:
        """Tasks this call started that have not finished (timers do not count)."""
        return sum(1 for t in self._tasks.values() if t.source != "timer")

    # triggers ---------------------------------------------------------------------------------
    def create(self, event: BackgroundTaskCreate) -> str:
        """The client asked; returns the task id. Raises ClientEventError when refused."""
        if event.timezone:
            self.timezone = event.timezone
        task_id = event.task_id or f"bg-{secrets.token_hex(6)}"
        if task_id in self._tasks or task_id in self._finished:
            raise ClientEventError("duplicate_task_id", f"a background task {task_id!r} already exists in this call")
        messages = self.window.to_messages(event.text)
        try:
            self._start(task_id, "client", messages, event.text)
        except ClientEventError as e:
            if event.task_id is not None:  # the page shows it on the task it sent, and as an error
                self.emit(BackgroundTaskFailed(task_id=task_id, error=e.message))
            raise
        # later tasks see that it was asked (after the snapshot: the ask is not doubled)
        self.window.append_user_text(event.text)
        return task_id

    def delegate(self, turn: int) -> str | None:
        """The model emitted <delegate>: ask about the conversation so far (its last user
        words are the question). Over the cap it is only logged: the model, not the user,
        asked, so the page gets no error."""
        task_id = f"dg-{turn}-{secrets.token_hex(3)}"
        try:
            self._start(task_id, "delegate", self.window.to_messages(), "")
        except ClientEventError as e:
            self._log.info("background.delegation_dropped", turn=turn, reason=e.code)
            return None
        return task_id

    def cancel(self, event: BackgroundTaskCancel) -> None:
        """The client cancelled: the page hears `cancelled` now, the agents get the cancel, and
        whatever the task still sends is ignored."""
        task_id = event.task_id
        if task_id not in self._tasks:
            if task_id in self._finished:
                return  # already done/failed/cancelled: nothing to do, no error
            raise ClientEventError("unknown_task", f"no background task {task_id!r} in this call")
        try:
            self._outbox.put_nowait(_Cancel(task_id))
        except asyncio.QueueFull:
            raise ClientEventError("rate_limited", "too many background requests at once; slow down") from None
        self._finish(task_id)
        self.emit(BackgroundTaskCancelled(task_id=task_id))

    def _start(self, task_id: str, source: Source, messages: list[ChatMessage], text: str) -> None:
        if self._closed:
            raise ClientEventError("call_closing", "the call is ending")
        if self.running >= self.max_tasks:
            self.refused += 1
            raise ClientEventError(
                "too_many_background_tasks",
                f"{self.max_tasks} background tasks are already running in this call; wait for one to finish",
            )
        task = BackgroundTask(
            task_id=task_id,
            session_id=self.session_id,
            messages=messages,
            created_at=time.time(),
            source=source,
            timezone=self.timezone,
        )
        try:
            self._outbox.put_nowait(_Submit(task))
        except asyncio.QueueFull:
            raise ClientEventError("rate_limited", "too many background requests at once; slow down") from None
        self._tasks[task_id] = _Task(source, "queued")
        self.created += 1
        self.emit(BackgroundTaskCreated(task_id=task_id, source=source, text=text))
        self._log.info("background.task_created", task_id=task_id, source=source, messages=len(messages))

    # the call's task --------------------------------------------------------------------------
    async def run(self) -> None:
        """Subscribe to the call's results, then relay results and send submissions/cancels
        until cancelled by the call's teardown."""
        self._started = True
        stream = self._stream = self.client.results(self.session_id)
        # subscribed before the first submission: an answer published before the
        # subscription knows where the stream stands would be lost. Bounded: with Redis down
        # the submissions fail (and say so) instead of waiting unseen.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_READY_TIMEOUT_S):
                await stream.ready()
        send = asyncio.create_task(self._send_loop(), name=f"call:{self.session_id}:background-send")
        try:
            async for ev in stream:
                self.on_event(ev)
        finally:
            send.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await send

    async def _send_loop(self) -> None:
        while True:
            item = await self._outbox.get()
            try:
                if isinstance(item, _Submit):
                    if item.task.task_id in self._tasks:  # not cancelled while it waited
                        await self.client.submit(item.task)
                else:
                    await self.client.cancel(self.session_id, item.task_id)
            except Exception as e:  # Redis down, queue full: the task fails, the call goes on
                self._log.warning("background.send_failed", what=type(item).__name__, error=repr(e))
                if isinstance(item, _Submit):
                    self._fail(item.task.task_id, "the background queue is unavailable; try again")

    # results ----------------------------------------------------------------------------------
    def on_event(self, ev: TaskEvent) -> None:
        """One result event (already de-duplicated by (task_id, seq) and in order)."""
        task = self._tasks.get(ev.task_id)
        if task is None:
            if ev.task_id in self._finished:
                return  # cancelled here before the agent heard, or a failed submission
            if not ev.task_id.startswith(TIMER_PREFIX):
                self._log.info("background.unknown_task_event", task_id=ev.task_id, kind=ev.kind)
                return
            # a timer or reminder going off: a task the agent started on its own
            task = self._tasks[ev.task_id] = _Task("timer", "queued")
            self.emit(BackgroundTaskCreated(task_id=ev.task_id, source="timer"))
        if ev.kind == "delta":
            if not ev.text:
                return
            task.state = "streaming"
            self.emit(BackgroundTaskDelta(task_id=ev.task_id, seq=ev.seq, delta=ev.text))
            self.feed(ev.text)
            self.window.append_result(ev.task_id, ev.text)
        elif ev.kind == "done":
            self._finish(ev.task_id)
            self.emit(BackgroundTaskDone(task_id=ev.task_id))
        elif ev.kind == "failed":
            self._fail(ev.task_id, ev.error or "the background task failed")
        else:
            self._log.warning("background.unknown_event_kind", task_id=ev.task_id, kind=ev.kind[:32])

    def _fail(self, task_id: str, error: str) -> None:
        if task_id not in self._tasks:
            return
        self._finish(task_id)
        self.emit(BackgroundTaskFailed(task_id=task_id, error=error))
        # the session hears it too, so the model can say the answer is not coming
        self.feed(f"(background task failed: {error})")

    def _finish(self, task_id: str) -> None:
        self._tasks.pop(task_id, None)
        self._finished[task_id] = None
        while len(self._finished) > _MAX_FINISHED:
            self._finished.popitem(last=False)

    # end of call ------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """After `run()` was cancelled: drop the subscription and tell the agents the session
        ended (its timers and notes go). Never raises; bounded in time."""
        if self._closed:
            return
        self._closed = True
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if not self._started:
            return  # never subscribed, never submitted: nothing for the agents to forget
        try:
            await asyncio.wait_for(self.client.session_ended(self.session_id), _CLOSE_TIMEOUT_S)
        except Exception as e:  # Redis down at hang-up: the call still ends, promptly
            self._log.warning("background.session_ended_failed", error=repr(e))
