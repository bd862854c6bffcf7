"""`Call`: one peer connection with its tracks, data channel, engine session and tasks.

A call owns everything it starts and releases all of it on every exit path — hang-up
(DELETE), the peer closing, ICE or DTLS failure (`ice_failed` / `dtls_failed`, told apart by
signaling/dtls.py), never connecting (`connect_timeout_s`), going
silent (`idle_timeout_s`: no media and no data-channel message, i.e. a client that vanished
without a goodbye), running too long (`max_call_s`), an internal error, server shutdown — all
through one idempotent `close(reason)`. Teardown runs as its own task, shielded from whoever
asked for it, so a cancelled DELETE handler or a watchdog that triggers its own cancellation
cannot leave a half-closed call: tasks are cancelled and awaited, the output track stopped,
the peer connection closed, the engine slot released, and finally the call leaves the
registry.

Tasks (named `call:<id>:<role>` so leaks are visible in `asyncio.all_tasks()`): audio in,
video in (if the peer sends video), model outputs -> track/events, the watchdog, and any
background-agent task. Every received track is either consumed by one of those tasks or its
m-line is answered `inactive`, so aiortc never starts a receiver whose frames nobody reads
(its frame queue is unbounded).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription, candidate_from_sdp

from infra import keys, metrics
from infra.bus import Bus, Subscription
from infra.logging import get_logger
from infra.settings import Settings
from media.output_track import OutputAudioTrack
from signaling import dtls
from signaling.auth import Principal, RateLimiter
from signaling.background import CallBackground
from signaling.channel_limits import limit_inbound_messages
from signaling.events import (
    BackgroundTaskCancel,
    BackgroundTaskCreate,
    ClientEventError,
    ErrorEvent,
    InputTextAppend,
    ServerEvent,
    SessionCreated,
    SessionMoved,
    parse_client_event,
)
from signaling.ice import CandidateGate
from signaling.transport import CloseCall, MediaTransport
from signaling.workers import Move, WorkerPool

if TYPE_CHECKING:
    from agents.client import BackgroundClient

log = get_logger(__name__)

EVENTS_LABEL = "events"
MAX_CHANNEL_BUFFER = 256 * 1024  # bytes queued on the data channel before events are dropped
CLIENT_EVENTS_PER_MIN = 600  # ~10/s sustained per call; more is a flood, answered with one error/s
MAX_BACKGROUND_TASKS = 2  # running background tasks per call (client asks and <delegate>s)
_CLOSE_PC_TIMEOUT_S = 5.0

CallState = Literal["new", "connecting", "connected", "closing", "closed"]

# reasons the peer is told about (over the data channel, best effort) before the call closes
_NOTIFY = {
    "idle_timeout": "no media or events from the client for too long",
    "max_duration": "the call reached its maximum length",
    "server_shutdown": "the server is shutting down",
    "internal_error": "the server hit an internal error",
}


class OfferError(ValueError):
    """The SDP offer is unusable (-> 400)."""


class CallClosedError(RuntimeError):
    """The call was closed (shutdown, peer gone) while it was still being set up."""


class IceRestartError(ValueError):
    """The client asked for an ICE restart, which this server does not do (-> 422)."""


@dataclass(frozen=True)
class CallDeps:
    """What a call needs from the process it runs in."""

    bus: Bus
    workers: WorkerPool
    settings: Settings
    model_name: str
    trained: bool
    on_closed: Callable[[Call], None]
    background: BackgroundClient | None = None  # the background agents' queue; None = not wired


def rtc_configuration(settings: Settings) -> RTCConfiguration:
    """Explicit ICE servers: aiortc's default would ask stun.l.google.com on every call."""
    servers = [
        RTCIceServer(
            urls=url,
            username=settings.ice_username,
            credential=settings.ice_credential.get_secret_value() if settings.ice_credential else None,
        )
        for url in settings.ice_servers
    ]
    return RTCConfiguration(iceServers=servers)


