"""Spoken numbers: "twelve", "one hundred and five", "three point one four", "2.5 million".

Captions of speech spell numbers out; every tool reads them through `words_to_digits`, which
rewrites each run of number words as digits and leaves everything else alone.
"""

from __future__ import annotations

import re
from fractions import Fraction

_UNITS = {
    "zero": 0, "oh": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_DIGIT_WORDS = {k: v for k, v in _UNITS.items() if v < 10}

_TOKEN = re.compile(r"[A-Za-z]+|\d+(?:\.\d+)?")
_GAP = re.compile(r"\s+|-")  # what may separate the words of one number
_NUMERIC = re.compile(r"\d+(?:\.\d+)?")


def _is_number_word(w: str) -> bool:
    return w in _UNITS or w in _TENS or w == "hundred" or w in _SCALES


def _value(words: list[str]) -> Fraction | None:
    """The value of a run of number words (and at most one leading numeral), or None."""
    total = Fraction(0)
    current = Fraction(0)
    seen = False
    i = 0
    while i < len(words):
        w = words[i]
        if _NUMERIC.fullmatch(w):
            if seen:
                return None
            current += Fraction(w)
        elif w in _UNITS:
            current += _UNITS[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w == "hundred":
            current = (current or Fraction(1)) * 100
        elif w in _SCALES:
            total += (current or 1) * _SCALES[w]
            current = Fraction(0)
        elif w == "point":
            digits = words[i + 1 :]
            if not digits or any(d not in _DIGIT_WORDS for d in digits):
                return None
            frac = "".join(str(_DIGIT_WORDS[d]) for d in digits)
            current += Fraction(int(frac), 10 ** len(frac))
            break
        else:
            return None
        seen = True
        i += 1
    return Fraction(total + current)


def _fmt(x: Fraction) -> str:
    if x.denominator == 1:
        return str(x.numerator)
    # Number words only make tenths, hundredths...: the denominator divides a power of ten.
    places = 0
    while 10**places % x.denominator:
        places += 1
    digits = str(abs(x.numerator) * (10**places // x.denominator)).rjust(places + 1, "0")
    return f"{'-' if x < 0 else ''}{digits[:-places]}.{digits[-places:]}"


def words_to_digits(text: str) -> str:
    """`text` with every run of number words rewritten as digits ("a hundred and five" -> "105",
    "2.5 million" -> "2500000", "twenty-one" -> "21"); everything else is left exactly as is."""
    toks = list(_TOKEN.finditer(text))
    words = [t.group().lower() for t in toks]

    def joined(a: int, b: int) -> bool:  # tokens a and b belong to one spoken number
        return _GAP.fullmatch(text[toks[a].end() : toks[b].start()]) is not None

    out: list[str] = []
    pos = 0
    i = 0
    while i < len(toks):
        j = i
        run: list[str] = []
        # "a hundred", "a million": "a" counts only right before a scale word.
        if (
            words[i] in ("a", "an")
            and i + 1 < len(toks)
            and joined(i, i + 1)
            and (words[i + 1] == "hundred" or words[i + 1] in _SCALES)
        ):
            j += 1
        while j < len(toks) and (j == i or joined(j - 1, j)):
            w = words[j]
            if _is_number_word(w) or (_NUMERIC.fullmatch(w) and not run):
                run.append(w)
                j += 1
            elif (
                w == "and"
                and run
                and run[-1] in ("hundred", *_SCALES)
                and j + 1 < len(toks)
                and joined(j, j + 1)
                and (words[j + 1] in _UNITS or words[j + 1] in _TENS)
            ):
                j += 1  # "one hundred and five"
            elif w == "point" and run and j + 1 < len(toks) and words[j + 1] in _DIGIT_WORDS and joined(j, j + 1):
                run.append("point")
                j += 1
                while j < len(toks) and words[j] in _DIGIT_WORDS and joined(j - 1, j):
                    run.append(words[j])
                    j += 1
                break
            else:
                break
        # A lone numeral stays exactly as written ("2026-12-25", "0.50").
        value = _value(run) if run and not (len(run) == 1 and _NUMERIC.fullmatch(run[0])) else None
        if value is None:
            i += 1
            continue
        out.append(text[pos : toks[i].start()])
        out.append(_fmt(value))
        pos = toks[j - 1].end()
        i = j
    out.append(text[pos:])
    return "".join(out)


def parse_number(text: str) -> Fraction | None:
    """A single number said or written ("twelve", "2.5", "a million", "1,500"), else None."""
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text.strip())
    if _NUMERIC.fullmatch(text):
        return Fraction(text)
    m = re.fullmatch(r"(-)?(\d+(?:\.\d+)?)/(\d+)", text)
    if m and int(m.group(3)) != 0:
        sign = -1 if m.group(1) else 1
        return sign * Fraction(m.group(2)) / int(m.group(3))
    converted = words_to_digits(text)
    if converted.lower() in ("a", "an", "one"):
        return Fraction(1)
    if _NUMERIC.fullmatch(converted):
        return Fraction(converted)
    neg = re.fullmatch(r"(?:minus|negative)\s+(\d+(?:\.\d+)?)", converted)
    if neg:
        return -Fraction(neg.group(1))
    if converted.lower() in ("half", "a half"):
        return Fraction(1, 2)
    return None
