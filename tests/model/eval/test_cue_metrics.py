"""The speaking-on-a-cue scores on hand-made cases with known answers (model/eval/cue_metrics.py)."""

from __future__ import annotations

import pytest

from model.eval import cue_metrics as C
from model.eval.baselines import DEFAULT_REPLY
from model.eval.words import Word


def w(text: str, start: float, dur: float = 0.3) -> Word:
    return Word(text, start, start + dur)


# -- numbers --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [("three", 3), ("Three,", 3), ("3", 3), ("12", 12), ("nineteen", 19), ("twenty-one", 21), ("fifty", 50),
     ("reps", None), ("", None), ("twenty-twelve", None)],
)  # fmt: skip
def test_parse_number(text: str, value: int | None) -> None:
    assert C.parse_number(text) == value


def test_tens_then_unit_close_together_is_one_number() -> None:
    nums = C.spoken_numbers([w("twenty", 1.0, 0.3), w("one", 1.4, 0.2), w("twenty", 3.0, 0.3), w("two", 4.0)])
    assert [(n.value, n.start) for n in nums] == [(21, 1.0), (20, 3.0), (2, 4.0)]


# -- rep counting ---------------------------------------------------------------------------
REPS = [C.Rep(2.0, 1), C.Rep(3.0, 2), C.Rep(4.0, 3), C.Rep(5.0, 4)]


def test_reps_counted_right_within_the_window() -> None:
    words = [
        w("okay", 1.2),  # acknowledgement: no number, costs nothing
        w("one", 2.1),  # rep 1, 0.1 s after completion
        w("two", 3.6),  # rep 2 at exactly 0.6 s: counted
        w("four", 4.2),  # rep 3 said with the wrong number: a miss and a false count
        w("4", 5.7),  # rep 4 at 0.7 s: late -> a miss and a false count
    ]
    s = C.rep_counting(words, REPS, request=1.0, end=7.0)
    assert (s.n_reps, s.counted, s.false_counts) == (4, 2, 2)
    assert s.accuracy == 0.5
    assert s.minutes == pytest.approx(0.1)
    assert s.latencies == pytest.approx([0.1, 0.6])


def test_a_count_before_completion_and_a_repeated_count_are_false() -> None:
    words = [w("one", 1.8), w("one", 2.2), w("one", 2.5)]  # early (partial rep), right, repeated
    s = C.rep_counting(words, REPS[:1], request=1.0, end=4.0)
    assert (s.counted, s.false_counts) == (1, 2)


def test_numbers_before_the_request_are_not_scored() -> None:
    s = C.rep_counting([w("five", 0.2), w("one", 2.2)], REPS[:1], request=1.0, end=4.0)
    assert (s.counted, s.false_counts) == (1, 0)


def test_rep_summary_pools_reps_and_minutes() -> None:
    a = C.RepScore(n_reps=4, counted=4, false_counts=0, minutes=0.5)
    b = C.RepScore(n_reps=1, counted=0, false_counts=3, minutes=0.5)
    m = C.summarize_reps("rep_counting", [a, b]).metrics
    assert m["rep_accuracy"] == pytest.approx(0.8)  # 4 of 5 reps, not the mean of 1.0 and 0.0
    assert m["false_counts_per_min"] == pytest.approx(3.0)


# -- visual alerts --------------------------------------------------------------------------
def test_alert_hits_latency_and_false_alerts() -> None:
    onsets = [
        1.3,  # "okay" inside the 1.5 s acknowledgement window: free
        3.4,  # event at 3.0: hit, latency 0.4
        5.0,  # nothing happening: false
        8.9,  # before the event at 9.0: false
        10.0,  # event at 9.0, exactly 1.0 s later: hit
        15.2,  # event at 14.0: 1.2 s late, miss and false
    ]
    s = C.visual_alerts(onsets, [3.0, 9.0, 14.0], request=1.0, end=62.5)
    assert (s.n_events, s.hits, s.false_alerts) == (3, 2, 3)
    assert s.latencies == pytest.approx([0.4, 1.0])
    assert s.minutes == pytest.approx(1.0)
    m = C.summarize_alerts("visual_alert", [s]).metrics
    assert m["alert_hit_rate"] == pytest.approx(2 / 3)
    assert m["alert_latency_p50_s"] == pytest.approx(0.7)
    assert m["false_alerts_per_min"] == pytest.approx(3.0)


