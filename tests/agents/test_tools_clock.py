"""Dates, times and time zones, with the clock pinned."""

from datetime import UTC, date, datetime

import pytest

from agents.tools.clock import ClockError, days_until_answer, find_date, resolve_zone, time_answer, weekday_answer

NOW = datetime(2026, 3, 3, 12, 5, tzinfo=UTC)  # a Tuesday
TODAY = date(2026, 3, 3)


@pytest.mark.parametrize(
    ("place", "zone"),
    [
        ("Tokyo", "Asia/Tokyo"),
        ("new york", "America/New_York"),
        ("San Francisco", "America/Los_Angeles"),
        ("India", "Asia/Kolkata"),
        ("Europe/Paris", "Europe/Paris"),
        ("UTC", "UTC"),
        ("the UK", "Europe/London"),
        ("Sao Paulo", "America/Sao_Paulo"),
    ],
)
def test_places_resolve_to_zones(place: str, zone: str) -> None:
    assert resolve_zone(place).key == zone


def test_unknown_place_is_a_clear_error() -> None:
    with pytest.raises(ClockError, match="Atlantis"):
        resolve_zone("Atlantis")


def test_time_in_places() -> None:
    assert time_answer(NOW, "Tokyo", None) == "It's 9:05 PM on Tuesday, March 3, 2026 in Tokyo (UTC+9)."
    assert "5:35 PM" in time_answer(NOW, "India", None)  # a half-hour offset
    assert "UTC+5:30" in time_answer(NOW, "India", None)
    assert "7:05 AM" in time_answer(NOW, "New York", None)  # EST in March
    july = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert "8:00 AM" in time_answer(july, "New York", None)  # EDT: daylight saving


def test_time_without_place_uses_callers_zone_or_utc() -> None:
    assert "1:05 PM" in time_answer(NOW, None, "Europe/Berlin")
    assert time_answer(NOW, None, None) == "It's 12:05 PM on Tuesday, March 3, 2026 in UTC."
    assert "in UTC" in time_answer(NOW, None, "Not/AZone")  # a bad page zone falls back


def test_date_just_after_midnight_depends_on_zone() -> None:
    late = datetime(2026, 3, 3, 23, 30, tzinfo=UTC)
    assert "Wednesday, March 4" in time_answer(late, "Tokyo", None)
    assert "Tuesday, March 3" in time_answer(late, "London", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("what day is 2026-12-25", date(2026, 12, 25)),
        ("what day of the week is December twenty-fifth twenty twenty-six", date(2026, 12, 25)),
        ("December 25th, 2026", date(2026, 12, 25)),
        ("the 4th of July 1976", date(1976, 7, 4)),
        ("christmas", date(2026, 12, 25)),
        ("new year's day", date(2027, 1, 1)),
        ("tomorrow", date(2026, 3, 4)),
        ("march 3rd", date(2026, 3, 3)),
        ("feb 29", date(2028, 2, 29)),
        ("nineteen ninety nine january first", date(1999, 1, 1)),
    ],
)
def test_find_date(text: str, expected: date) -> None:
    assert find_date(text, TODAY, future=True) == expected


def test_no_date_and_impossible_dates() -> None:
    assert find_date("what is the weather", TODAY) is None
    with pytest.raises(ClockError):
        find_date("june 31", TODAY)
    with pytest.raises(ClockError):
        find_date("2026-02-30", TODAY)


def test_weekday_and_days_until() -> None:
    assert weekday_answer(date(2026, 12, 25), TODAY) == "December 25, 2026 is a Friday."
    assert weekday_answer(date(1969, 7, 20), TODAY) == "July 20, 1969 was a Sunday."
    assert days_until_answer(date(2026, 12, 25), TODAY) == "Friday, December 25, 2026 is 297 days from today."
    assert days_until_answer(TODAY, TODAY).startswith("That's today")
    assert days_until_answer(date(2026, 3, 2), TODAY).endswith("was 1 day ago.")


def test_days_until_wraps_to_next_year() -> None:
    after_christmas = date(2026, 12, 26)
    d = find_date("christmas", after_christmas, future=True)
    assert d == date(2027, 12, 25)
    assert days_until_answer(d, after_christmas).endswith("is 364 days from today.")
