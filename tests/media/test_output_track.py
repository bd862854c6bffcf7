"""OutputAudioTrack: absolute-deadline pacing, continuous pts, playout buffer behaviour.

These check pacing *correctness* with generous tolerances (a loaded CI box wakes late by a
millisecond or two), not speed. Only the first test runs for the full 5 s the issue asks for;
the others need a handful of frames.
"""

from __future__ import annotations

import asyncio
import fractions
import gc
import time

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from media.output_track import OutputAudioTrack

RATE = 16_000
FRAME = 320
TURN = 3200


def ramp(n: int, start: int = 0) -> np.ndarray:
    """Distinct, s16-exact values so order and continuity are checkable after quantisation."""
    return ((((np.arange(start, start + n) % 2000) + 1) * 8) / 32767).astype(np.float32)  # (n,)


def pcm(frame: av.AudioFrame) -> np.ndarray:
    """The frame's samples, (320,) int32; dual-mono stereo frames must carry the same in L and R."""
    inter = frame.to_ndarray().reshape(-1, 2).astype(np.int32)  # (320, 2) L R
    np.testing.assert_array_equal(inter[:, 0], inter[:, 1])
    return inter[:, 0]


async def test_pacing_5s_no_drift_continuous_pts_and_audio() -> None:
    # a full collection of the whole test session's heap (torch, aiortc: ~100 ms) falling inside
    # these 5 s stalls the loop past the tolerances; it is the process's, not the track's
    gc.collect()
    track = OutputAudioTrack()
    n_frames = 250  # 5 s
    total = n_frames * FRAME
    turns = total // TURN

    async def producer() -> None:
        # the model: one 200 ms turn per 200 ms, on its own absolute schedule, one turn ahead
        t0 = time.monotonic()
        for k in range(turns):
            track.push(ramp(TURN, k * TURN))
            await asyncio.sleep(max(0.0, t0 + k * 0.2 - time.monotonic()))

    task = asyncio.create_task(producer())
    await asyncio.sleep(0)  # first two turns queued before playout starts
    times, frames = [], []
    for _ in range(n_frames):
        f = await track.recv()
        times.append(time.monotonic())
        frames.append(f)
    await task

    t = np.array(times)
    iv = np.diff(t) * 1000  # ms
    drift_ms = (t[-1] - (t[0] + (n_frames - 1) * 0.020)) * 1000
    print(
        f"\npacing over {n_frames} frames: mean {iv.mean():.3f} ms, std {iv.std():.3f} ms, "
        f"min {iv.min():.2f} ms, max {iv.max():.2f} ms, final drift {drift_ms:+.2f} ms, "
        f"late_frames {track.late_frames}, resyncs {track.resyncs}"
    )
    assert iv.mean() == pytest.approx(20.0, abs=0.5)
    assert abs(drift_ms) < 15  # absolute deadlines: error does not accumulate over 250 frames
    assert np.percentile(iv, 90) < 25

    assert [f.pts for f in frames] == [i * FRAME for i in range(n_frames)]  # each = previous + samples
    for f in frames:
        assert (f.samples, f.sample_rate, f.format.name, f.layout.name) == (FRAME, RATE, "s16", "stereo")
        assert f.time_base == fractions.Fraction(1, RATE)
    # what was pushed is what was played, in order, with no hole
    played = np.concatenate([pcm(f) for f in frames])
    np.testing.assert_array_equal(played, np.rint(ramp(total) * 32767).astype(np.int32))
    assert track.underruns == 0 and track.silence_frames == 0 and track.dropped_samples == 0
    track.stop()


async def test_silence_when_empty_then_underrun_counted() -> None:
    track = OutputAudioTrack()
    for _ in range(3):
        assert not pcm(await track.recv()).any()
    assert track.silence_frames == 3 and track.underruns == 0  # idle is not an underrun

    track.push(ramp(TURN))
    got = [pcm(await track.recv()) for _ in range(11)]
    assert all(g.any() for g in got[:10]) and not got[10].any()
    assert track.underruns == 1 and track.silence_frames == 4
    track.stop()


