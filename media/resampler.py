"""`Resampler`: any decoded audio frame -> 16 kHz mono float32 chunks placed on the media clock.

Inbound, aiortc hands us `av.AudioFrame`s straight from its decoders: 48 kHz stereo s16 from
Opus (960 samples per 20 ms), 8 kHz mono s16 from PCMU/PCMA (160 samples), and anything else a
`MediaPlayer` or a test produces. The model wants 16 kHz mono float32 in [-1, 1].

Decisions:

- One `av.AudioResampler` (libswresample behind an FFmpeg filter graph) per input format,
  recreated when the format changes: PyAV binds a resampler to the format of the first frame
  it sees and rejects any other, and a call can legitimately switch (renegotiation, a
  `MediaPlayer` file with a different layout).
- Downmix is a plain channel average done here, not by swresample. swresample's stereo->mono
  matrix adds both channels at -3 dB each and does not renormalise for float output, so a
  browser's dual-mono Opus stream would come out +3 dB (x1.41) louder and could clip. We ask
  the filter for planar float at the *input* layout and average the planes, which keeps a
  mono-in-both-channels source at exactly its level.
- Placement uses the frames' pts, never arrival time: each chunk carries the 16 kHz index of
  its first sample (`AudioChunk.pts`), derived from the (unwrapped) RTP timestamp. Inside one
  resampler instance the output is contiguous, so chunk pts = instance start + samples produced
  so far; this is exact and independent of how the filter graph rounds its own pts.
- A discontinuity in the input (a pts jump from loss, a reordered frame, a timestamp reset)
  flushes the current resampler, whose tail (~16 samples of filter delay) is emitted at its
  true position, and starts a fresh one at the new pts. Feeding the jump into a live
  resampler instead would glue the pre-gap tail onto the post-gap audio, misplacing it by the
  gap length. The cost is a filter edge (a few samples) at each real discontinuity.

Outbound, we do **not** resample to 48 kHz here: `OutputAudioTrack` sends 16 kHz s16 frames
(`float_to_s16_frame`) and lets aiortc's encoder resample once to its codec rate. aiortc's
`OpusEncoder` and `PcmEncoder` each own an `AudioResampler` to 48 kHz stereo / 8 kHz mono
anyway, so converting to 48 kHz first would make a PCMU call resample twice (16 -> 48 -> 8 kHz)
and move 3x the bytes per frame through the sender's executor hop. The frames are dual-mono
*stereo*, not mono: swresample upmixes mono to stereo at -3 dB per channel, so mono frames
come out of aiortc's Opus path 3 dB quieter (measured: RMS 0.250 for 0.354 in), while stereo
frames keep the level through Opus and, because s16 downmix is renormalised, through PCMU too
(tests/media/test_assembler.py round-trips both codecs).
"""

from __future__ import annotations

import fractions
from typing import NamedTuple

import av
import numpy as np

from media.pts_unwrapper import PtsUnwrapper

MODEL_RATE = 16_000


class AudioChunk(NamedTuple):
    """Resampled audio and where it sits on the media clock."""

    pts: int  # 16 kHz sample index of samples[0]: unwrapped RTP time, not rebased to the call start
    samples: np.ndarray  # (n,) float32 mono in [-1, 1]


def _fraction(tb: object) -> fractions.Fraction:
    """PyAV < 19 gives `Fraction`, >= 19 its own rational; both have numerator/denominator."""
    return fractions.Fraction(tb.numerator, tb.denominator)  # type: ignore[attr-defined]


