"""Unit conversion, exact where the units are defined exactly."""

from fractions import Fraction

import pytest

from agents.tools.units import UnitError, answer, convert, find_unit


@pytest.mark.parametrize(
    ("value", "src", "dst", "exact"),
    [
        (5, "miles", "km", Fraction("8.04672")),
        (1, "mile", "feet", Fraction(5280)),
        (1, "foot", "inches", Fraction(12)),
        (1, "inch", "cm", Fraction("2.54")),
        (1, "pound", "grams", Fraction("453.59237")),
        (2, "pounds", "ounces", Fraction(32)),
        (1, "stone", "lb", Fraction(14)),
        (1, "gallon", "liters", Fraction("3.785411784")),
        (1, "gallon", "pints", Fraction(8)),
        (1, "cup", "tablespoons", Fraction(16)),
        (60, "mph", "km/h", Fraction("96.56064")),
        (36, "km/h", "m/s", Fraction(10)),
        (1, "knot", "km/h", Fraction("1.852")),
        (2, "hours", "minutes", Fraction(120)),
        (1, "week", "seconds", Fraction(604800)),
        (0, "celsius", "fahrenheit", Fraction(32)),
        (100, "degrees celsius", "degrees fahrenheit", Fraction(212)),
        (-40, "C", "F", Fraction(-40)),
        (0, "kelvin", "celsius", Fraction("-273.15")),
        (100, "fahrenheit", "celsius", Fraction(340, 9)),
    ],
)
def test_exact_conversions(value: int, src: str, dst: str, exact: Fraction) -> None:
    out, _, _ = convert(Fraction(value), src, dst)
    assert out == exact


def test_round_trip_is_exact() -> None:
    out, _, _ = convert(Fraction("123.456"), "km", "miles")
    back, _, _ = convert(out, "miles", "km")
    assert back == Fraction("123.456")


def test_answers_read_well() -> None:
    assert answer(Fraction(5), "miles", "kilometers") == "5 miles is 8.04672 kilometers."
    assert answer(Fraction(1), "foot", "inches") == "1 foot is 12 inches."
    assert answer(Fraction(100), "fahrenheit", "celsius") == "100 degrees Fahrenheit is about 37.7778 degrees Celsius."
    assert answer(Fraction(1), "km/h", "mph") == "1 kilometer per hour is about 0.621371 miles per hour."


def test_units_of_different_kinds_do_not_convert() -> None:
    with pytest.raises(UnitError, match=r"length .* to mass"):
        convert(Fraction(3), "meters", "kg")


def test_unknown_units() -> None:
    with pytest.raises(UnitError, match="furlongs per fortnight"):
        find_unit("furlongs per fortnight")