async def test_prebuffer_waits_for_target_depth() -> None:
    track = OutputAudioTrack(target_ms=100)
    track.push(ramp(FRAME * 2))  # 40 ms < 100 ms target
    assert not pcm(await track.recv()).any()
    track.push(ramp(FRAME * 3, FRAME * 2))  # now 100 ms queued
    np.testing.assert_array_equal(pcm(await track.recv()), np.rint(ramp(FRAME) * 32767))
    track.stop()


async def test_flush_drops_queued_audio_immediately() -> None:
    track = OutputAudioTrack()
    track.push(ramp(RATE))  # 1 s
    assert pcm(await track.recv()).any()
    assert pcm(await track.recv()).any()
    assert track.flush() == RATE - 2 * FRAME
    assert track.depth_samples == 0 and track.flushed_samples == RATE - 2 * FRAME
    f = await track.recv()
    assert not pcm(f).any() and f.pts == 2 * FRAME  # silence, pts still continuous
    track.push(ramp(TURN, 5000))  # the next answer plays right away
    np.testing.assert_array_equal(pcm(await track.recv()), np.rint(ramp(FRAME, 5000) * 32767))
    track.stop()


async def test_overflow_drops_oldest_with_counter() -> None:
    track = OutputAudioTrack(max_ms=1000)
    for k in range(8):  # 1.6 s into a 1 s buffer
        track.push(ramp(2000, k * 2000))
    assert track.depth_samples == RATE
    assert track.dropped_samples == 8 * 2000 - RATE
    np.testing.assert_array_equal(pcm(await track.recv()), np.rint(ramp(FRAME, 8 * 2000 - RATE) * 32767))
    track.push(ramp(3 * RATE))  # one push larger than the whole buffer keeps only its newest second
    assert track.depth_samples == RATE
    np.testing.assert_array_equal(pcm(await track.recv()), np.rint(ramp(FRAME, 2 * RATE) * 32767))
    track.stop()


async def test_late_recv_catches_up_without_bursting_a_backlog() -> None:
    track = OutputAudioTrack(max_late_ms=60)
    await track.recv()
    await track.recv()
    time.sleep(0.045)  # the loop was blocked for ~2 frames: catch up, keep the original schedule
    t0 = time.monotonic()
    for _ in range(3):
        await track.recv()
    assert time.monotonic() - t0 < 0.035  # two immediate frames then back on the grid
    assert track.resyncs == 0 and track.late_frames >= 1

    time.sleep(0.3)  # blocked for 15 frames: re-anchor instead of bursting 15 frames
    t1 = time.monotonic()
    f = await track.recv()
    assert time.monotonic() - t1 < 0.01
    stamps = []
    for _ in range(3):
        f2 = await track.recv()
        stamps.append(time.monotonic())
        assert f2.pts is not None and f.pts is not None and f2.pts == f.pts + FRAME
        f = f2
    gaps = np.diff([t1, *stamps])
    assert track.resyncs == 1
    assert (gaps > 0.012).all()  # paced again right away, no burst
    track.stop()


async def test_stop_ends_the_track() -> None:
    track = OutputAudioTrack()
    track.push(ramp(TURN))
    await track.recv()
    pending = asyncio.create_task(track.recv())  # sleeping towards its deadline
    await asyncio.sleep(0.005)
    track.stop()
    with pytest.raises(MediaStreamError):
        await pending
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert track.readyState == "ended" and track.depth_samples == 0
    track.push(ramp(TURN))  # ignored after stop
    assert track.depth_samples == 0


