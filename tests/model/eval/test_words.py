from __future__ import annotations

import pytest

from model.eval.words import (
    OutputJsonError,
    TimedToken,
    Word,
    group_words,
    snap_to_speech,
    words_from_json,
    words_to_json,
)
from model.tokenizer import PAD_ID, Tokenizer


def timed(ids: list[int], t0: float, step: float = 0.05) -> list[TimedToken]:
    return [TimedToken(i, t0 + n * step) for n, i in enumerate(ids)]


def test_group_words_by_leading_space(tokenizer: Tokenizer) -> None:
    ids = [PAD_ID, *tokenizer.encode(" hello"), PAD_ID, *tokenizer.encode(" world"), *tokenizer.encode(" café")]
    ws = group_words(timed(ids, 0.2), tokenizer)
    assert [w.text for w in ws] == ["hello", "world", "café"]
    assert ws[0].start == pytest.approx(0.25)  # the pad at 0.2 is skipped
    assert all(w.end > w.start for w in ws)


def test_pad_inside_a_word_does_not_split_it(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(" tomorrow")
    if len(ids) < 2:
        ids = tokenizer.encode(" antidisestablishment")
    assert len(ids) >= 2
    ws = group_words(timed([ids[0], PAD_ID, *ids[1:]], 1.0), tokenizer)
    assert len(ws) == 1 and ws[0].start == 1.0 and ws[0].end == pytest.approx(1.0 + 0.05 * (len(ids) + 1))


def test_snap_to_speech_segments() -> None:
    ws = [Word("one", 0.40, 0.45), Word("two", 0.50, 0.60), Word("three", 0.80, 0.90), Word("mute", 3.0, 3.05)]
    snapped = snap_to_speech(ws, [(0.55, 1.2)])
    a, b, c, d = snapped.words
    # the text led the sound by 0.15 s: the segment's words shift together, keeping their spacing
    assert (a.start, a.end) == pytest.approx((0.55, 0.60))
    assert (b.start, b.end) == pytest.approx((0.65, 0.75))
    assert c.start == pytest.approx(0.95) and c.end == 1.2  # last word in the segment ends with it
    assert d == ws[3]  # no speech: token times, counted unvoiced
    assert snapped.voiced == [True, True, True, False] and snapped.n_voiced == 3


def test_sound_before_the_text_is_not_attributed_to_a_word() -> None:
    snapped = snap_to_speech([Word("late", 1.0, 1.1), Word("x", 1.2, 1.3)], [(0.2, 2.0)])
    assert snapped.words == [Word("late", 1.0, 1.1), Word("x", 1.2, 2.0)]


def test_output_json_roundtrip_and_errors() -> None:
    ws = [Word("hi", 1.0, 1.2), Word("there", 1.2, 1.5)]
    obj = words_to_json(ws)
    assert obj == {
        "text": "hi there",
        "chunks": [{"text": "hi", "timestamp": [1.0, 1.2]}, {"text": "there", "timestamp": [1.2, 1.5]}],
    }
    assert words_from_json(obj) == ws
    assert words_from_json({"text": "", "chunks": [{"text": "x", "timestamp": [None, 1]}]}) == []
    with pytest.raises(OutputJsonError, match=r"output\.json"):
        words_from_json({"text": "no chunks"})
