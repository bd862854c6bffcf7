"""`PtsUnwrapper`: turns 32-bit RTP timestamps into a monotonic 64-bit media clock."""

from __future__ import annotations


class PtsUnwrapper:
    """Unwrap a wrapping timestamp counter (RTP timestamps are 32 bits).

    aiortc hands decoded frames over with `pts` = the raw RTP timestamp, which starts at a
    random value and wraps modulo 2**32: after at most 24.8 h at 48 kHz, 13.3 h at 90 kHz, and
    possibly within seconds when the random start is near the top. Everything downstream
    (gap detection, micro-turn placement, video sampling) needs a clock that never jumps back,
    so each step is read as the signed difference modulo 2**bits and accumulated. A step of
    more than half the range is therefore read as a backwards jump, which no real stream does.
    Inputs that never wrap (file pts, already-unwrapped values) pass through unchanged as long
    as consecutive values differ by less than 2**(bits-1).
    """

    def __init__(self, bits: int = 32) -> None:
        self._bits = bits
        self._modulus = 1 << bits
        self._half = 1 << (bits - 1)
        self._last_raw: int | None = None
        self._last: int = 0
        self._first: int = 0
        self._max: int = 0

    def unwrap(self, pts: int) -> int:
        """Return the unwrapped value of `pts`; the first value passes through unchanged."""
        if self._last_raw is None:
            self._last_raw = pts
            self._last = self._first = self._max = pts
            return pts
        delta = (pts - self._last_raw) % self._modulus
        if delta >= self._half:
            delta -= self._modulus  # a (small) step backwards: reordering, not a wrap
        self._last_raw = pts
        self._last += delta
        self._max = max(self._max, self._last)
        return self._last

    @property
    def wraps(self) -> int:
        """How many times the raw counter has wrapped since the first value (for logs/metrics)."""
        return (self._max >> self._bits) - (self._first >> self._bits)

    def reset(self) -> None:
        """Forget the history: the next value passes through unchanged."""
        self._last_raw = None
        self._last = 0
