"""`VideoGuard`: refuse inbound video whose decode cost is out of bounds.

The model needs one 160x120 frame per micro-turn at most, and `VideoSampler` converts only
those. Decoding is another matter: aiortc decodes every frame the peer sends, in its decoder
thread, before we see any, and its queue to that thread is unbounded, so a peer sending 4K at
60 fps costs a core and memory whatever we keep. Decode work cannot be skipped frame by frame
(VP8/H.264 inter frames depend on the ones before), so the answer is to refuse the track:
`check()` raises `VideoLimitError` for a frame larger than `max_long_side` x `max_short_side`
(either orientation) or when frames arrive faster than `max_fps` averaged over `window_s`
(a window, so a jitter-buffer burst after a stall is not mistaken for a flood). The caller
ends the call with the error's `reason` and tells the peer its message.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


class VideoLimitError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class VideoLimits:
    max_long_side: int = 1920
    max_short_side: int = 1080
    max_fps: float = 60.0
    window_s: float = 2.0


class VideoGuard:
    """Per inbound video track: call `check(width, height, now)` for every decoded frame."""

    def __init__(self, limits: VideoLimits | None = None) -> None:
        self.limits = limits or VideoLimits()
        n = math.ceil(self.limits.max_fps * self.limits.window_s) + 1
        self._arrivals: deque[float] = deque(maxlen=n)  # monotonic seconds of the last n frames

    def check(self, width: int, height: int, now: float) -> None:
        lim = self.limits
        long_side, short_side = max(width, height), min(width, height)
        if long_side > lim.max_long_side or short_side > lim.max_short_side:
            raise VideoLimitError(
                "video_too_large",
                f"video of {width}x{height} exceeds the {lim.max_long_side}x{lim.max_short_side} limit",
            )
        self._arrivals.append(now)
        if len(self._arrivals) == self._arrivals.maxlen and now - self._arrivals[0] < lim.window_s:
            raise VideoLimitError(
                "video_rate_too_high",
                f"video arrives faster than {lim.max_fps:g} frames per second",
            )
