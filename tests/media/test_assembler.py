"""MicroTurnAssembler: turns cut on the media clock under jitter, loss, reordering, duplicates
and a consumer that falls behind; every sample accounted for."""

from __future__ import annotations

import fractions
import itertools
import math
import random

import av
import numpy as np
import pytest

from infra.messages import TURN_SAMPLES, MicroTurnInput
from media.assembler import MicroTurnAssembler
from media.resampler import Resampler

T = TURN_SAMPLES
F = 320  # 20 ms frames at 16 kHz
PTS0 = 987_654_321  # any origin: the assembler rebases to the first frame


def signal(n: int) -> np.ndarray:
    """Never zero, and position-identifiable, so zero-fill and misplacement are both visible."""
    return (((np.arange(n) % 997) + 1) / 2000.0).astype(np.float32)  # (n,) in (0, 0.5]


def frames(n_frames: int) -> list[tuple[int, np.ndarray]]:
    x = signal(n_frames * F)
    return [(PTS0 + i * F, x[i * F : (i + 1) * F]) for i in range(n_frames)]


def push_all(asm: MicroTurnAssembler, items: list[tuple[int, np.ndarray]], pop_every: int = 1) -> list[MicroTurnInput]:
    out: list[MicroTurnInput] = []
    for i, (pts, x) in enumerate(items):
        asm.push_audio(x, pts)
        if (i + 1) % pop_every == 0:
            out += asm.pop_ready()
    return out + asm.pop_ready()


def timeline(msgs: list[MicroTurnInput], n_turns: int) -> np.ndarray:
    """Lay emitted turns out on the media clock; NaN where no turn was emitted."""
    y = np.full(n_turns * T, np.nan, np.float32)
    for m in msgs:
        y[m.turn * T : (m.turn + 1) * T] = m.audio_array()
    return y


def assert_increasing(msgs: list[MicroTurnInput]) -> None:
    turns = [m.turn for m in msgs]
    assert all(b > a for a, b in itertools.pairwise(turns)), turns


def test_in_order_stream_gives_exact_turns() -> None:
    asm = MicroTurnAssembler("s1")
    msgs = push_all(asm, frames(50))  # 1 s
    assert [m.turn for m in msgs] == [0, 1, 2, 3, 4]
    assert all(m.session_id == "s1" and not m.gap for m in msgs)
    np.testing.assert_array_equal(timeline(msgs, 5), signal(5 * T))
    assert asm.gaps == asm.dropped_late == asm.dropped_stale == 0


def test_jitter_bursts_change_nothing() -> None:
    """Frames arriving in bursts of 1..10 (up to 200 ms at once) still cut the same turns."""
    rng = random.Random(1)
    items = frames(250)  # 5 s
    asm = MicroTurnAssembler()
    msgs: list[MicroTurnInput] = []
    i = 0
    while i < len(items):
        burst = rng.randint(1, 10)
        for pts, x in items[i : i + burst]:
            asm.push_audio(x, pts)
        i += burst
        msgs += asm.pop_ready()  # the consumer wakes once per burst
    assert [m.turn for m in msgs] == list(range(25))
    np.testing.assert_array_equal(timeline(msgs, 25), signal(25 * T))
    assert asm.gaps == asm.dropped_stale == asm.dropped_late == asm.duplicate_samples == 0


