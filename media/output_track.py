"""`OutputAudioTrack`: the model's voice as an aiortc audio track, paced in 20 ms frames.

The model worker produces 200 ms of 16 kHz audio per micro-turn, in bursts whenever a batched
step finishes; the RTP sender wants one 20 ms frame every 20 ms, forever. This track is the
playout buffer between the two.

Decisions:

- Absolute-deadline pacing: frame n is due at `start + n * 20 ms` on the monotonic clock, and
  `recv()` sleeps until that deadline. Sleeping a relative 20 ms per frame would add every
  wake-up delay (0.1-1 ms) to the schedule, tens of seconds per hour of call; deadlines
  computed from n never accumulate error. (aiortc's own `AudioStreamTrack` uses `time.time()`,
  which jumps with NTP; we use `time.monotonic()`.)
- When `recv()` is called late (the loop was busy), frames are returned at once until the
  schedule is caught up, but never more than `max_late_ms` of them: beyond that the schedule is
  re-anchored at "now" (`resyncs`) rather than bursting a backlog the receiver would have to
  absorb. pts stay continuous either way. Queued audio is kept across a re-anchor (the stall
  adds its length to the playout latency, which `max_ms` bounds).
- pts count samples (`time_base = 1/16000`) and advance by exactly one frame (320) per frame,
  silence included, so RTP timestamps never jump.
- Frames stay 16 kHz s16, dual-mono stereo by default; aiortc's encoder resamples to its codec
  rate (see `media.resampler` for why not 48 kHz, and why not mono: -3 dB through Opus).
- Prebuffer/target: playout (re)starts only once `target_ms` of audio is queued (default one
  micro-turn, i.e. the first chunk starts playback immediately); after running dry it waits
  for the target again instead of stuttering frame by frame. Beyond `max_ms` the oldest audio
  is dropped (`dropped_samples`): late speech is worse than a skip, and the buffer is bounded.
- Jitter hold, adaptive (what WebRTC's NetEQ does, in its simplest form): a turn's audio
  arrives in one 200 ms piece, so with the target at one turn the buffer is near empty just
  before each arrival, and a turn that comes any later than the one before it on the schedule
  runs the buffer dry. Each underrun therefore adds one frame (20 ms) of hold, up to
  `max_hold_ms`: when playout (re)starts it first plays that many frames of silence, so the
  audio that follows has that much slack for a late turn. A call whose turns arrive on time
  keeps no hold (`hold_ms` 0 by default: no latency added on a quiet server); after
  `hold_decay_s` of playout without an underrun the hold shrinks by a frame again. The hold
  is taken when playout (re)starts, at the call's start, after an underrun or a barge-in, so
  it sets the delay until the next of those: the model's audio, silence included, plays on
  without a break in between. Measured (tests/bench/bench_edge.py, 10 s calls on 2 cores):
  with an echo in place of the model at 16 calls, turns arrived up to ~40 ms late at p95 and
  the calls ran dry 34 times without the hold, 11 times with it; with the model at 8 calls,
  11 times starting from no hold, 3 starting from 40 ms (`MICROTURN_PLAYOUT_HOLD_MS`). Since
  the edge puts every call's turns on one grid (media/assembler.py), each turn lands in the
  same step and the jitter left is the step's own: with the model, 0 underruns at 8 calls and
  0-5 at 16 in 10 s, starting from no hold.
- Quiet steering (NetEQ's time stretching, in its simplest form): the audio queued ahead of a
  turn when it arrives is latency the caller hears on top of the server's, and slack against a
  later turn. The track keeps it near `margin_ms` (plus the hold): a turn arriving with less
  queued ahead asks for frames of silence, one played in place of audio at each of the next
  quiet frames (`stretched_frames`); when every turn of the last `steer_window` (the first time
  after playout starts: `first_window`) arrived with at least a frame more than that queued,
  that many quiet frames are skipped (`compressed_frames`).
  Quiet means every sample of the frame under `quiet` (-60 dBFS): the model's voice gate plays
  exact zeros between its words and turns, so a frame of silence more or less there is
  inaudible, where a frame lost to an underrun or skipped mid-word is not. What it fixed, with
  the model (tests/bench/bench_edge.py, 20 s calls on 2 cores): a call's first two turns may
  come a step apart (the first is held to set the call's phase, media/assembler.py), which
  left 120-180 ms queued ahead of every later turn for the whole call; and at 16 calls the
  step grows as the calls' windows fill, so the queue shrinks turn by turn until a turn runs it
  dry. Steered: 40 ms queued at p50 at 4 and 8 calls, 60 ms at 16, and no underrun in seven
  runs, against 2-5 per run unsteered at 8 and 16 calls.
- `flush()` is barge-in: everything queued goes at once; the next frame is silence.
- Silence is sent whenever there is nothing to play (`silence_frames`); running dry while
  playing is an underrun (`underruns`), the number operators watch.

Not thread-safe: `push`, `flush` and `recv` run on the call's event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.resampler import MODEL_RATE, float_to_s16_frame


class OutputAudioTrack(MediaStreamTrack):
    """A playout buffer of model audio that aiortc's RTP sender reads 20 ms at a time."""

    kind = "audio"

    def __init__(
        self,
        *,
        sample_rate: int = MODEL_RATE,
        frame_ms: int = 20,
        target_ms: int = 200,
        max_ms: int = 1000,
        max_late_ms: int = 60,
        layout: str = "stereo",
        hold_ms: int = 0,
        max_hold_ms: int = 100,
        hold_decay_s: float = 10.0,
        margin_ms: int | None = 40,
        steer_window: int = 15,
        first_window: int = 5,
        quiet: float = 1e-3,
    ) -> None:
        """`margin_ms`: the audio quiet steering keeps queued ahead of an arriving turn, on top of
        the hold (None: no steering); `steer_window`: turns whose arrivals must all have had a
        frame to spare before frames are skipped (`first_window` for the first skip after playout
        (re)starts: the queue a call's first turns leave is there from its start); `quiet`: the
        peak below which a frame is quiet."""
        super().__init__()
        if not 0 < frame_ms <= max_ms or target_ms < 0:
            raise ValueError("need 0 < frame_ms <= max_ms and target_ms >= 0")
        if not 0 <= hold_ms <= max_hold_ms or hold_decay_s <= 0:
            raise ValueError("need 0 <= hold_ms <= max_hold_ms and hold_decay_s > 0")
        if (margin_ms is not None and margin_ms < 0) or not 1 <= first_window <= steer_window or quiet < 0:
            raise ValueError("need margin_ms >= 0 (or None), 1 <= first_window <= steer_window and quiet >= 0")
        if layout not in ("mono", "stereo"):
            raise ValueError(f"layout must be 'mono' or 'stereo', got {layout!r}")
        self.layout = layout
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000  # 320 at 16 kHz
        self.frame_s = self.frame_samples / sample_rate  # exact frame period in seconds
        self.max_samples = sample_rate * max_ms // 1000
        self.target_samples = min(sample_rate * target_ms // 1000, self.max_samples)
        self.max_late_s = max_late_ms / 1000
        self.min_hold_frames = hold_ms // frame_ms
        self.max_hold_frames = max_hold_ms // frame_ms
        self.hold_frames = self.min_hold_frames  # silence played before (re)starting playout
        self._held = 0  # of those, played so far
        self._decay_frames = max(1, round(hold_decay_s * 1000 / frame_ms))
        self._clean_frames = 0  # audio frames played since the last underrun or hold change
        self.margin_samples = None if margin_ms is None else sample_rate * margin_ms // 1000
        self.quiet = quiet
        self._arrivals: deque[int] = deque(maxlen=steer_window)  # samples queued ahead of each turn
        self._steer = 0  # frames of silence to add (> 0) or quiet frames to skip (< 0)
        self._steer_window, self._first_window = steer_window, first_window
        self._skipped = False  # frames were skipped since playout (re)started

        # ring buffer: the only storage, so the queue is bounded by construction
        self._buf = np.zeros(self.max_samples, np.float32)  # (max_samples,)
        self._read = 0  # index of the oldest queued sample
        self._size = 0  # queued samples
        self._playing = False

        self._start: float | None = None  # monotonic time frame 0 was due
        self._n = 0  # index of the next frame; its pts is _n * frame_samples

        # counters
        self.frames_out = 0
        self.silence_frames = 0  # frames with no model audio at all
        self.underruns = 0  # times the buffer ran dry while playing
        self.hold_increases = 0  # underruns that grew the jitter hold (the rest were at its cap)
        self.late_frames = 0  # recv() called after the frame's deadline
        self.resyncs = 0  # schedule re-anchored because recv() was more than max_late_ms late
        self.dropped_samples = 0  # oldest audio dropped because the buffer exceeded max_ms
        self.flushed_samples = 0
        self.flushes = 0
        self.stretched_frames = 0  # frames of silence quiet steering played in place of audio
        self.compressed_frames = 0  # quiet frames of audio it skipped

    # producer side ---------------------------------------------------------------------------
    @property
    def depth_samples(self) -> int:
        """Queued samples not yet played."""
        return self._size

    @property
    def depth_ms(self) -> float:
        return 1000 * self._size / self.sample_rate

    def push(self, samples: np.ndarray) -> None:
        """Queue model audio (16 kHz mono float32, any length; 3200 per micro-turn)."""
        if self.readyState != "live":
            return
        x = np.asarray(samples, dtype=np.float32).reshape(-1)  # (n,)
        if self._playing:
            self._observe(self._size)
        if not np.isfinite(x).all():
            x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
        cap = self.max_samples
        if x.size > cap:  # more than the whole buffer: only the newest cap samples can survive
            self.dropped_samples += x.size - cap
            x = x[-cap:]
        over = self._size + x.size - cap
        if over > 0:  # drop the oldest queued audio
            self._read = (self._read + over) % cap
            self._size -= over
            self.dropped_samples += over
        w = (self._read + self._size) % cap
        first = min(x.size, cap - w)
        self._buf[w : w + first] = x[:first]
        self._buf[: x.size - first] = x[first:]
        self._size += x.size

    def _observe(self, queued: int) -> None:
        """A turn arrived with `queued` samples ahead of it: decide how to steer (see the module
        docstring). A short arrival asks for its whole shortfall at once, replacing any pending
        skip; a skip is decided only with no steering pending, from arrivals since the last one."""
        if self.margin_samples is None:
            return
        target = self.margin_samples + self.hold_frames * self.frame_samples
        window = self._steer_window if self._skipped else self._first_window
        self._arrivals.append(queued)
        if queued < target:
            self._steer = -(-(target - queued) // self.frame_samples)
        elif self._steer == 0 and len(self._arrivals) >= window:
            self._steer = -max(0, (min(self._arrivals) - target) // self.frame_samples)

    def _head(self, n: int) -> np.ndarray:
        """The next n queued samples (n <= queued), without consuming them."""
        first = min(n, self.max_samples - self._read)
        head = self._buf[self._read : self._read + first]
        return head if first == n else np.concatenate([head, self._buf[: n - first]])

    def _consume(self, n: int) -> None:
        self._read = (self._read + n) % self.max_samples
        self._size -= n

    def _steer_quiet_frame(self) -> bool:
        """Apply one frame of pending steering if the next frame is quiet. True: this frame is
        stretch silence (the queue stays); a skip consumes the quiet frame and returns False, so
        the frame after it plays."""
        if not self._steer or self._size < self.frame_samples:
            return False
        if np.abs(self._head(self.frame_samples)).max() >= self.quiet:
            return False
        if self._steer > 0:
            self._steer -= 1
            self.stretched_frames += 1
            return True
        if self._size < 2 * self.frame_samples:  # keep a frame to play: a skip must not run it dry
            return False
        self._consume(self.frame_samples)
        self._steer += 1
        self.compressed_frames += 1
        if self._steer == 0:
            self._arrivals.clear()  # they were measured before the skips
            self._skipped = True
        return False

    def _stop_steering(self) -> None:
        self._steer = 0
        self._arrivals.clear()
        self._skipped = False

    @property
    def hold_ms(self) -> float:
        """The jitter hold now: silence played before playout (re)starts."""
        return 1000 * self.hold_frames * self.frame_samples / self.sample_rate

    def flush(self) -> int:
        """Barge-in: drop everything queued; the next frame is silence. Returns samples dropped."""
        dropped = self._size
        self._read = self._size = 0
        self._playing, self._held = False, 0
        self._stop_steering()
        self.flushed_samples += dropped
        self.flushes += 1
        return dropped

    # consumer side (aiortc's RTP sender) -----------------------------------------------------
    async def recv(self) -> av.AudioFrame:
        """Wait for the next 20 ms deadline and return that frame (audio or silence)."""
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            deadline = self._start + self._n * self.frame_s
            if now < deadline:
                await asyncio.sleep(deadline - now)
                if self.readyState != "live":  # stopped while we slept
                    raise MediaStreamError
            else:
                self.late_frames += 1
                if now - deadline > self.max_late_s:
                    self._start += now - deadline  # re-anchor: frame n is due now, no backlog burst
                    self.resyncs += 1
        frame = float_to_s16_frame(self._next_samples(), self._n * self.frame_samples, self.sample_rate, self.layout)
        self._n += 1
        self.frames_out += 1
        return frame

    def stop(self) -> None:
        """End the track (aiortc's sender stops on MediaStreamError) and release the buffer."""
        super().stop()
        self._read = self._size = 0
        self._playing = False
        self._buf = np.zeros(0, np.float32)

    def _next_samples(self) -> np.ndarray:
        out = np.zeros(self.frame_samples, np.float32)  # (320,) silence unless audio is queued
        if not self._playing and self._size > 0 and self._size >= self.target_samples:
            if self._held < self.hold_frames:
                self._held += 1  # the jitter hold: slack for the turn after this one
            else:
                self._playing, self._held = True, 0
        if not self._playing:
            self.silence_frames += 1
            return out
        if self._steer_quiet_frame():
            return out
        take = min(self.frame_samples, self._size)
        out[:take] = self._head(take)
        self._consume(take)
        if take < self.frame_samples:
            # ran dry mid-stream: pad this frame and wait for the target depth again
            self.underruns += 1
            self._playing = False
            self._stop_steering()
            if take == 0:
                self.silence_frames += 1
            if self.hold_frames < self.max_hold_frames:
                self.hold_frames += 1
                self.hold_increases += 1
            self._clean_frames = 0
        else:
            self._clean_frames += 1
            if self._clean_frames >= self._decay_frames and self.hold_frames > self.min_hold_frames:
                self.hold_frames -= 1
                self._clean_frames = 0
        return out