async def test_after_an_underrun_playback_waits_for_the_target_again() -> None:
    """Running dry ends playback: the idle frames after it are silence, not an underrun each,
    and a trickle below the target depth is held back instead of being played frame by frame."""
    track = OutputAudioTrack()  # target: one micro-turn (200 ms)
    track.push(ramp(TURN))
    for _ in range(TURN // FRAME):
        assert pcm(await track.recv()).any()
    assert track.underruns == 0
    for _ in range(5):  # dry: the first of these is the underrun, the rest are idle
        assert not pcm(await track.recv()).any()
    assert track.underruns == 1 and track.silence_frames == 5

    track.push(ramp(FRAME, 7000))  # a lone 20 ms frame, far below the target
    assert not pcm(await track.recv()).any()  # held until the target is queued again
    assert track.depth_samples == FRAME and track.underruns == 1
    track.push(ramp(TURN - FRAME, 7000 + FRAME))  # now a whole turn is queued: play it, in order
    assert track.hold_frames == 1  # after the jitter hold the underrun added
    assert not pcm(await track.recv()).any()
    for k in range(TURN // FRAME):
        np.testing.assert_array_equal(pcm(await track.recv()), np.rint(ramp(FRAME, 7000 + k * FRAME) * 32767))
    assert track.underruns == 1
    track.stop()


def next_frame(track: OutputAudioTrack) -> np.ndarray:
    """The next frame's samples by the playout policy alone, without the 20 ms wait `recv` adds
    (its pacing is tested above): (320,) float32."""
    return track._next_samples()


def test_late_turns_grow_the_jitter_hold_until_they_play_without_a_gap() -> None:
    """Turns due every 200 ms, every third one 40 ms late: the first late ones run the buffer dry,
    each growing the hold by a frame, until the hold covers the lateness; from then on no turn
    runs it dry. On-time turns alone never grow it."""
    per_turn = TURN // FRAME
    on_time = OutputAudioTrack()
    late = OutputAudioTrack()
    lateness = [0 if k % 3 else 2 for k in range(1, 31)]  # frames (20 ms) past the turn's due frame
    for track, delays in ((on_time, [0] * len(lateness)), (late, lateness)):
        arrivals = [0] + [k * per_turn + d for k, d in enumerate(delays, start=1)]
        frame, k, underruns_at = 0, 0, []
        while k < len(arrivals):
            while k < len(arrivals) and arrivals[k] <= frame:
                track.push(ramp(TURN))
                k += 1
            before = track.underruns
            next_frame(track)
            if track.underruns > before:
                underruns_at.append(frame)
            frame += 1
        if track is on_time:
            assert track.underruns == 0 and track.hold_frames == 0
        else:
            assert 1 <= track.underruns <= 3 and track.hold_frames == track.underruns
            assert max(underruns_at) < 12 * per_turn  # all of them early: the last 18 turns ran clean
    late.stop()
    on_time.stop()


def test_the_jitter_hold_is_bounded_and_decays_on_clean_playout() -> None:
    track = OutputAudioTrack(hold_ms=20, max_hold_ms=60, hold_decay_s=0.3)  # decay: 15 clean frames
    assert track.hold_frames == 1 and track.hold_ms == 20
    for _ in range(5):  # a turn, then dry: an underrun each time
        track.push(ramp(TURN))
        while track.depth_samples:
            next_frame(track)
        next_frame(track)
    assert track.underruns == 5 and track.hold_frames == 3 and track.hold_increases == 2  # capped at 60 ms
    # clean playout: each turn queued before the previous one runs out; every 15 whole frames
    # played (0.3 s) take a frame of hold off, down to hold_ms and no further
    track.push(ramp(TURN))
    for _ in range(3 + 4 * 15):
        if track.depth_samples <= FRAME:
            track.push(ramp(TURN))
        next_frame(track)
    assert track.underruns == 5 and track.hold_frames == 1
    with pytest.raises(ValueError):
        OutputAudioTrack(hold_ms=120, max_hold_ms=100)
    track.stop()


def play(track: OutputAudioTrack, turns: list[np.ndarray], arrivals: list[int]) -> tuple[np.ndarray, list[int]]:
    """Turn k pushed just before frame `arrivals[k]` is played (frame time, as `next_frame`);
    plays until the buffer is empty. Returns every frame played, concatenated, and the samples
    queued ahead of each turn as it arrived."""
    out, queued, frame, k = [], [], 0, 0
    while k < len(turns) or track.depth_samples:
        while k < len(turns) and arrivals[k] <= frame:
            queued.append(track.depth_samples)
            track.push(turns[k])
            k += 1
        out.append(next_frame(track))
        frame += 1
    return np.concatenate(out), queued


def speech_and_pauses(n: int) -> list[np.ndarray]:
    """n turns: every third one loud (distinct ramp values), the rest the exact zeros the model's
    voice gate plays between words."""
    return [ramp(TURN, 7 * k * TURN) if k % 3 == 1 else np.zeros(TURN, np.float32) for k in range(n)]


def loud_in_order(played: np.ndarray, turns: list[np.ndarray]) -> bool:
    """Every loud turn came out whole and in order: nothing of it skipped or split by silence
    (ramp values are never 0, and loud turns never adjoin)."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], (played != 0).astype(np.int8), [0]])))
    runs = [played[a:b] for a, b in zip(edges[::2], edges[1::2], strict=True)]
    loud = [t for t in turns if t.any()]
    return len(runs) == len(loud) and all(np.array_equal(r, t) for r, t in zip(runs, loud, strict=True))


def test_quiet_steering_skips_the_queue_a_doubled_first_turn_left_behind() -> None:
    """A call's first two turns come a step apart (the first is held to set its phase), so every
    later turn arrives with ~140 ms queued ahead of it: that much latency for the whole call.
    Steering skips frames of the model's silence until each turn arrives with the margin (40 ms)
    queued, give or take a frame; loud audio is never touched, and nothing runs dry."""
    per_turn = TURN // FRAME
    turns = speech_and_pauses(40)
    arrivals = [0, *((k - 1) * per_turn + 3 for k in range(1, 40))]  # turn 1 three frames after turn 0
    for margin, expect_skips in ((None, False), (40, True)):
        track = OutputAudioTrack(margin_ms=margin)
        played, queued = play(track, turns, arrivals)
        assert track.underruns == 0 and loud_in_order(played, turns)
        assert queued[1] == TURN - 3 * FRAME  # 140 ms ahead of turn 1
        if not expect_skips:
            assert set(queued[1:]) == {TURN - 3 * FRAME} and track.compressed_frames == 0
        else:
            assert track.compressed_frames == (TURN - 3 * FRAME - 2 * FRAME) // FRAME  # 7 - 2 frames
            assert all(2 * FRAME <= q < 3 * FRAME for q in queued[-10:])  # margin, within a frame
            assert track.stretched_frames == 0
        track.stop()


def test_quiet_steering_adds_silence_before_a_slowing_step_runs_the_buffer_dry() -> None:
    """The step grows as the calls' windows fill: each turn arrives a little later than the one
    before. Unsteered, turns run the buffer dry (the jitter hold then catches up, one underrun
    at a time); steered, frames of silence go in where the model is quiet, ahead of need."""
    per_turn = TURN // FRAME
    turns = speech_and_pauses(36)
    arrivals = [k * per_turn + k // 3 for k in range(36)]  # a frame later every 3 turns
    results = {}
    for margin in (None, 40):
        track = OutputAudioTrack(margin_ms=margin)
        played, _ = play(track, turns, arrivals)
        assert margin is None or loud_in_order(played, turns)
        results[margin] = (track.underruns, track.stretched_frames)
        track.stop()
    assert results[None][0] >= 3 and results[None][1] == 0
    assert results[40] == (0, 35 // 3 + 2)  # as late as the last turn, plus the margin: no more


def test_steering_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        OutputAudioTrack(margin_ms=-1)
    with pytest.raises(ValueError):
        OutputAudioTrack(steer_window=0)
    with pytest.raises(ValueError):
        OutputAudioTrack(steer_window=4, first_window=5)
