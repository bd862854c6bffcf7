"""`MicroTurnAssembler`: 16 kHz audio on the media clock + latest frame + typed text -> `MicroTurnInput`.

Why the media clock and not the wall clock: packets arrive in bursts (network jitter, the
jitter buffer releasing several frames at once, an event loop that was busy), so cutting
turns by arrival time would smear one 200 ms of speech over two turns and squeeze another.
Turn k is, by definition, samples [k*3200, (k+1)*3200) of the inbound track's RTP clock
rebased to its first frame, so `turn` doubles as "media time / 200 ms" for the model's time
embedding and the worker's ordering. When turns are dropped (consumer behind) the numbering
skips them; the model worker already steps a gap turn for a number it never received.

Failure handling, each with a counter (every buffer here is bounded):

- loss: a pts range nobody filled is zero-filled and the turn flagged `gap=True` (`gaps`,
  `gap_samples`);
- reordering: a turn is held open until the stream has run `reorder_samples` past its end
  (or it is completely filled, which needs no wait), so a late-but-in-window frame still lands
  at its pts; if the very first frames arrive out of order, the origin moves back to the
  earliest one (before any turn is out) instead of dropping the call's first packet;
- duplicates / very late frames: anything at or before an already-finalised turn is dropped
  (`dropped_late`, `late_samples`); overlaps inside an open turn keep the first copy
  (`duplicate_samples`);
- consumer behind: at most `max_pending` finalised turns wait for `pop_ready()`; older ones
  are dropped (`dropped_stale`), never queued without limit. A long outage does not allocate
  one buffer per missed turn: turns that would be dropped at once are only counted;
- timestamp reset: `resync_after` consecutive frames more than `resync_samples` behind the
  emitted point rebase the clock so the stream continues at the write head (`resyncs`);
  a single stray old packet is just dropped as late;
- timestamp jump forward (a gateway restarting its timestamp base): when the caller passes
  arrival times, a frame whose pts lies more than `resync_samples` beyond what the wall time
  since the previous frame explains rebases the clock at once so it continues at the write
  head (`resyncs`, `forward_resyncs`). Without this the turn numbers would leap ahead by hours,
  and every turn in between would look missing downstream. A real outage advances pts and
  wall time together and stays a zero-filled gap.

Turns on a shared grid (`align_clock`): a worker steps together the sessions whose inputs are
ready together, and calls start at random phases of the 200 ms turn, so unaligned calls land
spread over the turn and the worker runs several small steps per turn (each with the whole
per-step cost), a turn arriving just after one started waits for it, and which step a session
lands in changes from turn to turn (the output jitter the playout buffer must absorb). Given a
clock, the call's first turn of audio is held while its frames' arrival times on that clock
say where the caller's media clock sits on it, then the audio is preceded by the silence that
makes every turn end at a multiple of the turn length; every aligned call's turns are then
complete at the same moments and one step serves them all. The edge passes the wall clock, so
edges on different machines feeding one worker agree to within NTP's error. Nothing of the
caller's audio moves or is lost: the call starts with up to one turn of silence
(`aligned_samples`).
The caller's sample clock drifts from ours by tens of ppm, a few ms a minute, so the phase is
kept up: once turns end more than `realign_ms` off the grid they are moved back onto it with a
little silence (or, ending early, by skipping as much of the caller's audio: 10-20 ms, every
several minutes at most).

Video and text are not on the audio clock (the RTP clocks of different tracks are only
related through RTCP wall-clock anchors): the latest sampled frame and the text typed since
the previous emitted turn ride on the next turn handed out by `pop_ready()`, so neither is
lost when a turn is dropped. Not thread-safe: use from the call's event loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from infra.messages import FRAME_SHAPE, TURN_SAMPLES, MicroTurnInput


@dataclass
class _OpenTurn:
    """A turn still accepting samples."""

    audio: np.ndarray  # (turn_samples,) float32, zeros where nothing arrived
    filled: np.ndarray  # (turn_samples,) bool
    count: int = 0  # filled.sum(), kept incrementally


@dataclass
class _ReadyTurn:
    """A finalised turn waiting for `pop_ready()`."""

    turn: int
    audio: np.ndarray  # (turn_samples,) float32
    gap: bool
    filled: int = field(default=0)  # real (non zero-filled) samples, for accounting


class MicroTurnAssembler:
    """Accumulate 16 kHz mono audio into 200 ms micro-turns on the media clock.

    Usage, per call (samples/pts from `Resampler`, frames from `VideoSampler`)::

        asm = MicroTurnAssembler(session_id)
        asm.push_audio(chunk.samples, chunk.pts)   # pts: 16 kHz sample index, any origin
        asm.push_video(rgb)                        # (120, 160, 3) uint8
        asm.push_text("hello")
        for msg in asm.pop_ready(): bus.publish(...)
    """

    def __init__(
        self,
        session_id: str = "",
        *,
        turn_samples: int = TURN_SAMPLES,
        reorder_samples: int = 960,  # 60 ms: three Opus frames behind the head may still land
        max_pending: int = 2,
        snap_samples: int = 16,  # 1 ms: pts rounding noise near the write head is not a gap
        resync_samples: int = 32_000,  # 2 s
        resync_after: int = 3,
        max_text_chars: int = 4096,
        sample_rate: int = 16_000,
        align_clock: Callable[[], float] | None = None,
        realign_s: float = 5.0,
        realign_ms: float = 10.0,
    ) -> None:
        if turn_samples <= 0 or max_pending < 1 or reorder_samples < 0:
            raise ValueError("turn_samples > 0, max_pending >= 1 and reorder_samples >= 0 are required")
        self.session_id = session_id
        self.turn_samples = turn_samples
        self.reorder_samples = reorder_samples
        self.max_pending = max_pending
        self.snap_samples = snap_samples
        self.resync_samples = resync_samples
        self.resync_after = resync_after
        self.max_text_chars = max_text_chars
        self.sample_rate = sample_rate
        self.align_clock = align_clock  # seconds; turn ends fall on its multiples of the turn length
        # the call's first turn of frames, (samples, pts, now, align_clock()) each, held until
        # its phase is known; None once placed (or with no clock)
        self._phase_frames: list[tuple[np.ndarray, int, float | None, float]] | None = (
            [] if align_clock is not None else None
        )
        self._phase_samples = 0
        self.realign_s, self.realign_ms = realign_s, realign_ms
        self._grid_min = float("inf")  # least delayed frame's account of media position 0's wall time
        self._grid_samples = 0  # audio seen since the grid was last checked
        self._grid_resyncs = 0  # `resyncs` when this stretch began

        self._origin: int | None = None  # pts of media-clock sample 0
        self._next_turn = 0  # every turn below this is finalised (ready, emitted or dropped)
        self._max_end = 0  # one past the furthest sample position written (media clock)
        self._open: dict[int, _OpenTurn] = {}  # turn index -> buffer; bounded by the reorder window
        self._ready: deque[_ReadyTurn] = deque()  # <= max_pending, enforced in _finalise
        self._far_late_run = 0
        self._head_wall: float | None = None  # arrival time of the frame that last moved _max_end
        self._video: np.ndarray | None = None  # (120, 160, 3) uint8, latest not yet emitted
        self._text: deque[str] = deque()  # typed since the last emitted turn, <= max_text_chars total
        self._text_chars = 0

        # counters: turns
        self.emitted = 0
        self.gaps = 0  # finalised turns with zero-filled audio
        self.dropped_stale = 0  # finalised turns dropped because the consumer was behind
        self.aligned_samples = 0  # silence put before the call's first audio (`align_clock`)
        self.realigns = 0  # times drift moved the turns back onto the grid
        self.realign_silence = 0  # samples of silence that put late turns back
        self.realign_dropped = 0  # samples of the caller's audio skipped to put early turns back
        self.resyncs = 0
        self.forward_resyncs = 0  # of which: pts leapt ahead of the wall clock
        # counters: frames / samples
        self.samples_in = 0
        self.dropped_late = 0  # pushes with samples at or before an already-finalised turn
        self.late_samples = 0
        self.duplicate_samples = 0  # samples for positions already filled in an open turn
        self.gap_samples = 0  # zero-filled samples in finalised (ready) turns
        self.stale_samples = 0  # real samples lost with dropped stale turns
        self.video_replaced = 0  # frames overwritten by a newer one before any turn carried them
        self.dropped_text_chars = 0

    # inputs ----------------------------------------------------------------------------------
    def push_audio(self, samples: np.ndarray, pts_samples: int, now: float | None = None) -> None:
        """Place `samples` (16 kHz mono float) starting at media-clock index `pts_samples`.

        `now`: the frame's arrival time in seconds (monotonic), which lets a forward timestamp
        jump be told from a real outage; None (files, tests) trusts pts alone.
        """
        x = np.asarray(samples, dtype=np.float32).reshape(-1)  # (n,)
        n = x.size
        if n == 0:
            return
        if not np.isfinite(x).all() or np.abs(x).max() > 1.0:
            x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
        self.samples_in += n
        if self._phase_frames is not None and self.align_clock is not None:  # measuring the phase: hold
            self._phase_frames.append((x, int(pts_samples), now, self.align_clock()))
            self._phase_samples += n
            if self._phase_samples >= self.turn_samples:
                self._align()
            return
        self._place(x, int(pts_samples), now)
        if self.align_clock is not None:
            self._follow_grid(int(pts_samples), n, self.align_clock())

    def _follow_grid(self, pts_samples: int, n: int, wall: float) -> None:
        """Keep aligned turns on the grid while the caller's sample clock drifts from ours
        (tens of ppm: a few ms a minute, a whole turn within hours). Every `realign_s` of audio,
        the least delayed frame of that stretch says where the turns now end; once that is more
        than `realign_ms` off the grid the stream is moved back onto it at the write head. Turns
        ending late get that much silence (`realign_silence`); turns ending early lose that much
        of the next frame (`realign_dropped`: 10-20 ms, about once in several minutes).
        The frame: `n` samples from `pts_samples`, its last one arriving at `wall`."""
        assert self._origin is not None  # placed: the origin is set
        sr = self.sample_rate
        start = wall - (pts_samples - self._origin + n) / sr  # when media position 0 was live, by this frame
        if self.resyncs != self._grid_resyncs:  # the origin moved under this stretch: start a new one
            self._grid_resyncs, self._grid_min, self._grid_samples = self.resyncs, float("inf"), 0
        self._grid_min = min(self._grid_min, start)
        self._grid_samples += n
        if self._grid_samples < self.realign_s * sr:
            return
        P = self.turn_samples / sr
        late = (self._grid_min + P / 2) % P - P / 2  # turns end this long after a tick (< 0: before)
        self._grid_min, self._grid_samples = float("inf"), 0
        shift = round(late * sr)
        if abs(shift) < self.realign_ms * sr / 1000:
            return
        self.realigns += 1
        self._origin -= shift  # later frames land `shift` samples further on (< 0: back)
        if shift > 0:
            self.realign_silence += shift
            self._write_span(self._max_end, np.zeros(shift, np.float32))
        else:
            self.realign_dropped -= shift  # the next frame's head lands on written audio

    def _place(self, x: np.ndarray, pts_samples: int, now: float | None) -> None:
        n = x.size
        if self._origin is None:
            self._origin = pts_samples
        pos = pts_samples - self._origin
        floor = self._next_turn * self.turn_samples  # first position still open

        if pos + n <= floor - self.resync_samples:
            self._far_late_run += 1
            if self._far_late_run >= self.resync_after:
                # the sender's clock restarted: continue this stream at the write head
                head = max(self._max_end, floor)
                self._origin += pos - head
                pos = head
                self.resyncs += 1
                self._far_late_run = 0
        else:
            self._far_late_run = 0
            if now is not None and self._head_wall is not None and pos > self._max_end:
                explained = (now - self._head_wall) * self.sample_rate  # samples the wall clock allows
                if pos - self._max_end - explained > self.resync_samples:
                    head = max(self._max_end, floor)
                    self._origin += pos - head
                    pos = head
                    self.resyncs += 1
                    self.forward_resyncs += 1
        if now is not None and pos + n > self._max_end:
            self._head_wall = now

        if pos < 0 and self._next_turn == 0 and pos >= -self.reorder_samples:
            # the first frame to arrive was not the first frame sent: move the origin back to it
            self._shift_origin(-pos)
            pos = 0
        if pos != self._max_end and abs(pos - self._max_end) <= self.snap_samples:
            pos = self._max_end
        if pos < floor:
            cut = min(floor - pos, n)
            self.dropped_late += 1
            self.late_samples += cut
            x, pos = x[cut:], pos + cut
            if x.size == 0:
                return
        self._write_span(pos, x)

    def _write_span(self, pos: int, x: np.ndarray) -> None:
        """Write `x` at media position `pos` turn by turn, finalising as we go so one huge push
        cannot allocate without limit."""
        T = self.turn_samples
        i = 0
        while i < x.size:
            k, off = divmod(pos + i, T)
            m = min(T - off, x.size - i)
            if k >= self._next_turn:  # may have been finalised by the previous iteration
                self._write(k, off, x[i : i + m])
            else:
                self.late_samples += m
            i += m
            self._max_end = max(self._max_end, pos + i)
            self._finalise(self._complete_upto())

    def push_video(self, frame: np.ndarray) -> None:
        """Hold the latest sampled frame ((120, 160, 3) uint8 RGB) for the next emitted turn."""
        f = np.asarray(frame)
        if f.dtype != np.uint8 or f.shape != FRAME_SHAPE:
            raise ValueError(f"video frame must be uint8 {FRAME_SHAPE}, got {f.dtype} {f.shape}")
        if self._video is not None:
            self.video_replaced += 1
        self._video = f.copy()  # the caller may reuse its buffer; 57 KB at <= 1 fps

    def push_text(self, text: str) -> bool:
        """Queue typed text for the next emitted turn; False (and counted) when it does not fit.

        At most `max_text_chars` wait for one turn. Text that would overflow is refused whole
        rather than cutting older text: what was accepted stays intact, and the caller can tell
        the client exactly which message was dropped.
        """
        if not text:
            return True
        if self._text_chars + len(text) > self.max_text_chars:
            self.dropped_text_chars += len(text)
            return False
        self._text.append(text)
        self._text_chars += len(text)
        return True

    # outputs ---------------------------------------------------------------------------------
    def pop_ready(self) -> list[MicroTurnInput]:
        """Hand out every finalised turn, oldest first (turn numbers strictly increasing).

        The first turn handed out carries the pending video frame and text, if any.
        """
        out: list[MicroTurnInput] = []
        while self._ready:
            r = self._ready.popleft()
            video, text = None, ""
            if not out:
                video, self._video = self._video, None
                text = "".join(self._text)
                self._text.clear()
                self._text_chars = 0
            out.append(
                MicroTurnInput.from_arrays(
                    r.audio, video=video, text=text, session_id=self.session_id, turn=r.turn, gap=r.gap
                )
            )
            self.emitted += 1
        return out

    def finish(self) -> list[MicroTurnInput]:
        """End of stream: finalise every open turn (zero-padded, so flagged as gap) and pop all.

        The `max_pending` limit is not applied here: what is open is bounded by the reorder
        window and the consumer asked for everything.
        """
        self._align()
        # every written position is < _max_end, so this covers every open turn
        upto = max(self._next_turn, -(-self._max_end // self.turn_samples))
        self._finalise(upto, cap=False)
        return self.pop_ready()

    @property
    def pending(self) -> int:
        """Finalised turns waiting for `pop_ready()` (never more than `max_pending`)."""
        return len(self._ready)

    # internals -------------------------------------------------------------------------------
    def _write(self, k: int, off: int, seg: np.ndarray) -> None:
        t = self._open.get(k)
        if t is None:
            T = self.turn_samples
            t = self._open[k] = _OpenTurn(np.zeros(T, np.float32), np.zeros(T, bool))
        m = seg.size
        free = ~t.filled[off : off + m]  # (m,) positions nobody wrote yet
        n_free = int(free.sum())
        if n_free != m:
            self.duplicate_samples += m - n_free
            t.audio[off : off + m][free] = seg[free]
        else:
            t.audio[off : off + m] = seg
        t.filled[off : off + m] = True
        t.count += n_free

    def _align(self) -> None:
        """Put the silence before the first audio that makes every turn end on a multiple of
        the turn length of `align_clock`, then place the frames held while measuring.

        Where the caller's media clock sits on ours is read from the held frames' arrival
        times: a frame arrives late (network, jitter buffer, a busy event loop at call setup),
        never early, so the least delayed one tells it best. One frame alone could be tens of
        ms late, and the turns would then end that much before the grid, every turn."""
        frames, self._phase_frames = self._phase_frames or [], None
        if not frames:
            return
        T, sr = self.turn_samples, self.sample_rate
        pts0 = min(p for _, p, _, _ in frames)
        # when media sample pts0 arrived, by the account of the least delayed frame
        start = min(wall - (p + x.size - pts0) / sr for x, p, _, wall in frames)
        d = round((start % (T / sr)) * sr) % T  # turn 0 would end d samples past the grid: pad them
        self.aligned_samples = d
        self._origin = pts0 - d
        if d:
            self._write(0, 0, np.zeros(d, np.float32))
            self._max_end = d
        for x, p, now, _ in frames:
            self._place(x, p, now)

    def _shift_origin(self, d: int) -> None:
        """Move the origin `d` samples earlier; only before any turn is finalised (small, bounded)."""
        assert self._origin is not None and not self._ready and self._next_turn == 0
        T = self.turn_samples
        n = self._max_end + d
        audio = np.zeros(n, np.float32)  # (max_end + d,) everything written so far, re-laid
        filled = np.zeros(n, bool)
        for k, t in self._open.items():
            audio[k * T + d : (k + 1) * T + d] = t.audio[: n - k * T - d]
            filled[k * T + d : (k + 1) * T + d] = t.filled[: n - k * T - d]
        self._open.clear()
        for k in range(-(-n // T)):
            seg, mask = audio[k * T : (k + 1) * T], filled[k * T : (k + 1) * T]
            t = self._open[k] = _OpenTurn(np.zeros(T, np.float32), np.zeros(T, bool))
            t.audio[: seg.size], t.filled[: mask.size] = seg, mask
            t.count = int(mask.sum())
        self._origin -= d
        self._max_end = n

    def _complete_upto(self) -> int:
        """Smallest turn index >= _next_turn that is not complete yet."""
        T = self.turn_samples
        # complete by time: the stream has run reorder_samples past the turn's end
        upto = max(self._next_turn, (self._max_end - self.reorder_samples) // T)
        # complete by content: fully filled turns need no reorder wait
        while (t := self._open.get(upto)) is not None and t.count == T:
            upto += 1
        return upto

    def _finalise(self, upto: int, *, cap: bool = True) -> None:
        new = upto - self._next_turn
        if new <= 0:
            return
        if cap:
            excess = len(self._ready) + new - self.max_pending
            if excess > 0:
                for _ in range(min(excess, len(self._ready))):
                    self.stale_samples += self._ready.popleft().filled
                    self.dropped_stale += 1
                    excess -= 1
                # the remaining excess are among the new turns: count them, build nothing
                skip_to = self._next_turn + excess
                for k in [k for k in self._open if k < skip_to]:
                    self.stale_samples += self._open.pop(k).count
                self.dropped_stale += excess
                self._next_turn = skip_to
        T = self.turn_samples
        for k in range(self._next_turn, upto):
            t = self._open.pop(k, None)
            audio = np.zeros(T, np.float32) if t is None else t.audio
            filled = 0 if t is None else t.count
            gap = filled < T
            if gap:
                self.gaps += 1
                self.gap_samples += T - filled
            self._ready.append(_ReadyTurn(k, audio, gap, filled))
        self._next_turn = upto