def test_silence_scores_zero_hits_and_no_false_alerts() -> None:
    s = C.visual_alerts([], [3.0], request=1.0, end=5.0)
    assert (s.hits, s.false_alerts, s.hit_rate) == (0, 0, 0.0)
    assert C.summarize_alerts("a", [s]).metrics["alert_latency_p50_s"] is None


def test_an_onset_hits_one_event_only_and_a_second_one_in_the_window_is_not_false() -> None:
    s = C.visual_alerts([3.2, 3.6], [3.0, 3.1], request=0.0, end=10.0)
    assert (s.hits, s.false_alerts) == (2, 0)
    s = C.visual_alerts([3.2, 3.6], [3.0], request=0.0, end=10.0)
    assert (s.hits, s.false_alerts) == (1, 0)


# -- CueSpeak -------------------------------------------------------------------------------
CUES = [C.Cue(3.0, "eight"), C.Cue(6.0, "blue"), C.Cue(9.0, "four")]


def test_cue_hits_within_a_second_of_the_cue_word_end() -> None:
    words = [
        w("okay", 1.5),  # rule at 1.0: acknowledgement, free
        w("eight", 3.3),  # hit
        w("Blue.", 6.9),  # hit (punctuation and case ignored)
        w("4", 10.1),  # 1.1 s: late -> miss, and one false utterance
    ]
    s = C.cue_speak(words, CUES, rule=1.0, end=13.0)
    assert (s.n_cues, s.hits, s.false_utterances, s.false_words) == (3, 2, 1, 1)
    assert s.latencies == pytest.approx([0.3, 0.9])
    assert s.minutes == pytest.approx(10.5 / 60)


def test_false_speech_counts_utterances_not_words() -> None:
    words = [
        w("eight", 3.2, 0.3),
        w("and", 3.6, 0.2),  # right after the hit: a new (false) run
        w("then", 3.9, 0.2),  # same run (gap 0.1 s)
        w("um", 5.0, 0.2),  # gap 0.9 s: another run
        w("so", 7.5, 0.2),  # another
    ]
    s = C.cue_speak(words, CUES[:1], rule=1.0, end=10.0)
    assert (s.hits, s.false_words, s.false_utterances) == (1, 4, 3)


def test_multi_word_response_and_number_forms() -> None:
    s = C.cue_speak([w("light", 3.1, 0.2), w("blue", 3.35, 0.2)], [C.Cue(3.0, "light blue")], rule=0.0, end=5.0)
    assert (s.hits, s.false_words) == (1, 0)
    s = C.cue_speak([w("8", 3.1)], [C.Cue(3.0, "eight")], rule=0.0, end=5.0)
    assert s.hits == 1


def test_harness_style_reply_after_silence_scores_zero() -> None:
    """A fixed reply once the user stops talking (at 10 s) hits no cue and is one false utterance."""
    reply = [w(x, 10.6 + 0.25 * i, 0.2) for i, x in enumerate(DEFAULT_REPLY.split(" "))]
    s = C.cue_speak(reply, CUES, rule=1.0, end=13.0)
    assert (s.hits, s.false_utterances) == (0, 1)
    m = C.summarize_cues("cue_speak", [s]).metrics
    assert m["cue_hit_rate"] == 0.0 and m["false_speech_per_min"] == pytest.approx(60 / 10.5)


# -- visual question ------------------------------------------------------------------------
def test_visual_question_takes_the_first_colour_of_the_reply() -> None:
    reply = [w("it's", 1.8), w("blue", 2.1), w("right", 2.4), w("now", 2.7)]  # 4 words: a take-over
    right = C.visual_question(reply, user_end=1.5, answer="blue")
    assert (right.turn.tor, right.correct, right.said) == (1, 1, "blue")
    assert right.turn.latency == pytest.approx(0.3)
    wrong = C.visual_question([w("red", 1.8), w("or", 2.1), w("blue", 2.4)], user_end=1.5, answer="blue")
    assert (wrong.correct, wrong.said) == (0, "red")
    silent = C.visual_question([], user_end=1.5, answer="blue")
    assert (silent.turn.tor, silent.correct, silent.said) == (0, 0, None)
    m = C.summarize_questions("visual_question", [right, wrong, silent]).metrics
    assert m["answer_accuracy"] == pytest.approx(1 / 3)
    assert m["tor"] == pytest.approx(1 / 3)  # "red or blue" is 3 words in 0.9 s: no take-over (FD-bench)
