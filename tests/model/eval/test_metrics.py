"""Each fdbench.md formula on hand-built data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from model.eval import metrics as M
from model.eval.words import Word


def words(*spans: tuple[float, float]) -> list[Word]:
    return [Word(f"w{i}", s, e) for i, (s, e) in enumerate(spans)]


def spread(n: int, start: float, span: float) -> list[Word]:
    step = span / n
    return [Word(f"w{i}", start + i * step, start + (i + 1) * step) for i in range(n)]


# -- TOR ------------------------------------------------------------------------------------
def test_tor_no_words_is_zero() -> None:
    assert M.take_over([]) == 0


def test_tor_exactly_one_second_span_is_take_over() -> None:
    assert M.take_over(words((2.0, 2.4), (2.5, 3.0))) == 1  # 3.0 - 2.0 = 1.0 s
    assert M.take_over(words((2.0, 2.4), (2.5, 2.99))) == 0  # 0.99 s, 2 words


def test_tor_short_span_counts_words() -> None:
    assert M.take_over(spread(4, 1.0, 0.5)) == 1  # 4 words in 0.5 s: more than 3
    assert M.take_over(spread(3, 1.0, 0.5)) == 0  # 3 words in 0.5 s


def test_tor_uses_first_and_last_chunk_like_fdbench() -> None:
    assert M.take_over(words((0.0, 0.1))) == 0
    assert M.take_over(words((0.0, 0.1), (5.0, 5.1))) == 1


def test_pause_handling_is_tor_of_whole_output() -> None:
    assert M.pause_handling([]).tor == 0
    assert M.pause_handling(spread(2, 3.0, 1.5)).tor == 1
    s = M.summarize_turns("p", "pause_handling", [M.pause_handling([]), M.pause_handling(spread(5, 0, 0.4))])
    assert s.metrics == {"tor": 0.5}


# -- smooth turn-taking -----------------------------------------------------------------------
def test_turn_taking_latency() -> None:
    s = M.smooth_turn_taking(spread(5, 2.3, 1.2), user_end=1.8)
    assert s.tor == 1 and s.latency == pytest.approx(0.5)


def test_turn_taking_latency_clamped_at_zero() -> None:
    s = M.smooth_turn_taking(spread(5, 1.5, 1.2), user_end=1.8)  # starts talking before the user ends
    assert s.tor == 1 and s.latency == 0.0


def test_turn_taking_latency_averaged_over_take_over_clips_only() -> None:
    scores = [
        M.smooth_turn_taking(spread(5, 2.0, 1.2), user_end=1.8),  # 0.2
        M.smooth_turn_taking(spread(5, 2.4, 1.2), user_end=1.8),  # 0.6
        M.smooth_turn_taking(spread(1, 1.9, 0.2), user_end=1.8),  # TOR 0: no latency
        M.smooth_turn_taking([], user_end=1.8),
    ]
    assert [s.latency is None for s in scores] == [False, False, True, True]
    summ = M.summarize_turns("t", "smooth_turn_taking", scores)
    assert summ.metrics["tor"] == 0.5
    assert summ.metrics["latency_s"] == pytest.approx(0.4)
    assert summ.latencies == pytest.approx([0.2, 0.6])


# -- user interruption ------------------------------------------------------------------------
def test_interruption_scores_only_output_after_the_interruption_start() -> None:
    before = spread(6, 0.5, 1.5)  # a long reply that ends before the interruption (starts 3.0)
    s = M.user_interruption(before, interrupt_start=3.0, interrupt_end=4.0)
    assert s.tor == 0 and s.latency is None and s.reply == ""

    after = spread(5, 4.3, 1.0)
    s = M.user_interruption(before + after, interrupt_start=3.0, interrupt_end=4.0)
    assert s.tor == 1 and s.latency == pytest.approx(0.3)  # from the interruption end
    assert s.reply == " ".join(w.text for w in after)


def test_interruption_latency_clamped_and_upstream_variant() -> None:
    during = [Word("still", 3.2, 3.5)]  # still talking after the user started (3.0)
    reply = spread(5, 4.6, 1.0)
    s = M.user_interruption(during + reply, interrupt_start=3.0, interrupt_end=4.0)
    assert s.latency == 0.0  # fdbench.md: first word after the start, clamped
    assert s.upstream_latency == pytest.approx(0.6)  # words after the end only


def test_stop_latency_from_output_segments() -> None:
    assert M.stop_latency([(1.0, 3.4)], 3.0) == pytest.approx(0.4)
    assert M.stop_latency([(1.0, 2.0), (3.5, 4.0)], 3.0) is None  # silent when the user started
    s = M.user_interruption([], 3.0, 4.0, segments=[(2.0, 3.25)])
    assert s.stop_latency == pytest.approx(0.25)


# -- backchannel ------------------------------------------------------------------------------
def test_backchannel_segment_classification() -> None:
    assert not M.is_take_over_segment(0.5, 2)  # short, 2 words: backchannel
    assert M.is_take_over_segment(0.5, 3)  # short, 3 words: take-over
    assert M.is_take_over_segment(1.0, 0)  # 1 s: take-over
    assert M.is_take_over_segment(3.5, 1)
    assert not M.is_take_over_segment(0.99, 0)


def test_words_in_segment_uses_overlap_rule() -> None:
    ws = [Word("a", 0.9, 1.1), Word("b", 1.2, 1.3), Word("c", 1.45, 1.7), Word("d", 2.0, 2.1)]
    assert M.words_in_segment(ws, (1.0, 1.5)) == 3  # crossing start, inside, crossing end


def test_backchannel_clip() -> None:
    segs = [(1.0, 1.4), (3.0, 3.3), (5.0, 5.6)]
    ws = [
        Word("mm", 1.0, 1.3),
        Word("yeah", 3.0, 3.2),
        Word("oh", 5.0, 5.2),
        Word("I", 5.2, 5.3),
        Word("see", 5.3, 5.5),
    ]
    s = M.backchannel(segs, ws, duration=8.0)
    assert s.backchannels == [(1.0, 1.4), (3.0, 3.3)] and s.take_overs == [(5.0, 5.6)]
    assert s.tor == 1 and s.per_second == pytest.approx(2 / 8) and s.jsd is None  # no ground truth

    s = M.backchannel(segs[:2], ws[:2], duration=8.0)
    assert s.tor == 0 and s.n_backchannels == 2


def test_jsd_is_one_without_backchannels() -> None:
    gt = M.gt_distribution_from_times([1.0, 3.0], 8.0)
    assert M.backchannel([], [], 8.0, gt).jsd == 1.0
    assert M.backchannel([(2.0, 4.0)], [], 8.0, gt).jsd == 1.0  # only a take-over


def test_jsd_zero_when_backchannels_match_ground_truth() -> None:
    gt = M.gt_distribution_from_times([(1.0, 1.3), (3.0, 3.3)], 8.0)
    s = M.backchannel([(1.0, 1.3), (3.0, 3.3)], [], 8.0, gt)
    assert s.jsd == pytest.approx(0.0, abs=1e-6)
    far = M.backchannel([(6.0, 6.3)], [], 8.0, gt)
    assert far.jsd is not None and far.jsd > 0.8  # disjoint bins: close to sqrt(ln 2)


def test_histogram_bins_and_interpolated_gt() -> None:
    h = M.histogram([(0.25, 0.45)], duration=1.0)  # bins 1 and 2 of 6
    assert len(h) == 6 and h.sum() == pytest.approx(1.0)
    assert h[1] == pytest.approx(0.5) and h[2] == pytest.approx(0.5)
    gt_short = np.array([0.0, 1.0, 0.0])  # an upstream-style distribution of another length
    assert 0.0 < M.js_distance(h, gt_short) < 1.0


# -- TimeSpeak --------------------------------------------------------------------------------
def test_timespeak_all_matched() -> None:
    s = M.timespeak([1.1, 2.9, 5.4], [1.0, 3.0, 5.0])
    assert (s.matched, s.spurious, s.score) == (3, 0, 1.0)


def test_timespeak_unmatched_onsets_are_subtracted() -> None:
    s = M.timespeak([1.1, 2.0, 2.9, 5.6], [1.0, 3.0, 5.0])  # 5.6 misses 5.0; 2.0 and 5.6 match nothing
    assert (s.matched, s.spurious) == (2, 2)
    assert s.score == pytest.approx(0.0)
    s = M.timespeak([1.0, 3.0, 4.0], [1.0, 3.0, 5.0])
    assert s.score == pytest.approx((2 - 1) / 3)


def test_timespeak_floor_and_edges() -> None:
    assert M.timespeak([0.2, 0.4, 0.6, 0.8], [3.0]).score == 0.0  # floored, not negative
    assert M.timespeak([], [1.0, 2.0]).score == 0.0
    assert M.timespeak([1.0], []).score is None
    assert M.timespeak([0.0, 1.0], [1.0], not_before=0.5).score == 1.0  # acknowledgement ignored
    assert M.timespeak([1.5], [1.0]).matched == 1  # exactly 0.5 s off still matches
    one_onset_two_expected = M.timespeak([2.0], [1.6, 2.4])  # one-to-one matching
    assert one_onset_two_expected.matched == 1 and one_onset_two_expected.score == 0.5
    summ = M.summarize_timespeak("ts", [M.timespeak([1.0], [1.0]), M.timespeak([], [1.0]), M.timespeak([], [])])
    assert summ.metrics["score"] == 0.5
