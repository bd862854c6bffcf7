"""Exact arithmetic with a parser that cannot run code.

A recursive-descent parser over a five-token grammar (numbers, + - * / // % ** ^, parentheses)
evaluates as it parses, in `fractions.Fraction`: integers of any size, decimals as exact
fractions (0.1 + 0.2 is 3/10). Nothing is ever handed to Python's `eval` or `ast`, so names,
calls, attribute access and `__import__` are not a risk to contain but a token to refuse with
a clear message. Every size is bounded before it is computed: the input length, literal
digits, nesting depth, and a power's result (estimated from bit lengths first — `9**9**9`
is refused in microseconds, not computed for hours).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction

MAX_INPUT_CHARS = 500
MAX_LITERAL_DIGITS = 1000
# Python refuses int -> str beyond 4300 digits (sys.int_info.default_max_str_digits); stay below.
MAX_RESULT_BITS = 13_000  # about 3900 decimal digits
MAX_DEPTH = 50
MAX_ROOT = 64


class CalcError(ValueError):
    """The expression was refused or has no exact answer; the message is user-safe."""


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<op>\*\*|//|[-+*/%^()])
  | (?P<name>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
# "1,000,000" as people (and speech recognizers) write it.
_GROUPING = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


@dataclass(frozen=True)
class _Tok:
    kind: str  # "num" | "op" | "end"
    text: str
    pos: int


def _tokenize(src: str) -> list[_Tok]:
    toks: list[_Tok] = []
    for m in _TOKEN.finditer(src):
        kind = m.lastgroup
        text = m.group()
        if kind == "ws":
            continue
        if kind == "name":
            before = src[: m.start()].rstrip()
            after = src[m.end() :].lstrip()
            if before.endswith("."):
                raise CalcError(f"attribute access ('.{text}') is not allowed: I only compute with numbers")
            if after.startswith("("):
                raise CalcError(f"function calls ('{text}(...)') are not allowed: I only compute with numbers")
            raise CalcError(f"names like '{text}' are not allowed: I only compute with numbers")
        if kind == "other":
            if text == "." and toks and toks[-1].text == ")":
                raise CalcError("attribute access is not allowed: I only compute with numbers")
            raise CalcError(f"I can't use {text!r} in arithmetic; only numbers, + - * / // % ** and parentheses")
        if kind == "num":
            mantissa, _, exp = text.lower().partition("e")
            if sum(c.isdigit() for c in mantissa) > MAX_LITERAL_DIGITS:
                raise CalcError(f"that number is too long (more than {MAX_LITERAL_DIGITS} digits)")
            if exp and abs(int(exp)) > MAX_LITERAL_DIGITS:
                raise CalcError("that number's exponent is too large")
        toks.append(_Tok(kind or "other", "**" if text == "^" else text, m.start()))
    toks.append(_Tok("end", "", len(src)))
    return toks


def _check_size(x: Fraction) -> Fraction:
    if max(x.numerator.bit_length(), x.denominator.bit_length()) > MAX_RESULT_BITS:
        raise CalcError("the result is too large to work with (more than about 3900 digits)")
    return x


def _iroot(n: int, k: int) -> int | None:
    """The exact integer k-th root of n >= 0, or None."""
    if n < 2:
        return n
    # Newton's method on integers from an upper bound given by the bit length.
    x = 1 << -(-n.bit_length() // k)
    while True:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            break
        x = y
    return x if x**k == n else None


def _power(base: Fraction, exp: Fraction) -> Fraction:
    if exp.denominator != 1:
        return _root_power(base, exp)
    n = exp.numerator
    if base == 0:
        if n < 0:
            raise CalcError("zero can't be raised to a negative power (that divides by zero)")
        return Fraction(1) if n == 0 else Fraction(0)
    if base in (1, -1):
        return base ** (n % 2) if base == -1 else base
    # Bound the result before computing it: bits(base**n) >= |n| * (bits(base) - 1), a lower
    # bound, so what passes is at most twice the limit and `_check_size` has the last word.
    bits = abs(n) * (max(base.numerator.bit_length(), base.denominator.bit_length()) - 1)
    if bits > MAX_RESULT_BITS:
        raise CalcError("that power is too large to compute (its result would have more than about 3900 digits)")
    return _check_size(base**n)


def _root_power(base: Fraction, exp: Fraction) -> Fraction:
    p, q = exp.numerator, exp.denominator
    approx = _approx_power(base, exp)
    if q > MAX_ROOT:
        raise CalcError(f"{_fmt_plain(base)} to the power {_fmt_plain(exp)} has no exact answer I can find{approx}")
    raised = _power(base, Fraction(p))
    sign = 1
    if raised < 0:
        if q % 2 == 0:
            raise CalcError("an even root of a negative number is not a real number")
        sign, raised = -1, -raised
    num, den = _iroot(raised.numerator, q), _iroot(raised.denominator, q)
    if num is None or den is None:
        raise CalcError(f"{_fmt_plain(base)} to the power {_fmt_plain(exp)} is not a fraction{approx}")
    return Fraction(sign * num, den)


def _approx_power(base: Fraction, exp: Fraction) -> str:
    try:
        if base < 0:
            return ""
        value = math.exp(float(exp) * (math.log(base.numerator) - math.log(base.denominator)))
    except (OverflowError, ValueError):
        return ""
    return f"; it is about {value:.6g}"


class _Parser:
    def __init__(self, toks: list[_Tok]) -> None:
        self.toks = toks
        self.i = 0
        self.depth = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def parse(self) -> Fraction:
        value = self.expr()
        t = self.peek()
        if t.kind != "end":
            raise CalcError(f"I didn't expect {t.text!r} there")
        return value

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek().text in ("+", "-"):
            op = self.take().text
            rhs = self.term()
            value = _check_size(value + rhs if op == "+" else value - rhs)
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.peek().text in ("*", "/", "//", "%"):
            op = self.take().text
            rhs = self.unary()
            if op == "*":
                value = value * rhs
            elif rhs == 0:
                raise CalcError("that divides by zero, which has no answer")
            elif op == "/":
                value = value / rhs
            elif op == "//":
                value = Fraction(value // rhs)
            else:
                value = value % rhs
            value = _check_size(value)
        return value

    def unary(self) -> Fraction:
        if self.peek().text in ("+", "-"):
            op = self.take().text
            self._enter()
            value = self.unary()
            self.depth -= 1
            return -value if op == "-" else value
        return self.power()

    def power(self) -> Fraction:
        base = self.atom()
        if self.peek().text == "**":
            self.take()
            self._enter()
            exp = self.unary()  # right-associative, and 2**-1 is allowed
            self.depth -= 1
            return _power(base, exp)
        return base

    def atom(self) -> Fraction:
        t = self.take()
        if t.kind == "num":
            return Fraction(t.text)
        if t.text == "(":
            self._enter()
            value = self.expr()
            self.depth -= 1
            if self.take().text != ")":
                raise CalcError("a parenthesis is not closed")
            return value
        if t.kind == "end":
            raise CalcError("the expression ends too early")
        raise CalcError(f"I didn't expect {t.text!r} there")

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise CalcError("that expression is nested too deeply")


def evaluate(src: str) -> Fraction:
    """The exact value of an arithmetic expression; raises CalcError (user-safe) otherwise."""
    if len(src) > MAX_INPUT_CHARS:
        raise CalcError(f"that expression is too long (more than {MAX_INPUT_CHARS} characters)")
    src = _GROUPING.sub("", src)
    if not src.strip():
        raise CalcError("there is nothing to calculate")
    return _Parser(_tokenize(src)).parse()


def _fmt_plain(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def exact_decimal(x: Fraction, max_places: int = 30) -> str | None:
    """`x` as an exact decimal string if it has at most `max_places` decimals, else None."""
    den = x.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    places = max(twos, fives)
    if den != 1 or places > max_places:
        return None
    sign = "-" if x < 0 else ""
    if places == 0:
        return f"{sign}{abs(x.numerator)}"
    digits = str(abs(x.numerator) * (10**places // x.denominator)).rjust(places + 1, "0")
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def approx(x: Fraction, digits: int = 6) -> str:
    """`x` to `digits` significant digits, without float overflow for huge fractions."""
    with localcontext() as ctx:
        ctx.prec = digits
        d = Decimal(x.numerator) / Decimal(x.denominator)
    text = format(d.normalize(), "f") if abs(d.adjusted()) < 15 else format(d.normalize(), "e")
    return text


def format_number(x: Fraction) -> str:
    """How an exact answer is said: an integer, an exact decimal, or a fraction with an
    approximate decimal beside it."""
    if x.denominator == 1:
        return str(x.numerator)
    dec = exact_decimal(x)
    if dec is not None:
        return dec
    return f"{_fmt_plain(x)} (about {approx(x)})"
