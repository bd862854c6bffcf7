"""A clip's video: one 160x120 RGB frame per micro-turn, as `frames/` PNGs or an `input.mp4`.

    <clip>/frames/000000.png, 000001.png, ...   frame k is shown during [0.2k, 0.2(k+1)) s
    <clip>/input.mp4                             any size and rate; frame k = the one showing at 0.2k s

The frames folder is what the exporter writes: lossless, so a frame reaches the model exactly as
the generator drew it (the live path compresses it with VP8 on the way, as a camera would). An
mp4 is read the way the server samples a camera: by pts, center-cropped to 4:3 and scaled to
160x120 (media/video_sampler.py). PNG and H.264 go through PyAV, a dependency already, so
nothing new is installed.
"""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np

from infra.messages import FRAME_SHAPE
from media.video_sampler import to_rgb_160x120

FRAMES_DIR = "frames"
MP4_NAME = "input.mp4"
TURN_S = 0.2  # one frame per micro-turn
FPS = 5


class FramesError(ValueError):
    """Unreadable or malformed clip video; the message names the path."""


def encode_png(frame: np.ndarray) -> bytes:
    f = _check(frame)
    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt = f.shape[1], f.shape[0], "rgb24"
    packets = ctx.encode(av.VideoFrame.from_ndarray(f, format="rgb24")) + ctx.encode(None)
    return b"".join(bytes(p) for p in packets)


def decode_png(data: bytes, source: str = "png") -> np.ndarray:
    try:
        frames = av.CodecContext.create("png", "r").decode(av.Packet(data))
    except av.FFmpegError as e:
        raise FramesError(f"{source}: not a PNG: {e}") from e
    if not frames:
        raise FramesError(f"{source}: no image")
    return _fit(frames[0])


def write_frames(clip_dir: str | Path, frames: np.ndarray) -> Path:
    """`frames` (n, 120, 160, 3) uint8 -> `<clip_dir>/frames/000000.png ...`; returns the folder."""
    d = Path(clip_dir) / FRAMES_DIR
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("*.png"):  # a re-export with fewer turns must not leave stale frames
        old.unlink()
    for k, f in enumerate(frames):
        (d / f"{k:06d}.png").write_bytes(encode_png(f))
    return d


def read_frames_dir(d: Path) -> np.ndarray:
    paths = sorted(d.glob("*.png"))
    if not paths:
        raise FramesError(f"{d}: no PNG frames")
    for k, p in enumerate(paths):
        if p.stem != f"{k:06d}":
            raise FramesError(f"{p}: expected {k:06d}.png (frames are numbered from 0 without gaps)")
    return np.stack([decode_png(p.read_bytes(), str(p)) for p in paths])


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = FPS) -> None:
    """H.264 at `fps` (frame k at pts k/fps); nearly lossless (crf 10) so tests can compare pixels."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps, options={"crf": "10", "preset": "veryfast"})
        s.width, s.height, s.pix_fmt = FRAME_SHAPE[1], FRAME_SHAPE[0], "yuv420p"
        s.time_base = fractions.Fraction(1, fps)
        for k, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(_check(f), format="rgb24")
            vf.pts = k
            out.mux(s.encode(vf))
        out.mux(s.encode(None))


def read_mp4(path: Path, n_turns: int | None = None) -> np.ndarray:
    """Frame k = the last video frame whose pts is at or before 0.2k s, for k < n_turns (default:
    as many turns as the video lasts); turns before the first frame repeat it."""
    decoded: list[tuple[float, np.ndarray]] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                pts, tb = frame.pts, frame.time_base
                t = float(pts * tb) if pts is not None and tb is not None else len(decoded) / FPS
                decoded.append((t, _fit(frame)))
    except (av.FFmpegError, IndexError) as e:
        raise FramesError(f"{path}: unreadable video: {e}") from e
    if not decoded:
        raise FramesError(f"{path}: no video frames")
    decoded.sort(key=lambda x: x[0])
    t0 = decoded[0][0]
    times = np.array([t - t0 for t, _ in decoded])
    if n_turns is None:
        n_turns = int(times[-1] / TURN_S + 1e-6) + 1
    idx = np.searchsorted(times, np.arange(n_turns) * TURN_S + 1e-6, side="right") - 1
    return np.stack([decoded[max(i, 0)][1] for i in idx])


def read_clip_frames(clip_dir: str | Path, n_turns: int | None = None) -> np.ndarray | None:
    """The clip's frames (n, 120, 160, 3) uint8: `frames/` if present, else `input.mp4`, else None."""
    d = Path(clip_dir)
    if (d / FRAMES_DIR).is_dir():
        frames = read_frames_dir(d / FRAMES_DIR)
        return frames if n_turns is None else frames[:n_turns]
    if (d / MP4_NAME).is_file():
        return read_mp4(d / MP4_NAME, n_turns)
    return None


def _check(frame: np.ndarray) -> np.ndarray:
    f = np.ascontiguousarray(frame)
    if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
        raise FramesError(f"expected a uint8 RGB frame (h, w, 3), got {f.dtype} {f.shape}")
    return f


def _fit(frame: av.VideoFrame) -> np.ndarray:
    """Any decoded frame as (120, 160, 3) uint8 RGB, as the server samples a camera."""
    if (frame.height, frame.width) == FRAME_SHAPE[:2]:
        return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
    return to_rgb_160x120(frame)