class Resampler:
    """Convert decoded audio frames of any rate/layout/format to 16 kHz mono float32 chunks.

    `resample(frame)` returns zero or more `AudioChunk`s (usually one; two when a
    discontinuity flushes the previous resampler's tail). Feed the chunks to
    `MicroTurnAssembler.push_audio(chunk.samples, chunk.pts)`. Not thread-safe: one instance per
    inbound track, used from the task that reads the track.
    """

    def __init__(self, rate: int = MODEL_RATE, *, tolerance_s: float = 0.001) -> None:
        self.rate = rate
        # a pts this far from where the previous frame ended counts as a discontinuity;
        # 1 ms absorbs rounding in sources whose time base is not 1/sample_rate
        self._tolerance = fractions.Fraction(tolerance_s).limit_denominator(1_000_000)
        self._resampler: av.AudioResampler | None = None
        self._key: tuple[str, str, int] | None = None
        self._time_base: fractions.Fraction | None = None
        self._unwrapper = PtsUnwrapper()
        self._expected: fractions.Fraction | None = None  # seconds where the next frame should start
        self._instance_start_pts: int = 0  # input pts (frame time base) of this instance's first frame
        self._base: int = 0  # output pts (16 kHz) of this instance's first sample
        self._produced: int = 0  # output samples produced by this instance
        # counters (exported by the caller as metrics)
        self.frames_in = 0
        self.discontinuities = 0
        self.format_changes = 0

    def resample(self, frame: av.AudioFrame) -> list[AudioChunk]:
        """Convert one frame; returns the chunks that became available (possibly none)."""
        self.frames_in += 1
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        tb = _fraction(frame.time_base) if frame.time_base is not None else fractions.Fraction(1, frame.sample_rate)
        if tb != self._time_base:
            # RTP wraps in units of the clock rate; a new time base means a new clock
            self._unwrapper.reset()
            self._time_base = tb
        if frame.pts is None:
            # no timestamp: assume contiguous with the previous frame
            pts = 0 if self._expected is None else round(self._expected / tb)
        else:
            pts = self._unwrapper.unwrap(int(frame.pts))
        start = pts * tb  # seconds on the (unrebased) media clock

        out: list[AudioChunk] = []
        if key != self._key:
            if self._key is not None:
                self.format_changes += 1
            out += self._restart(key, pts, start)
        elif self._expected is not None and abs(start - self._expected) > self._tolerance:
            self.discontinuities += 1
            out += self._restart(key, pts, start)
        self._expected = start + fractions.Fraction(frame.samples, frame.sample_rate)

        assert self._resampler is not None
        original_pts = frame.pts
        # the filter graph only needs a monotonic pts; keep it small and instance-relative
        frame.pts = pts - self._instance_start_pts
        try:
            out += self._collect(self._resampler.resample(frame))
        finally:
            frame.pts = original_pts
        return out

    def flush(self) -> list[AudioChunk]:
        """End of stream: emit the samples still inside the filter (its delay, ~1 ms)."""
        out = self._drain()
        self._resampler = None
        self._key = None
        self._expected = None
        return out

    # internals -------------------------------------------------------------------------------
    def _restart(self, key: tuple[str, str, int], pts: int, start: fractions.Fraction) -> list[AudioChunk]:
        tail = self._drain()
        # planar float at the input layout: we average the planes ourselves (see module doc)
        self._resampler = av.AudioResampler(format="fltp", layout=key[1], rate=self.rate)
        self._key = key
        self._instance_start_pts = pts
        self._base = round(start * self.rate)
        self._produced = 0
        return tail

    def _drain(self) -> list[AudioChunk]:
        if self._resampler is None:
            return []
        return self._collect(self._resampler.resample(None))

    def _collect(self, frames: list[av.AudioFrame]) -> list[AudioChunk]:
        parts = []
        for f in frames:
            planes = f.to_ndarray()  # (channels, n) float32, planar
            if planes.ndim == 1:  # packed mono comes back 1-D in some PyAV versions
                planes = planes.reshape(1, -1)
            parts.append(planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0])
        if not parts:
            return []
        samples = np.concatenate(parts).astype(np.float32, copy=False)  # (n,) own copy, not a frame view
        if samples.size == 0:
            return []
        np.clip(samples, -1.0, 1.0, out=samples)  # filter overshoot on full-scale input
        chunk = AudioChunk(self._base + self._produced, samples)
        self._produced += samples.size
        return [chunk]


def float_to_s16_frame(samples: np.ndarray, pts: int, rate: int = MODEL_RATE, layout: str = "stereo") -> av.AudioFrame:
    """Pack mono float32 in [-1, 1] into a packed s16 `av.AudioFrame` (what aiortc's encoders take).

    The frame keeps `rate` (16 kHz for model audio): aiortc's Opus/PCM encoders resample to
    their codec rate themselves. `layout="stereo"` duplicates the channel (dual-mono), which
    keeps the level through aiortc's Opus encoder; mono loses 3 dB there (see module doc).
    """
    if layout not in ("mono", "stereo"):
        raise ValueError(f"layout must be 'mono' or 'stereo', got {layout!r}")
    x = np.asarray(samples, dtype=np.float32).reshape(-1)  # (n,)
    pcm = np.rint(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)  # (n,) s16
    if layout == "stereo":
        pcm = np.repeat(pcm, 2)  # (2n,) interleaved L R L R
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=layout)  # packed (1, n*ch)
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, rate)
    return frame
