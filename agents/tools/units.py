"""Unit conversion, exact: every factor is a Fraction of the SI unit (an inch is exactly
0.0254 m, a pound exactly 0.45359237 kg), so 5 miles is exactly 8.04672 km. Temperatures are
affine (a scale and an offset), also exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from agents.tools.arith import approx, exact_decimal


class UnitError(ValueError):
    """An unknown unit or a conversion between different kinds; the message is user-safe."""


@dataclass(frozen=True)
class Unit:
    name: str  # how the answer says it (plural)
    kind: str  # "length", "mass", ...
    factor: Fraction  # SI value of one unit
    offset: Fraction = Fraction(0)  # SI = value * factor + offset (temperatures)

    def to_si(self, v: Fraction) -> Fraction:
        return v * self.factor + self.offset

    def from_si(self, v: Fraction) -> Fraction:
        return (v - self.offset) / self.factor


F = Fraction
_INCH = F("0.0254")
_FOOT = 12 * _INCH
_POUND = F("0.45359237")
_GALLON = F("3.785411784")  # US liquid gallon, in litres
_FLOZ = _GALLON / 128
_KNOT = F(1852, 3600)
_MILE = F("1609.344")

# (kind, factor, offset, plural name, aliases...)
_TABLE: list[tuple[str, Fraction, Fraction, str, tuple[str, ...]]] = [
    ("length", F(1), F(0), "meters", ("m", "meter", "meters", "metre", "metres")),
    ("length", F(1, 1000), F(0), "millimeters", ("mm", "millimeter", "millimeters", "millimetre", "millimetres")),
    ("length", F(1, 100), F(0), "centimeters", ("cm", "centimeter", "centimeters", "centimetre", "centimetres")),
    ("length", F(1000), F(0), "kilometers", ("km", "kilometer", "kilometers", "kilometre", "kilometres", "klicks")),
    ("length", _INCH, F(0), "inches", ("in.", "inch", "inches")),
    ("length", _FOOT, F(0), "feet", ("ft", "foot", "feet")),
    ("length", 3 * _FOOT, F(0), "yards", ("yd", "yard", "yards")),
    ("length", _MILE, F(0), "miles", ("mi", "mile", "miles")),
    ("length", F(1852), F(0), "nautical miles", ("nmi", "nautical mile", "nautical miles")),
    ("mass", F(1), F(0), "kilograms", ("kg", "kilo", "kilos", "kilogram", "kilograms", "kilogramme", "kilogrammes")),
    ("mass", F(1, 1000), F(0), "grams", ("g", "gram", "grams", "gramme", "grammes")),
    ("mass", F(1, 10**6), F(0), "milligrams", ("mg", "milligram", "milligrams")),
    ("mass", F(1000), F(0), "metric tons", ("t", "tonne", "tonnes", "metric ton", "metric tons")),
    ("mass", _POUND, F(0), "pounds", ("lb", "lbs", "pound", "pounds")),
    ("mass", _POUND / 16, F(0), "ounces", ("oz", "ounce", "ounces")),
    ("mass", 14 * _POUND, F(0), "stone", ("st", "stone", "stones")),
    ("mass", 2000 * _POUND, F(0), "short tons", ("ton", "tons", "short ton", "short tons")),
    ("volume", F(1), F(0), "liters", ("l", "liter", "liters", "litre", "litres")),
    ("volume", F(1, 1000), F(0), "milliliters", ("ml", "milliliter", "milliliters", "millilitre", "millilitres")),
    ("volume", F(1000), F(0), "cubic meters", ("m3", "cubic meter", "cubic meters", "cubic metre", "cubic metres")),
    ("volume", _GALLON, F(0), "gallons", ("gal", "gallon", "gallons", "us gallon", "us gallons")),
    ("volume", F("4.54609"), F(0), "imperial gallons", ("imperial gallon", "imperial gallons")),
    ("volume", _GALLON / 4, F(0), "quarts", ("qt", "quart", "quarts")),
    ("volume", _GALLON / 8, F(0), "pints", ("pt", "pint", "pints")),
    ("volume", _GALLON / 16, F(0), "cups", ("cup", "cups")),
    ("volume", _FLOZ, F(0), "fluid ounces", ("fl oz", "floz", "fluid ounce", "fluid ounces")),
    ("volume", _FLOZ / 2, F(0), "tablespoons", ("tbsp", "tablespoon", "tablespoons")),
    ("volume", _FLOZ / 6, F(0), "teaspoons", ("tsp", "teaspoon", "teaspoons")),
    (
        "speed",
        F(1),
        F(0),
        "meters per second",
        ("m/s", "mps", "meter per second", "meters per second", "metres per second", "metre per second"),
    ),
    (
        "speed",
        F(1000, 3600),
        F(0),
        "kilometers per hour",
        (
            "km/h",
            "kmh",
            "kph",
            "kmph",
            "kilometer per hour",
            "kilometers per hour",
            "kilometres per hour",
            "kilometre per hour",
            "kilometers an hour",
        ),
    ),
    ("speed", _MILE / 3600, F(0), "miles per hour", ("mph", "mile per hour", "miles per hour", "miles an hour")),
    ("speed", _KNOT, F(0), "knots", ("kn", "kt", "knot", "knots")),
    ("speed", _FOOT, F(0), "feet per second", ("ft/s", "fps", "foot per second", "feet per second")),
    ("time", F(1), F(0), "seconds", ("s", "sec", "secs", "second", "seconds")),
    ("time", F(1, 1000), F(0), "milliseconds", ("ms", "millisecond", "milliseconds")),
    ("time", F(60), F(0), "minutes", ("min", "mins", "minute", "minutes")),
    ("time", F(3600), F(0), "hours", ("h", "hr", "hrs", "hour", "hours")),
    ("time", F(86400), F(0), "days", ("d", "day", "days")),
    ("time", F(7 * 86400), F(0), "weeks", ("wk", "wks", "week", "weeks")),
    ("time", F(36525 * 864), F(0), "years", ("yr", "yrs", "year", "years")),  # Julian year, 365.25 days
    ("temperature", F(1), F(0), "kelvin", ("k", "kelvin", "kelvins")),
    ("temperature", F(1), F("273.15"), "degrees Celsius", ("c", "°c", "celsius", "centigrade")),
    ("temperature", F(5, 9), F("273.15") - F(32) * F(5, 9), "degrees Fahrenheit", ("f", "°f", "fahrenheit")),
]

UNITS: dict[str, Unit] = {}
for _kind, _factor, _offset, _name, _aliases in _TABLE:
    for _alias in _aliases:
        UNITS[_alias] = Unit(_name, _kind, _factor, _offset)

ALIASES_BY_LENGTH = sorted(UNITS, key=len, reverse=True)


def find_unit(text: str) -> Unit:
    key = re.sub(r"\s+", " ", text.strip().lower().rstrip("?.!,"))
    key = re.sub(r"^(?:the |a |an )", "", key)
    key = re.sub(r"^degrees? ", "", key) or key
    unit = UNITS.get(key) or UNITS.get(key.replace("per", "/").replace(" ", ""))
    if unit is None:
        raise UnitError(f"I don't know the unit {text.strip()!r}")
    return unit


def convert(value: Fraction, src: str, dst: str) -> tuple[Fraction, Unit, Unit]:
    a, b = find_unit(src), find_unit(dst)
    if a.kind != b.kind:
        raise UnitError(f"I can't convert {a.kind} ({a.name}) to {b.kind} ({b.name})")
    return b.from_si(a.to_si(value)), a, b


def say_value(x: Fraction) -> str:
    """Exact when it is a short decimal, else rounded to 6 significant digits."""
    if x.denominator == 1:
        return str(x.numerator)
    return exact_decimal(x, 6) or f"about {approx(x)}"


def _named(x: Fraction, unit: Unit) -> str:
    if x != 1:
        return unit.name
    words = unit.name.split()
    i = 0 if (" per " in unit.name or words[0] == "degrees") else len(words) - 1
    w = words[i]
    words[i] = {"feet": "foot", "inches": "inch"}.get(w, w[:-1] if w.endswith("s") else w)
    return " ".join(words)


def answer(value: Fraction, src: str, dst: str) -> str:
    out, a, b = convert(value, src, dst)
    return f"{say_value(value)} {_named(value, a)} is {say_value(out)} {_named(out, b)}."
