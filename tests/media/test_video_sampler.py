"""VideoSampler: decimation on the pts clock, and 160x120 RGB center-cropped output."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from media.assembler import MicroTurnAssembler
from media.video_sampler import VideoSampler, to_rgb_160x120

TB = fractions.Fraction(1, 90_000)  # RTP video clock


def vframe(pts: int | None, w: int = 320, h: int = 240, fmt: str = "yuv420p") -> av.VideoFrame:
    f = av.VideoFrame(w, h, fmt)
    f.pts = pts
    f.time_base = TB
    return f


@pytest.mark.parametrize(("fps", "expected"), [(1.0, 3), (5.0, 15), (2.5, 8)])
def test_30fps_in_gives_fps_frames_per_second_of_pts(fps: float, expected: int) -> None:
    s = VideoSampler(fps=fps)
    pts0 = 2**32 - 45_000  # the RTP clock wraps half a second in
    out = [s.sample(vframe((pts0 + i * 3000) % 2**32)) for i in range(90)]  # 3 s at 30 fps
    picked = [i for i, o in enumerate(out) if o is not None]
    assert len(picked) == expected
    assert picked[:2] == [0, round(30 / fps)]
    for o in out:
        if o is not None:
            assert o.shape == (120, 160, 3) and o.dtype == np.uint8
    assert s.frames_in == 90 and s.frames_out == expected


def test_sampling_follows_pts_not_arrival() -> None:
    """A burst of frames (same arrival time, consecutive pts) is one frame; an older one never wins."""
    s = VideoSampler(fps=1.0)
    assert s.sample(vframe(0)) is not None
    assert all(s.sample(vframe(i * 3000)) is None for i in range(1, 30))  # a 1 s burst
    assert s.sample(vframe(90_000)) is not None  # 1 s of pts later
    assert s.sample(vframe(89_000)) is None  # reordered older frame
    assert s.sample(vframe(5 * 90_000)) is not None  # after a 4 s freeze: one frame, not four
    assert s.sample(vframe(5 * 90_000 + 3000)) is None


def test_center_crop_to_4_3() -> None:
    # 16:9: red | green (the 4:3 center) | blue
    img = np.zeros((720, 1280, 3), np.uint8)
    img[:, :160] = (255, 0, 0)
    img[:, 160:1120] = (0, 255, 0)
    img[:, 1120:] = (0, 0, 255)
    out = to_rgb_160x120(av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p"))
    assert out.shape == (120, 160, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    inner = out[:, 2:-2].astype(int)  # one output pixel of the boundary is blended by the area filter
    assert (inner[..., 1] > 200).all() and (inner[..., 0] < 60).all() and (inner[..., 2] < 60).all()

    # portrait 3:4: top and bottom bands are cropped away
    img = np.full((640, 480, 3), 200, np.uint8)
    img[:100] = 0
    img[-100:] = 0
    out = to_rgb_160x120(av.VideoFrame.from_ndarray(img, format="rgb24"))
    assert out.shape == (120, 160, 3) and out[2:-2].min() > 150


@pytest.mark.parametrize(("w", "h", "fmt"), [(640, 480, "yuv420p"), (1920, 1080, "nv12"), (161, 97, "rgb24")])
def test_any_size_and_format(w: int, h: int, fmt: str) -> None:
    out = VideoSampler().sample(vframe(0, w, h, fmt))
    assert out is not None and out.shape == (120, 160, 3) and out.dtype == np.uint8


def test_output_feeds_the_assembler() -> None:
    asm = MicroTurnAssembler()
    frame = VideoSampler().sample(vframe(1234))
    assert frame is not None
    asm.push_video(frame)
    asm.push_audio(np.full(3200, 0.1, np.float32), 0)
    (msg,) = asm.pop_ready()
    np.testing.assert_array_equal(msg.video_array(), frame)


def test_a_backwards_timestamp_reset_resyncs_instead_of_freezing_the_video() -> None:
    """A sender that restarts its clock backwards used to freeze sampling until the media clock
    caught up again (up to 13 h at 90 kHz); now sampling restarts from the reset."""
    s = VideoSampler(fps=1.0)
    due = []
    for i in range(90):  # 3 s at 30 fps
        f = av.VideoFrame(64, 48, "yuv420p")
        f.pts, f.time_base = 5_000_000 + i * 3000, fractions.Fraction(1, 90_000)
        due.append(s.due(f))
    for i in range(90):  # the clock restarts an hour back
        f = av.VideoFrame(64, 48, "yuv420p")
        f.pts, f.time_base = 5_000_000 - 3600 * 90_000 + i * 3000, fractions.Fraction(1, 90_000)
        due.append(s.due(f))
    assert s.resyncs == 1
    assert sum(due[:90]) == 3 and sum(due[90:]) == 3  # one frame a second on both sides of the reset


def test_video_guard_limits() -> None:
    from media.video_limits import VideoGuard, VideoLimitError, VideoLimits

    g = VideoGuard(VideoLimits(max_fps=10, window_s=1.0))
    g.check(1920, 1080, 0.0)
    g.check(1080, 1920, 0.1)  # portrait is the same size
    with pytest.raises(VideoLimitError) as e:
        g.check(1921, 1080, 0.2)
    assert e.value.reason == "video_too_large"
    g = VideoGuard(VideoLimits(max_fps=10, window_s=1.0))
    for i in range(30):  # 8 fps in bursts of two: within the limit averaged over the window
        g.check(640, 480, (i // 2) * 0.25)
    with pytest.raises(VideoLimitError) as e:
        for i in range(20):
            g.check(640, 480, 10.0 + i * 0.01)  # 100 fps
    assert e.value.reason == "video_rate_too_high"
