"""The drawn train phrasings: many, distinct, deterministic, of the right shape, never held out."""

from __future__ import annotations

import dataclasses

from model.data import grammar
from model.data import scenarios as sc


def test_draw_is_deterministic_and_distinct() -> None:
    a, b = grammar.draw(), grammar.draw()
    assert a == b
    assert len(set(a.pauses)) == len(a.pauses) == 240
    assert len(set(a.qa)) == len(a.qa) == 160
    assert len(set(a.monologues)) == len(a.monologues) == 200
    assert grammar.draw(seed=1) != a


def test_drawn_phrasings_have_the_shape_timing_depends_on() -> None:
    d = grammar.draw()
    for part1, part2, answer in d.pauses:
        # the user stops mid-request (a comma, never a sentence end) and the completion ends it
        assert part1.endswith(","), part1
        assert part2[-1] in "?.", part2
        assert answer.endswith("."), answer
        assert " my " not in f" {answer} " and "I'm" not in answer, answer  # the assistant says "your"
    for q, a, kind in d.qa:
        assert q.endswith("?") and a.endswith(".") and kind == ""
    for story in d.monologues:
        assert 4 <= len(story) <= 5
        assert all(s.endswith(".") for s in story), story  # statements: the user keeps the floor
    for q, _ in d.monologue_ends:
        assert q.endswith("?")
    everything = [s for item in (*d.pauses, *d.qa, *d.monologues, *d.monologue_ends) for s in item]
    assert not any("{" in s or "}" in s for s in everything)  # no slots: ``fill`` passes them through


def test_train_phrasebook_takes_the_drawn_phrasings_but_no_held_out_one() -> None:
    d = grammar.draw()
    train = sc.TRAIN_PHRASES
    assert len(train.pauses) > 200 and len(train.monologues) > 200 and len(train.qa) > 150
    held = {sc.normalize_phrase(s) for s in sc.HELDOUT_PHRASES.strings()}
    kept = set(train.pauses)
    for item in d.pauses:
        clash = any(sc.normalize_phrase(s) in held for s in item)
        assert (item in kept) != clash


def test_with_drawn_drops_items_that_share_a_sentence_with_the_held_out_book() -> None:
    d = grammar.draw()
    story = d.monologues[0]
    avoid = dataclasses.replace(
        sc.HELDOUT_PHRASES, monologues=((story[1].upper(),),), qa=(), pauses=(), monologue_ends=()
    )
    book = sc._with_drawn(sc.HELDOUT_PHRASES, d, avoid)
    assert story not in book.monologues  # shares a sentence (case and punctuation aside)
    assert all(m in book.monologues for m in d.monologues if story[1] not in m)  # nothing else dropped
