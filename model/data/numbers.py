"""English number words: "56" -> "fifty six", "fifty six" -> 56, digits in text read aloud.

The spelling is the one our synthesizers say and pocketsphinx writes back (measured: flite's
slt and kal16 through model/eval/asr.py and `flite -pw`; espeak-ng en-us by its phonemes, `-x`):
American cardinals with no "and" ("105" -> "one hundred five", "384000" -> "three hundred eighty four
thousand", "1,234,567" -> "one million two hundred thirty four thousand five hundred sixty
seven"), decimals digit by digit after "point" ("0.75" -> "zero point seven five"), clock times
as hour then minutes ("3:45" -> "three forty five", "3:05" -> "three oh five", "10:00" -> "ten").

`say_numerals` rewrites the numerals of running text that way, so a word error rate compares
words with words, whichever side wrote digits. Known differences from flite: it reads a
four-digit number written without a comma as a year in some ranges ("2418" -> "twenty four
eighteen", "1999" -> "nineteen ninety nine"; espeak-ng says the cardinal) and "$56" as "fifty
six dollars"; our dialogues write thousands with commas and no currency signs, so neither occurs.
"""

from __future__ import annotations

import operator
import re

__all__ = [
    "MAX_SPELLED",
    "NUMBERS",
    "TENS",
    "UNITS",
    "parse_number",
    "say_numerals",
    "spell",
    "spell_digits",
    "spell_ordinal",
]

UNITS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")  # by tens digit
_SCALES = ((1_000_000, "million"), (1_000, "thousand"))
MAX_SPELLED = 999_999_999

# Single words with their values ("oh" as in "three oh five"; "hundred" alone as ASR may hear it).
_TENS_VALUE = {w: 10 * i for i, w in enumerate(TENS) if w}
NUMBERS: dict[str, int] = {w: i for i, w in enumerate(UNITS)} | _TENS_VALUE | {"hundred": 100, "oh": 0}
_SCALE_VALUE = {name: value for value, name in _SCALES}
_ORDINAL = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip


def spell(n: int) -> str:
    """0..999,999,999 in words (42 -> "forty two", 1_000_005 -> "one million five").

    Anything else is refused (ValueError: negative or too large; TypeError: not an integer)
    rather than read some other way: `say_numerals` decides how to read what this cannot."""
    if isinstance(n, bool):
        raise TypeError(f"spell: expected an integer, got {n!r}")
    n = operator.index(n)  # numpy integers pass, floats and strings raise TypeError
    if not 0 <= n <= MAX_SPELLED:
        raise ValueError(f"spell: {n} is outside 0..{MAX_SPELLED:,}")
    if n == 0:
        return "zero"
    parts = []
    for value, name in _SCALES:
        group, n = divmod(n, value)
        if group:
            parts += [_below_thousand(group), name]
    if n:
        parts.append(_below_thousand(n))
    return " ".join(parts)