def test_loss_is_zero_filled_exactly_where_missing_and_flagged() -> None:
    items = frames(50)
    lost = {13, 14, 15, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45}  # 60 ms; 340 ms
    msgs = push_all(MicroTurnAssembler(), [it for i, it in enumerate(items) if i not in lost])
    expected = signal(50 * F)
    for i in lost:
        expected[i * F : (i + 1) * F] = 0.0
    n = len(msgs)
    assert [m.turn for m in msgs] == list(range(n))
    np.testing.assert_array_equal(timeline(msgs, n), expected[: n * T])
    gap_turns = {i * F // T for i in lost}
    assert [m.turn for m in msgs if m.gap] == sorted(t for t in gap_turns if t < n)


def test_loss_counters_and_a_whole_missing_turn() -> None:
    items = frames(60)
    lost = set(range(10, 20))  # exactly turn 1
    asm = MicroTurnAssembler()
    msgs = push_all(asm, [it for i, it in enumerate(items) if i not in lost]) + asm.finish()
    assert [m.turn for m in msgs] == [0, 1, 2, 3, 4, 5]
    assert [m.gap for m in msgs] == [False, True, False, False, False, False]
    assert not msgs[1].audio_array().any()
    assert asm.gaps == 1 and asm.gap_samples == T


def test_reordering_within_the_window_is_placed_at_its_pts() -> None:
    items = frames(100)
    shuffled = list(items)
    for i in range(0, 96, 4):  # swap neighbours, and hold one frame back by two places
        shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
        shuffled[i + 2], shuffled[i + 3] = shuffled[i + 3], shuffled[i + 2]
    for i in range(5, 95, 10):
        shuffled.insert(i + 3, shuffled.pop(i))
    asm = MicroTurnAssembler()
    msgs = push_all(asm, shuffled)
    assert [m.turn for m in msgs] == list(range(10))
    assert not any(m.gap for m in msgs)
    np.testing.assert_array_equal(timeline(msgs, 10), signal(10 * T))
    assert asm.dropped_late == asm.gaps == 0


def test_reordering_beyond_the_window_is_a_gap_then_a_late_drop() -> None:
    items = frames(50)
    late = items.pop(12)  # turn 0 ends at frame 10; hold frame 12 (turn 1) back 400 ms
    asm = MicroTurnAssembler(reorder_samples=960)
    msgs = push_all(asm, items[:31])
    asm.push_audio(late[1], late[0])
    msgs += push_all(asm, items[31:])
    assert msgs[1].turn == 1 and msgs[1].gap
    assert not msgs[1].audio_array()[2 * F : 3 * F].any()
    assert asm.dropped_late == 1 and asm.late_samples == F


def test_duplicates_are_dropped() -> None:
    items = frames(50)
    dup_now = [x for i, it in enumerate(items) for x in ([it, it] if i % 7 == 0 else [it])]  # immediate dupes
    asm = MicroTurnAssembler()
    msgs = push_all(asm, dup_now)
    # frames 0, 7, .., 49: eight extra copies; a copy that arrives after its turn went out is late
    assert asm.duplicate_samples + asm.late_samples == 8 * F
    late_before, dropped_before = asm.late_samples, asm.dropped_late
    for pts, x in items[:10]:  # turn 0 replayed long after it went out
        asm.push_audio(x, pts)
    msgs += asm.pop_ready()
    np.testing.assert_array_equal(timeline(msgs, 5), signal(5 * T))
    assert asm.dropped_late == dropped_before + 10 and asm.late_samples == late_before + 10 * F
    assert_increasing(msgs)


def test_consumer_behind_drops_oldest_turns_with_a_counter() -> None:
    items = frames(150)  # 3 s
    asm = MicroTurnAssembler(max_pending=2)
    for pts, x in items[:100]:  # 2 s while nobody pops
        asm.push_audio(x, pts)
        assert asm.pending <= 2
    msgs = asm.pop_ready()
    assert [m.turn for m in msgs] == [8, 9]  # the newest two survived
    assert asm.dropped_stale == 8
    msgs += push_all(asm, items[100:])  # consumer caught up again
    assert [m.turn for m in msgs] == [8, 9, 10, 11, 12, 13, 14]
    assert asm.dropped_stale == 8
    np.testing.assert_array_equal(timeline(msgs, 15)[8 * T :], signal(15 * T)[8 * T :])


def test_long_outage_is_counted_not_allocated() -> None:
    asm = MicroTurnAssembler()
    x = signal(F)
    asm.push_audio(x, 0)
    hour = 16_000 * 3600
    asm.push_audio(x, hour)  # an hour later
    assert asm.pending <= 2 and len(asm._open) <= 2
    msgs = asm.pop_ready() + asm.finish()
    assert_increasing(msgs)
    assert msgs[-1].turn == hour // T and msgs[-1].gap
    # turns 0 .. hour/T - 3 were dropped at once (only counted); the last two finalised plus the
    # two finish() closes were emitted
    assert asm.dropped_stale == hour // T - 3 and asm.stale_samples == F
    assert [m.turn for m in msgs] == [hour // T - 3 + i for i in range(4)]
    assert asm.emitted + asm.dropped_stale == hour // T + 1


def test_every_sample_is_accounted_for() -> None:
    """Random jitter, loss, reordering, duplicates, late replays and a lazy consumer."""
    rng = random.Random(7)
    items = frames(500)  # 10 s
    sent: list[tuple[int, np.ndarray]] = []
    for it in items:
        r = rng.random()
        if r < 0.05:
            continue  # lost
        sent.append(it)
        if r < 0.10:
            sent.append(it)  # duplicated
        elif r < 0.12:
            sent.append(items[max(0, (it[0] - PTS0) // F - 40)])  # a late replay of ~800 ms ago
    for i in range(0, len(sent) - 3, 9):  # local reordering
        sent[i], sent[i + 2] = sent[i + 2], sent[i]
    asm = MicroTurnAssembler(max_pending=2)
    msgs: list[MicroTurnInput] = []
    for pts, x in sent:
        asm.push_audio(x, pts)
        if rng.random() < 0.03:  # the consumer only sometimes keeps up
            msgs += asm.pop_ready()
    msgs += asm.finish()
    assert_increasing(msgs)
    assert asm.dropped_stale > 0 and asm.gaps > 0 and asm.dropped_late > 0
    real = sum(int(np.count_nonzero(m.audio_array())) for m in msgs)
    assert asm.samples_in == sum(x.size for _, x in sent)
    assert asm.samples_in == real + asm.late_samples + asm.duplicate_samples + asm.stale_samples
    assert sum(T - np.count_nonzero(m.audio_array()) for m in msgs) <= asm.gap_samples
    assert asm.emitted == len(msgs)
    assert asm.emitted + asm.dropped_stale == msgs[-1].turn + 1  # every turn number went somewhere
    zero_turns = [m for m in msgs if np.count_nonzero(m.audio_array()) < T]
    assert all(m.gap for m in zero_turns)


def test_small_pts_jitter_snaps_instead_of_making_gaps() -> None:
    items = frames(50)
    asm = MicroTurnAssembler()
    msgs = push_all(asm, [(pts + (1 if i % 2 else 0), x) for i, (pts, x) in enumerate(items)])
    assert asm.gaps == 0 and asm.duplicate_samples == 0 and len(msgs) == 5


def test_timestamp_reset_resyncs_after_a_few_frames() -> None:
    items = frames(60)
    asm = MicroTurnAssembler(resync_samples=16_000, resync_after=3)
    msgs = push_all(asm, items)
    restarted = [(pts - PTS0 + 5, x) for pts, x in frames(60)]  # sender restarted its clock near 0
    msgs += push_all(asm, restarted) + asm.finish()
    assert asm.resyncs == 1
    assert asm.dropped_late == 2  # the first two frames of the restart, before we believed it
    assert_increasing(msgs)
    assert msgs[-1].turn == (60 + 58) * F // T  # the restarted stream continued at the write head


def test_text_and_video_ride_on_the_next_emitted_turn() -> None:
    asm = MicroTurnAssembler(max_pending=1, max_text_chars=10)
    frame = np.full((120, 160, 3), 7, np.uint8)
    asm.push_text("hel")
    asm.push_text("lo")
    asm.push_video(np.zeros((120, 160, 3), np.uint8))
    asm.push_video(frame)
    for pts, x in frames(30):  # 3 turns finalised, 2 dropped stale: the text must survive
        asm.push_audio(x, pts)
    msgs = asm.pop_ready()
    assert asm.dropped_stale == 2 and len(msgs) == 1
    assert msgs[0].text == "hello"
    np.testing.assert_array_equal(msgs[0].video_array(), frame)
    assert asm.video_replaced == 1
    for pts, x in frames(40)[30:]:
        asm.push_audio(x, pts)
    nxt = asm.pop_ready()
    assert nxt[0].text == "" and nxt[0].video is None

    # bounded: text that would overflow one turn's intake is refused whole, earlier text kept
    assert asm.push_text("0123") and asm.push_text("456789")
    assert not asm.push_text("abc")
    for pts, x in frames(50)[40:]:
        asm.push_audio(x, pts)
    assert asm.pop_ready()[0].text == "0123456789" and asm.dropped_text_chars == 3
    with pytest.raises(ValueError, match="uint8"):
        asm.push_video(np.zeros((120, 160, 3), np.float32))


def test_resampler_to_assembler_end_to_end() -> None:
    """Opus-shaped frames (48 kHz stereo, RTP pts) with one lost packet -> flagged turn, right place."""
    rate = 48_000
    x = np.rint(0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate) * 32767).astype(np.int16)
    r, asm = Resampler(), MicroTurnAssembler("call")
    msgs: list[MicroTurnInput] = []
    for i in range(50):
        if i == 22:
            continue  # lost: 16 kHz samples [7040, 7360), inside turn 2
        seg = np.repeat(x[i * 960 : (i + 1) * 960, None], 2, axis=1).reshape(1, -1)
        f = av.AudioFrame.from_ndarray(seg, format="s16", layout="stereo")
        f.sample_rate, f.pts, f.time_base = rate, 3_000_000_000 + i * 960, fractions.Fraction(1, rate)
        for c in r.resample(f):
            asm.push_audio(c.samples, c.pts)
        msgs += asm.pop_ready()
    for c in r.flush():
        asm.push_audio(c.samples, c.pts)
    msgs += asm.finish()
    assert [m.turn for m in msgs] == [0, 1, 2, 3, 4]
    assert [m.gap for m in msgs] == [False, False, True, False, False]
    y = timeline(msgs, 5)
    silent = np.flatnonzero(y == 0)
    # exactly the lost packet's 20 ms (the resampler flushed its pre-loss tail in place)
    np.testing.assert_array_equal(silent[(silent > 6000) & (silent < 8000)], np.arange(7040, 7360))
    assert not msgs[2].audio_array()[7040 - 2 * T : 7360 - 2 * T].any()


@pytest.mark.parametrize("codec", ["opus", "pcmu"])
def test_real_codec_round_trip_with_a_lost_packet(codec: str) -> None:
    """Our output frames -> aiortc encoder -> (one RTP packet lost) -> aiortc decoder -> Resampler ->
    MicroTurnAssembler: the pitch survives, and only the turn holding the loss is flagged."""
    from aiortc.codecs.g711 import PcmuDecoder, PcmuEncoder
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.jitterbuffer import JitterFrame

    from media.resampler import float_to_s16_frame

    enc, dec = (OpusEncoder(), OpusDecoder()) if codec == "opus" else (PcmuEncoder(), PcmuDecoder())
    x = (0.5 * np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)).astype(np.float32)  # 1 s
    offset = 2**32 - 10_000  # random-looking RTP start that wraps mid-call
    r, asm = Resampler(), MicroTurnAssembler()
    msgs: list[MicroTurnInput] = []
    packet = 0
    for i in range(50):
        payloads, ts = enc.encode(float_to_s16_frame(x[i * F : (i + 1) * F], i * F))
        for p in payloads:
            packet += 1
            if packet == 27:  # lost in the network: lands in turn 2 (packets are 20 ms)
                continue
            for frame in dec.decode(JitterFrame(p, (ts + offset) % 2**32)):
                assert isinstance(frame, av.AudioFrame)
                for c in r.resample(frame):
                    asm.push_audio(c.samples, c.pts)
        msgs += asm.pop_ready()
    assert [m.turn for m in msgs] == [0, 1, 2, 3]
    assert [m.gap for m in msgs] == [False, False, True, False]
    y = np.concatenate([m.audio_array() for m in msgs])
    spec = np.abs(np.fft.rfft(y[: 2 * T] * np.hanning(2 * T)))
    assert abs(np.argmax(spec) * 16_000 / (2 * T) - 440) <= 16_000 / (2 * T)
    rms = float(np.sqrt(np.mean(y[800 : 2 * T] ** 2)))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_forward_timestamp_jump_resyncs_at_once_but_a_real_outage_stays_a_gap() -> None:
    """A gateway that restarts its timestamp base an hour ahead must not make the turn numbers
    leap by 18,000 (downstream, every turn in between would look missing): with arrival times
    the jump is told apart from an outage, whose pts advance matches the wall clock."""
    asm = MicroTurnAssembler(resync_samples=32_000)
    items = frames(50)  # 1 s, arriving in real time
    msgs = [m for i, (pts, x) in enumerate(items) for m in _push(asm, x, pts, now=i * 0.02)]
    jump = 3600 * 16_000
    later = [(pts + jump + 50 * F, x) for pts, x in frames(50)]  # the next second, an hour ahead on pts
    msgs += [m for i, (pts, x) in enumerate(later) for m in _push(asm, x, pts, now=1.0 + i * 0.02)]
    msgs += asm.finish()
    assert asm.resyncs == asm.forward_resyncs == 1
    assert [m.turn for m in msgs] == list(range(10))  # continuous: nothing skipped, nothing zero-filled
    assert asm.gaps == 0 and asm.dropped_late == 0
    np.testing.assert_array_equal(timeline(msgs, 10), np.concatenate([signal(50 * F), signal(50 * F)]))

    # a 3 s outage: pts and wall clock advance together, so it is zero-filled, not resynced
    out = MicroTurnAssembler(resync_samples=32_000)
    got = [m for i, (pts, x) in enumerate(items[:25]) for m in _push(out, x, pts, now=i * 0.02)]
    resume = [(pts + 3 * 16_000, x) for pts, x in items[25:]]
    got += [m for i, (pts, x) in enumerate(resume) for m in _push(out, x, pts, now=3.5 + i * 0.02)]
    got += out.finish()
    assert out.resyncs == 0
    assert got[-1].turn == (50 * F + 3 * 16_000 - 1) // T  # the stream continued 3 s later on the media clock
    assert out.gaps + out.dropped_stale >= 15  # the outage's turns: zero-filled, or counted as never consumed


def _push(asm: MicroTurnAssembler, x: np.ndarray, pts: int, now: float) -> list[MicroTurnInput]:
    asm.push_audio(x, pts, now)
    return asm.pop_ready()


class FakeClock:
    """The wall clock the call's frames arrive on."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run_aligned(
    start: float, n_frames: int, delay_ms: list[float] | None = None
) -> tuple[MicroTurnAssembler, list[MicroTurnInput], list[float]]:
    """Frames sent every 20 ms from `start` (wall clock), frame i arriving `delay_ms[i]` late
    (0 past the list); returns the assembler, its turns and the time each was handed out."""
    clock = FakeClock(start)
    asm = MicroTurnAssembler("s1", align_clock=clock)
    msgs: list[MicroTurnInput] = []
    ready_at: list[float] = []
    for i, (pts, x) in enumerate(frames(n_frames)):
        late = (delay_ms[i] if delay_ms and i < len(delay_ms) else 0.0) / 1000
        clock.t = start + i * F / 16_000 + late
        asm.push_audio(x, pts, now=clock.t)
        new = asm.pop_ready()
        msgs += new
        ready_at += [clock.t] * len(new)
    return asm, msgs, ready_at


def since_tick(t: float) -> float:
    """Seconds since the last multiple of 200 ms (float64 at 1.7e9 s resolves ~1e-7 s)."""
    return t - 0.2 * math.floor(t / 0.2 + 1e-4)


@pytest.mark.parametrize("start", [1_764_570_000.0, 1_764_570_000.0137, 1_764_570_000.1999, 17.25])
def test_aligned_turns_end_on_the_clock_grid_with_nothing_lost(start: float) -> None:
    asm, msgs, ready_at = run_aligned(start, 60)  # 1.2 s, the first frame at an arbitrary phase
    d = asm.aligned_samples
    assert 0 <= d < T
    # turn 0 comes out once its phase is measured (one turn of audio); every later turn on the
    # grid, with the frame that holds its last sample
    assert ready_at[0] == pytest.approx(start + (T - F) / 16_000)
    for t in ready_at[1:]:
        assert -1e-5 < since_tick(t) < F / 16_000, (t, since_tick(t))
    assert [m.turn for m in msgs] == list(range(len(msgs))) and len(msgs) >= 5
    # the caller's audio is all there, in order, after d samples of silence; no turn is a gap
    got = np.concatenate([m.audio_array() for m in msgs])
    np.testing.assert_array_equal(got[:d], 0.0)
    np.testing.assert_array_equal(got[d:], signal(60 * F)[: got.size - d])
    assert not any(m.gap for m in msgs) and asm.gaps == 0 and asm.samples_in == 60 * F


def test_a_late_first_frame_does_not_move_the_grid() -> None:
    """Call setup keeps the loop busy: the first frames arrive in a burst, 45 ms late. The phase
    comes from the least delayed frame of the first turn, so later turns still end on the grid
    (by the first frame alone they would end 45 ms early, every turn of the call)."""
    start = 1_764_570_000.061
    asm, msgs, ready_at = run_aligned(start, 60, delay_ms=[45, 25, 5, 0.3, 0, 2])
    for t in ready_at[1:]:
        assert -1e-5 < since_tick(t) < F / 16_000, (t, since_tick(t))
    got = np.concatenate([m.audio_array() for m in msgs])
    np.testing.assert_array_equal(got[asm.aligned_samples :], signal(60 * F)[: got.size - asm.aligned_samples])


@pytest.mark.parametrize("ppm", [-150.0, 150.0])
def test_turns_stay_on_the_grid_while_the_callers_clock_drifts(ppm: float) -> None:
    """A caller's sample clock 150 ppm slow or fast drifts 90 ms in 10 minutes, and the turns with
    it; realigning every few seconds keeps every turn within a frame of the grid plus
    `realign_ms`, and every sample of the caller's audio is accounted for."""
    start, n_frames = 1_764_570_000.0371, 30_000  # 10 minutes of 20 ms frames
    clock = FakeClock(start)
    asm = MicroTurnAssembler("s1", align_clock=clock)
    x = signal(F)
    late_ms: list[float] = []
    audio = 0
    for i in range(n_frames):
        clock.t = start + i * F / 16_000 * (1 - ppm * 1e-6)  # the caller's 20 ms on our clock
        asm.push_audio(x, PTS0 + i * F, now=clock.t)
        for m in asm.pop_ready():
            audio += int(np.count_nonzero(m.audio_array()))
            if m.turn > 0:
                late_ms.append(1000 * ((since_tick(clock.t) + 0.1) % 0.2 - 0.1))  # after the nearest tick
    assert len(late_ms) > 2900
    lo, hi = min(late_ms), max(late_ms)
    assert -asm.realign_ms - 1 < lo and hi < asm.realign_ms + 1000 * F / 16_000 + 1, (lo, hi)
    assert 5 <= asm.realigns <= 12  # 90 ms of drift in steps of at least 10 ms
    if ppm < 0:  # slow: turns would end later and later; silence moves them back
        assert asm.realign_silence > 0 and asm.realign_dropped == 0
    else:  # fast: earlier and earlier; a little of the caller's audio is skipped
        assert asm.realign_dropped > 0 and asm.realign_silence == 0
    # every caller sample is in a turn or was skipped, or is still waiting in the open turn
    assert audio + asm.realign_dropped <= asm.samples_in < audio + asm.realign_dropped + T


def test_calls_started_at_different_phases_end_their_turns_together() -> None:
    ticks = []
    for start in (500.003, 500.071, 500.158):  # three calls joining at different moments
        _, _, ready_at = run_aligned(start, 80)
        ticks.append({round(t / 0.2 - 0.05) for t in ready_at[1:]})  # the grid tick each turn ended on
        assert all(0 <= since_tick(t) < F / 16_000 for t in ready_at[1:])
    common = ticks[0] & ticks[1] & ticks[2]
    assert len(common) >= 4 and all(len(t - common) <= 1 for t in ticks)  # only the last may differ


def test_finish_places_a_call_shorter_than_its_phase_measurement() -> None:
    clock = FakeClock(42.0)
    asm = MicroTurnAssembler("s1", align_clock=clock)
    for i, (pts, x) in enumerate(frames(4)):  # 80 ms: hangs up before a turn was measured
        clock.t = 42.0 + i * 0.02
        asm.push_audio(x, pts, now=clock.t)
    assert asm.pop_ready() == []
    msgs = asm.finish()
    got = np.concatenate([m.audio_array() for m in msgs])
    d = asm.aligned_samples
    np.testing.assert_array_equal(got[d : d + 4 * F], signal(4 * F))
    assert np.count_nonzero(got) == 4 * F


def test_without_a_clock_turns_start_at_the_first_frame() -> None:
    asm = MicroTurnAssembler("s1")
    msgs = push_all(asm, frames(20))
    assert asm.aligned_samples == 0
    np.testing.assert_array_equal(timeline(msgs, 2), signal(2 * T))
