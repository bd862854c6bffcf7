"""`VideoSampler`: any decoded video frame -> at most `fps` frames per second of pts, 160x120 RGB.

The model sees at most one frame per micro-turn (default 1 fps), as 12 patches of 40x40 from a
160x120 RGB image. A browser camera sends 30 fps at up to 720p, so almost every frame is
dropped here, *before* any pixel conversion: only due frames pay for the scale.

Decisions:

- Sampling runs on the frame pts clock (RTP 90 kHz, unwrapped), not on arrival time, for the
  same reason audio does: bursts from the jitter buffer must not produce bursts of samples.
  Frame n is due when it opens a new slot floor((pts - pts_0) * fps); slots are computed from
  the first pts with exact fractions, so the rate never drifts, and a reordered (older) frame
  never replaces a newer one. A frame more than 2 s behind the newest slot is a timestamp
  reset, not reordering: sampling restarts from it (`resyncs`) instead of waiting, possibly
  hours, for the media clock to catch up.
- Center-crop to 4:3, not letterbox: black bars would waste some of only 12 patches on
  nothing, and a 16:9 webcam loses ~12% at each side, where there is rarely anything the
  model needs (faces and held-up objects sit in the middle). Portrait video loses top/bottom.
- The crop is done by one swscale pass (PyAV `reformat`) to the size whose short side fits
  the target, with area interpolation (the right filter for large downscales), followed by a
  numpy slice of the small result: one conversion, any input pixel format.
"""

from __future__ import annotations

import fractions
import math
import time

import av
import numpy as np

from infra.messages import FRAME_SHAPE
from media.pts_unwrapper import PtsUnwrapper

OUT_H, OUT_W = FRAME_SHAPE[0], FRAME_SHAPE[1]  # 120, 160


class VideoSampler:
    """Decimate a video track to `fps` frames per second of pts and convert to (120, 160, 3) uint8.

    `sample(frame)` returns the converted frame when it is due, else None; feed the result to
    `MicroTurnAssembler.push_video`. Not thread-safe: one instance per inbound video track.
    """

    def __init__(self, fps: float = 1.0) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = fractions.Fraction(fps).limit_denominator(1000)
        self._unwrapper = PtsUnwrapper()
        self._time_base: fractions.Fraction | None = None
        self._first: fractions.Fraction | None = None  # seconds of the first frame (media clock)
        self._last_slot: int | None = None
        self._wall_start: float | None = None
        # counters
        self.frames_in = 0
        self.frames_out = 0
        self.resyncs = 0

    def due(self, frame: av.VideoFrame) -> bool:
        """True when `frame` opens a new sampling slot (advances the sampler if so)."""
        self.frames_in += 1
        if frame.pts is None:
            # no media clock on this source: fall back to the monotonic clock
            now = time.monotonic()
            if self._wall_start is None:
                self._wall_start = now
            t = fractions.Fraction(now - self._wall_start)
        else:
            tb = (
                fractions.Fraction(frame.time_base.numerator, frame.time_base.denominator)
                if frame.time_base is not None
                else fractions.Fraction(1, 90_000)  # the RTP video clock
            )
            if tb != self._time_base:
                self._unwrapper.reset()
                self._time_base = tb
                self._first = None
                self._last_slot = None
            pts = self._unwrapper.unwrap(int(frame.pts))
            if self._first is None:
                self._first = pts * tb
            t = pts * tb - self._first
            if self._last_slot is not None and math.floor(t * self.fps) < self._last_slot - 2 * self.fps:
                self.resyncs += 1
                self._first, self._last_slot, t = pts * tb, None, fractions.Fraction(0)
        slot = math.floor(t * self.fps)
        if self._last_slot is not None and slot <= self._last_slot:
            return False
        self._last_slot = slot
        return True

    def sample(self, frame: av.VideoFrame) -> np.ndarray | None:
        """The frame as (120, 160, 3) uint8 RGB if it is due, else None."""
        if not self.due(frame):
            return None
        self.frames_out += 1
        return to_rgb_160x120(frame)


def to_rgb_160x120(frame: av.VideoFrame) -> np.ndarray:
    """Center-crop to 4:3 and scale to (120, 160, 3) uint8 RGB in one swscale pass + a slice."""
    w, h = frame.width, frame.height
    if w * OUT_H >= h * OUT_W:  # wider than 4:3: fit the height, crop the sides
        sh, sw = OUT_H, max(OUT_W, round(w * OUT_H / h))
    else:  # taller than 4:3: fit the width, crop top and bottom
        sw, sh = OUT_W, max(OUT_H, round(h * OUT_W / w))
    rgb = frame.reformat(width=sw, height=sh, format="rgb24", interpolation="AREA").to_ndarray()  # (sh, sw, 3)
    y0, x0 = (sh - OUT_H) // 2, (sw - OUT_W) // 2
    return np.ascontiguousarray(rgb[y0 : y0 + OUT_H, x0 : x0 + OUT_W])  # (120, 160, 3) uint8