def _below_thousand(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    parts = [UNITS[hundreds], "hundred"] if hundreds else []
    if rest >= 20:
        tens, unit = divmod(rest, 10)
        parts += [TENS[tens], UNITS[unit]] if unit else [TENS[tens]]
    elif rest:
        parts.append(UNITS[rest])
    return " ".join(parts)


def spell_ordinal(n: int) -> str:
    """0..999,999,999 as an ordinal (21 -> "twenty first", 100 -> "one hundredth")."""
    *head, last = spell(n).split()
    if last in _ORDINAL:
        last = _ORDINAL[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def spell_digits(digits: str) -> str:
    """Digit by digit ("007" -> "zero zero seven"), as flite reads leading zeros and long runs."""
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f"spell_digits: {digits!r} is not a string of digits")
    return " ".join(UNITS[int(d)] for d in digits)


# ----------------------------------------------------------------------------- parsing

_CLEAN = re.compile(r"[^a-z0-9.,'\s-]")
_INT = re.compile(r"\d+|\d{1,3}(?:,\d{3})+")


def parse_number(text: str) -> int | None:
    """The non-negative integer `text` says, or None.

    Digits ("3", "1,000"; punctuation around them ignored: "12." -> 12) or number words
    ("Three," -> 3, "twenty-one" -> 21, "fifty six thousand seven hundred eighty nine", an "and"
    after "hundred" or a scale word allowed), strictly: "twenty twelve", "thousand two thousand",
    decimals ("2.5") and signs ("-3", "minus three") are None."""
    s = _CLEAN.sub("", text.lower()).strip(" \t\n.,'")
    if s.startswith("-") or not s:
        return None
    if _INT.fullmatch(s):
        return int(s.replace(",", ""))
    words = [w.strip(".,'") for w in re.split(r"[\s-]+", s)]
    if len(words) == 1 and words[0] in NUMBERS:
        return NUMBERS[words[0]]
    return _parse_words(words)


def _parse_words(words: list[str]) -> int | None:
    total, i, last_scale = 0, 0, MAX_SPELLED + 1
    while i < len(words):
        group, i = _parse_group(words, i)
        if group is None:
            return None
        if i < len(words) and words[i] in _SCALE_VALUE:
            scale = _SCALE_VALUE[words[i]]
            if scale >= last_scale:
                return None
            total, last_scale, i = total + group * scale, scale, i + 1
            if i < len(words) - 1 and words[i] == "and":
                i += 1
        elif i < len(words):
            return None  # words left that are not a scale: "twenty twelve"
        else:
            total += group
    return total


def _parse_group(words: list[str], i: int) -> tuple[int | None, int]:
    """1..999 from words[i:] ("three hundred and five"), with the index after it."""
    value, start = 0, i
    w = words[i] if i < len(words) else ""
    if i + 1 < len(words) and words[i + 1] == "hundred" and w in NUMBERS and 1 <= NUMBERS[w] <= 9 and w != "oh":
        value, i = 100 * NUMBERS[w], i + 2
        if i + 1 < len(words) and words[i] == "and":
            i += 1
    w = words[i] if i < len(words) else ""
    if w in _TENS_VALUE:
        value, i = value + _TENS_VALUE[w], i + 1
        u = words[i] if i < len(words) else ""
        if u in UNITS and 1 <= UNITS.index(u) <= 9:
            value, i = value + UNITS.index(u), i + 1
    elif w in UNITS and w != "zero":
        value, i = value + UNITS.index(w), i + 1
    return (value if i > start and value else None), i


# ----------------------------------------------------------------------------- running text

_NUMERAL = re.compile(
    r"""
    (?<!\d)(?:
        (?P<hour>\d{1,2}):(?P<minute>[0-5]\d)(?![\d:])                 # 3:45
      | (?P<ord>\d+)(?P<suffix>st|nd|rd|th)(?![a-z])                  # 21st
      | (?:(?<![^\s(\[])(?P<sign>-))?                                   # -3 at a word's start
        (?:(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?|\.(?P<bare>\d+))
        (?!\d)(?P<pct>%)?                                              # 1,000  2.5  .5  45%
    )
    """,
    re.VERBOSE | re.IGNORECASE,
)


def say_numerals(text: str) -> str:
    """`text` with each numeral replaced by the words a listener hears ("It's 56." -> "It's
    fifty six."); everything else is left as it is. Integers beyond `MAX_SPELLED`, and those
    written with a leading zero ("007"), are read digit by digit; never raises."""
    return _NUMERAL.sub(_say, text)


def _say(m: re.Match[str]) -> str:
    if m["hour"] is not None:
        hour, minute = int(m["hour"]), int(m["minute"])
        words = [spell(hour)]
        if minute:
            words += ["oh", UNITS[minute]] if minute < 10 else [spell(minute)]
    elif m["ord"] is not None:
        words = [spell_ordinal(int(m["ord"])) if len(m["ord"]) <= 9 else spell_digits(m["ord"])]
    else:
        words = ["minus"] if m["sign"] else []
        if m["int"] is not None:
            words.append(_say_integer(m["int"]))
        frac = m["frac"] if m["frac"] is not None else m["bare"]
        if frac is not None:
            words += ["point", spell_digits(frac)]
        if m["pct"]:
            words.append("percent")
    text, a, b = m.string, m.start(), m.end()
    left = " " if a > 0 and text[a - 1].isalnum() else ""  # "mp3" -> "mp three"
    right = " " if b < len(text) and text[b].isalnum() else ""
    return left + " ".join(words) + right


def _say_integer(written: str) -> str:
    digits = written.replace(",", "")
    if len(digits) > 1 and digits.startswith("0") and "," not in written:
        return spell_digits(digits)
    # By length, not value: int() refuses strings of more than 4300 digits.
    return spell(int(digits)) if len(digits) <= len(str(MAX_SPELLED)) else spell_digits(digits)
