"""English number words (model/data/numbers.py): spelling, parsing, numerals in running text."""

from __future__ import annotations

import random
import shutil
import subprocess

import numpy as np
import pytest

from model.data import numbers as N


@pytest.mark.parametrize(
    ("n", "words"),
    [(0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (56, "fifty six"), (100, "one hundred"),
     (105, "one hundred five"), (110, "one hundred ten"), (999, "nine hundred ninety nine"), (1000, "one thousand"),
     (1010, "one thousand ten"), (2418, "two thousand four hundred eighteen"),
     (384_000, "three hundred eighty four thousand"), (1_000_005, "one million five"),
     (1_234_567, "one million two hundred thirty four thousand five hundred sixty seven"),
     (999_999_999, "nine hundred ninety nine million nine hundred ninety nine thousand nine hundred ninety nine")],
)  # fmt: skip
def test_known_spellings(n: int, words: str) -> None:
    assert N.spell(n) == words
    assert N.parse_number(words) == n


def test_spell_parse_round_trip() -> None:
    rng = random.Random(0)
    sample = list(range(0, 1200)) + rng.sample(range(1200, 100_001), 3000) + [rng.randrange(10**9) for _ in range(300)]
    for n in sample:
        words = N.spell(n)
        assert N.parse_number(words) == n, words
        assert N.parse_number(words.replace(" ", "-")) == n  # "twenty-one" style
        assert N.parse_number(f"{n:,}") == n


def test_spell_refuses_what_it_cannot_say() -> None:
    with pytest.raises(ValueError, match="outside"):
        N.spell(-1)
    with pytest.raises(ValueError, match="outside"):
        N.spell(10**9)
    with pytest.raises(TypeError):
        N.spell(2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        N.spell(True)
    assert N.spell(np.int64(42)) == "forty two"  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        N.spell_digits("12a")


def test_ordinals_and_digits() -> None:
    got = [N.spell_ordinal(n) for n in (1, 2, 3, 5, 8, 9, 12, 20, 21, 42, 100, 1000)]
    assert got == ["first", "second", "third", "fifth", "eighth", "ninth", "twelfth", "twentieth", "twenty first",
                   "forty second", "one hundredth", "one thousandth"]  # fmt: skip
    assert N.spell_digits("007") == "zero zero seven"


@pytest.mark.parametrize(
    ("text", "value"),
    [("Three,", 3), ("12.", 12), ("1,000", 1000), ("oh", 0), ("hundred", 100), ("twenty-one", 21),
     ("one hundred and five", 105), ("two thousand and five", 2005), ("Fifty six thousand.", 56_000),
     ("twenty twelve", None), ("thousand two thousand", None), ("one million thousand", None), ("zero zero", None),
     ("one hundred and", None), ("and", None), ("2.5", None), ("-3", None), ("minus three", None), ("3rd", None),
     ("reps", None), ("", None)],
)  # fmt: skip
def test_parse_number_is_strict(text: str, value: int | None) -> None:
    assert N.parse_number(text) == value


@pytest.mark.parametrize(
    ("text", "said"),
    [("It's 56.", "It's fifty six."), ("1,000", "one thousand"), ("384000", "three hundred eighty four thousand"),
     ("at 3:45", "at three forty five"), ("3:05", "three oh five"), ("10:00 pm", "ten pm"),
     ("2.5 km", "two point five km"), ("0.75", "zero point seven five"), (".5", "point five"),
     ("1,000.5", "one thousand point five"), ("the 21st", "the twenty first"), ("45%", "forty five percent"),
     ("it is -3 now", "it is minus three now"), ("pages 3-4", "pages three-four"), ("mp3", "mp three"),
     ("007", "zero zero seven"), ("1,23", "one,twenty three"), ("128.", "one hundred twenty eight."),
     ("1,234,567,890", "one two three four five six seven eight nine zero"), ("no digits here", "no digits here")],
)  # fmt: skip
def test_say_numerals(text: str, said: str) -> None:
    assert N.say_numerals(text) == said


def test_say_numerals_never_raises_on_huge_numbers() -> None:
    said = N.say_numerals("9" * 5000 + "th and " + "1" * 5000)  # beyond int()'s 4300-digit limit
    assert said.split().count("nine") == 5000 and said.split().count("one") == 5000
    assert not any(c.isdigit() for c in said)


# What flite (the assistant's voice) says for the numerals our dialogues write, by its own word list.
FLITE_CASES = (
    "It is 56. Take 1,000 steps at 3:45 or 10:00, 2.5 miles, 0.75 of 384000; 12,345 and 105 and 1,234,567. The 21st."
)


@pytest.mark.skipif(shutil.which("flite") is None, reason="needs flite")
def test_flite_says_what_say_numerals_writes() -> None:
    said = subprocess.run(["flite", "-pw", "-t", FLITE_CASES, "none"], check=True, capture_output=True, text=True)
    flite_words = [w for w in said.stdout.lower().split() if w.isalpha()]
    ours = [w.strip(".,;") for w in N.say_numerals(FLITE_CASES).lower().split()]
    assert flite_words == [w for w in ours if w]