class Call:
    def __init__(self, call_id: str, principal: Principal, deps: CallDeps) -> None:
        self.id = call_id
        self.principal = principal
        self.deps = deps
        self.state: CallState = "new"
        self.end_reason: str | None = None
        self.created_at = time.monotonic()
        self.connected_at: float | None = None
        s = deps.settings
        self.pc = dtls.peer_connection(rtc_configuration(s))  # DTLS that RSA-certificate gateways accept
        self.output = OutputAudioTrack(
            hold_ms=s.playout_hold_ms,
            max_hold_ms=s.playout_max_hold_ms,
            margin_ms=s.playout_margin_ms if s.playout_steer else None,
        )
        self.transport = MediaTransport(
            call_id,
            deps.bus,
            deps.workers.worker_of,
            self.output,
            self.send,
            video_fps=s.video_fps,
            align_turns=s.align_turns,
            on_delegate=self._delegate if deps.background is not None else None,
            on_handed_back=self._handed_back,
        )
        self.background = (
            CallBackground(
                call_id,
                deps.background,
                self.send,
                self.transport.push_background,
                window=self.transport.window,
                max_tasks=MAX_BACKGROUND_TASKS,
            )
            if deps.background is not None
            else None
        )
        self.channel: RTCDataChannel | None = None
        self.events_sent = 0
        self.events_dropped = 0
        self.client_errors = 0
        self.moves = 0  # times the model session moved to another worker
        self._audio_in: MediaStreamTrack | None = None
        self._video_in: MediaStreamTrack | None = None
        self._sub: Subscription | None = None
        self._engine_open = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._teardown: asyncio.Task[None] | None = None
        self._remote_ice: tuple[str, str] | None = None  # (ufrag, pwd) of the offer
        self._primary_mid: str | None = None  # where trickled candidates go (the BUNDLE transport)
        self._client_events = RateLimiter(CLIENT_EVENTS_PER_MIN, max_clients=1)
        self.ice = CandidateGate(s.max_ice_candidates, s.allow_loopback_candidates)  # remote candidate limits
        self._last_flood_error = 0.0
        self._log = log.bind(call_id=call_id, client=principal.client_id)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(16)

    # setup (driven by POST /v1/calls) ---------------------------------------------------------
    async def apply_offer(self, sdp: str) -> None:
        """Validate and apply the offer, choose which tracks to consume; raises OfferError."""
        if not sdp.lstrip().startswith("v=0"):
            raise OfferError("not an SDP offer: it must start with v=0")
        try:
            parsed = SessionDescription.parse(sdp)
        except Exception as e:  # aiortc's parser raises whatever the garbage provokes
            raise OfferError(f"unparseable SDP: {e}") from None
        if not any(m.kind == "audio" for m in parsed.media):
            raise OfferError("the offer has no audio m-line")
        try:
            async with self.ice.offer(sdp) as screened:  # refused/surplus candidates removed
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=screened, type="offer"))
        except Exception as e:
            raise OfferError(f"cannot use this offer: {e}") from None
        if self.pc.sctp is not None:  # before the answer, which advertises the limit
            limit = self.deps.settings.max_channel_message_bytes
            message = f"a data-channel message exceeded {limit} bytes (a=max-message-size)"
            limit_inbound_messages(
                self.pc.sctp, limit, lambda _: self.end_with(CloseCall("channel_message_too_large", message))
            )
        first = parsed.media[0]
        if first.ice is not None and first.ice.usernameFragment and first.ice.password:
            self._remote_ice = (first.ice.usernameFragment, first.ice.password)
        bundle = next((g for g in parsed.group if g.semantic == "BUNDLE" and g.items), None)
        self._primary_mid = str(bundle.items[0]) if bundle else first.rtp.muxId
        for t in self.pc.getTransceivers():
            track = t.receiver.track  # set when the peer sends on this m-line
            if t.kind == "audio" and self._audio_in is None:
                if track is None:
                    raise OfferError("the first audio m-line must send audio (sendrecv or sendonly)")
                self._audio_in = track
                self.pc.addTrack(self.output)  # model audio goes back on the same transceiver
            elif t.kind == "video" and self._video_in is None and track is not None:
                self._video_in = track
                t.direction = "recvonly"
            else:
                # an m-line we will not read: answer it inactive so no receiver ever starts
                t.direction = "inactive"
                if track is not None:
                    track.stop()

    async def open_session(self) -> None:
        """Place the model session on a worker; raises signaling.workers.WorkersFull when none
        has a free slot."""
        self._check_not_closing()
        await self.deps.workers.open(self.id, secrets.randbelow(2**31), listener=self)
        self._engine_open = True
        # closed while the slot was being reserved: the teardown may already be past the
        # engine, so give the slot back here
        if self._teardown is not None:
            self._engine_open = False
            await self.deps.workers.close(self.id)
            raise CallClosedError(f"the call ended during setup ({self.end_reason})")

    def _check_not_closing(self) -> None:
        if self._teardown is not None:
            raise CallClosedError(f"the call ended during setup ({self.end_reason})")

    async def answer(self) -> str:
        """The SDP answer, with every candidate gathered (aiortc does not trickle)."""
        self._check_not_closing()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._check_not_closing()
        desc = self.pc.localDescription
        assert desc is not None
        self.state = "connecting"
        return desc.sdp

    def start(self) -> None:
        """Start the media tasks; the call is now the watchdog's to end."""
        self._check_not_closing()
        self._sub = self.deps.bus.subscribe(keys.outputs(self.id))
        self._spawn("out", self.transport.pump_outputs(self._sub))
        self._spawn("watchdog", self._watchdog())
        if self._audio_in is not None:
            self._spawn("audio-in", self.transport.consume_audio(self._audio_in))
        if self._video_in is not None:
            self._spawn("video-in", self.transport.consume_video(self._video_in))
        if self.background is not None:
            self._spawn("background", self.background.run())
        self._log.info("call.started", video=self._video_in is not None)

    # trickle ICE (PATCH /v1/calls/{id}) -------------------------------------------------------
    async def add_ice(self, frag: str) -> int:
        """Apply an `application/trickle-ice-sdpfrag` body; returns the candidates added.

        Raises IceRestartError for new ICE credentials, ValueError for a malformed fragment.
        """
        ufrag = pwd = None
        mid = self._primary_mid
        candidates = []
        end = False
        for raw in frag.splitlines():
            line = raw.strip()
            if line.startswith("a=ice-ufrag:"):
                ufrag = line.split(":", 1)[1]
            elif line.startswith("a=ice-pwd:"):
                pwd = line.split(":", 1)[1]
            elif line.startswith("a=candidate:"):
                try:
                    c = candidate_from_sdp(line.split(":", 1)[1])
                except Exception as e:  # aiortc's parser asserts, indexes and converts as it goes
                    raise ValueError(f"bad candidate line {line[:80]!r}: {e!r}") from None
                # with BUNDLE every candidate belongs to the one shared transport
                c.sdpMid = mid
                candidates.append(c)
            elif line == "a=end-of-candidates":
                end = True
        if self._remote_ice is not None and (
            (ufrag is not None and ufrag != self._remote_ice[0]) or (pwd is not None and pwd != self._remote_ice[1])
        ):
            raise IceRestartError("ICE restart is not supported: hang up and start a new call")
        await self.ice.add(self.pc, candidates)  # raises TooManyCandidatesError over the limit
        if end:
            await self.pc.addIceCandidate(None)
        return len(candidates)

    # events -----------------------------------------------------------------------------------
    def send(self, event: ServerEvent) -> bool:
        """Send one event if the channel is open and not backed up; otherwise drop and count."""
        ch = self.channel
        reason = None
        if ch is None or ch.readyState != "open":
            reason = "no_channel"
        elif ch.bufferedAmount > MAX_CHANNEL_BUFFER:
            reason = "backpressure"
        else:
            try:
                ch.send(event.to_json())
                self.events_sent += 1
                return True
            except Exception:  # closed between the check and the send
                reason = "send_failed"
        self.events_dropped += 1
        metrics.EVENTS_DROPPED.labels(reason).inc()
        return False

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != EVENTS_LABEL or self.channel is not None:
            self._log.info("call.extra_datachannel_closed", label=channel.label[:64])
            channel.close()
            return
        self.channel = channel
        channel.on("message", self._on_message)
        self.send(SessionCreated(call_id=self.id, model=self.deps.model_name, trained=self.deps.trained))

    def _on_message(self, data: str | bytes) -> None:
        """A client event. Never raises: an exception here would surface inside aiortc's SCTP stack."""
        try:
            self.transport.touch()
            if not self._client_events.allow("c"):
                self._client_error(ClientEventError("rate_limited", "too many events; slow down"), throttle=True)
                return
            event = parse_client_event(data, self.deps.settings.max_event_bytes)
            if isinstance(event, InputTextAppend):
                self.transport.push_text(event.text)
            elif isinstance(event, BackgroundTaskCreate | BackgroundTaskCancel):
                if self.background is None:
                    raise ClientEventError("background_unavailable", "no background model is configured on this server")
                if isinstance(event, BackgroundTaskCreate):
                    self.background.create(event)
                else:
                    self.background.cancel(event)
        except ClientEventError as e:
            self._client_error(e)
        except Exception:
            self._log.exception("call.client_event_failed")
            self._client_error(ClientEventError("internal_error", "the server could not handle this event"))

    def _client_error(self, e: ClientEventError, *, throttle: bool = False) -> None:
        self.client_errors += 1
        metrics.CLIENT_EVENT_ERRORS.labels(e.code).inc()
        now = time.monotonic()
        if throttle:
            if now - self._last_flood_error < 1.0:
                return
            self._last_flood_error = now
        self.send(ErrorEvent(code=e.code, message=e.message))

    # lifecycle --------------------------------------------------------------------------------
    def _on_connection_state(self) -> None:
        s = self.pc.connectionState
        self._log.debug("call.connection_state", state=s)
        if s == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
            self.state = "connected"
            self.transport.touch()
            self._log.info("call.connected", setup_ms=round((self.connected_at - self.created_at) * 1000, 1))
        elif s == "failed":
            reason = dtls.failure_reason(self.pc)
            self._log.warning("call.transport_failed", reason=reason, **dtls.transport_states(self.pc))
            self.begin_close(reason)
        elif s == "closed":
            self.begin_close("peer_closed")

    async def _watchdog(self) -> None:
        s = self.deps.settings
        tick = min(1.0, s.connect_timeout_s / 4, s.idle_timeout_s / 4)
        while True:
            await asyncio.sleep(tick)
            self.transport.export_metrics()
            now = time.monotonic()
            reason = None
            if self.connected_at is None and now - self.created_at > s.connect_timeout_s:
                reason = "connect_timeout"
                self._log.warning("call.connect_timeout", **dtls.transport_states(self.pc))  # stuck where?
            elif self.connected_at is not None and now - self.transport.last_activity > s.idle_timeout_s:
                reason = "idle_timeout"
            elif now - self.created_at > s.max_call_s:
                reason = "max_duration"
            if reason is not None:
                self.begin_close(reason)
                return

    def _spawn(self, role: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"call:{self.id}:{role}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, CloseCall):  # a media limit or the engine ended the call on purpose
            self.end_with(exc)
        elif exc is not None:
            self._log.error("call.task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)
            self.begin_close("internal_error")

    def end_with(self, e: CloseCall) -> None:
        """End the call for `e.reason`, telling the peer why first."""
        if self._teardown is None:
            self._log.warning("call.refused", reason=e.reason, detail=e.message)
            self.send(ErrorEvent(code=e.reason, message=e.message))
        self.begin_close(e.reason)

    def begin_close(self, reason: str) -> asyncio.Task[None]:
        """Start the teardown (once; later reasons are ignored) and return its task."""
        if self._teardown is None:
            self._teardown = asyncio.create_task(self._run_teardown(reason), name=f"call:{self.id}:teardown")
        return self._teardown

    async def close(self, reason: str) -> None:
        """Tear the call down and wait until everything is released (safe to call repeatedly)."""
        await asyncio.shield(self.begin_close(reason))

    async def _run_teardown(self, reason: str) -> None:
        self.state = "closing"
        self.end_reason = reason
        duration = time.monotonic() - self.created_at
        self._log.info("call.closing", reason=reason, duration_s=round(duration, 1))
        try:
            if reason in _NOTIFY:
                self.send(ErrorEvent(code=reason, message=_NOTIFY[reason]))
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            for t, result in zip(tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True):
                if isinstance(result, Exception):
                    self._log.warning("call.task_error_at_close", task=t.get_name(), error=repr(result))
            self._tasks.clear()
            if self.background is not None:  # after its task: drop the results stream, end timers
                await self.background.aclose()
            if self._sub is not None:
                self._sub.close()
            self.output.stop()
            try:
                await asyncio.wait_for(self.pc.close(), _CLOSE_PC_TIMEOUT_S)
            except Exception as e:
                self._log.warning("call.pc_close_failed", error=repr(e))
        finally:
            try:
                # unconditionally (a no-op without a slot); a slot whose open() is still in
                # flight is given back by open_session() when it sees the teardown
                self._engine_open = False
                await self.deps.workers.close(self.id)
            except Exception as e:
                self._log.error("call.engine_close_failed", error=repr(e))
            finally:
                self.transport.export_metrics()
                metrics.CALLS_ENDED.labels(reason).inc()
                self.state = "closed"
                self.deps.on_closed(self)
                self._log.info(
                    "call.closed",
                    reason=reason,
                    turns_in=self.transport.turns_in,
                    turns_out=self.transport.turns_out,
                    underruns=self.output.underruns,
                    playout_hold_ms=self.output.hold_ms,
                    playout_stretched_frames=self.output.stretched_frames,
                    playout_compressed_frames=self.output.compressed_frames,
                    events_sent=self.events_sent,
                    events_dropped=self.events_dropped,
                )

    # placement (signaling/workers.py PlacementListener) --------------------------------------
    def _handed_back(self) -> None:
        """The worker drained and gave the session back: place it elsewhere (the model's window
        is restored there from the session log)."""
        if self._teardown is None:
            self.deps.workers.move(self.id, "worker_draining")

    def session_moved(self, move: Move) -> None:
        """The caller's silence so far: since the old worker's last output (a lost worker is
        noticed only when its heartbeat expires), at least the re-placement itself."""
        self.moves += 1
        last = self.transport.last_output_at
        gap_ms = move.gap_ms if last is None else max(move.gap_ms, round((time.monotonic() - last) * 1000.0, 1))
        self._log.info("call.session_moved", to_worker=move.to_worker, gap_ms=gap_ms, reason=move.reason)
        self.send(SessionMoved(reason=move.reason, gap_ms=gap_ms))

    def session_lost(self, reason: str, message: str) -> None:
        self.end_with(CloseCall(reason, message))

    # background model -----------------------------------------------------------------------
    def _delegate(self, turn: int) -> None:
        """The model emitted <delegate> (signaling/background.py queues the task)."""
        if self.background is not None and self._teardown is None:
            self.background.delegate(turn)

    # introspection ----------------------------------------------------------------------------
    def task_names(self) -> list[str]:
        return sorted(t.get_name() for t in self._tasks)

    @property
    def engine_open(self) -> bool:
        return self._engine_open

    def __repr__(self) -> str:
        return f"Call({self.id!r}, state={self.state!r})"
