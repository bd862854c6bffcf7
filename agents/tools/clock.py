"""Dates, times and time zones: "what time is it in Tokyo", "what day is 2026-12-25",
"how many days until Christmas".

Places resolve to IANA zones (zoneinfo, the system tz database or the `tzdata` wheel): every
zone's city ("Tokyo" -> Asia/Tokyo, "New York" -> America/New_York), plus the cities and
countries people name that the database does not ("San Francisco", "India", "Pacific time").
"""

from __future__ import annotations

import functools
import re
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from agents.tools.numbers import words_to_digits


class ClockError(ValueError):
    """A place or date the clock can't make sense of; the message is user-safe."""


_ALIASES = {
    "utc": "UTC", "gmt": "UTC", "zulu": "UTC", "universal time": "UTC",
    "eastern time": "America/New_York", "et": "America/New_York", "est": "America/New_York",
    "edt": "America/New_York", "central time": "America/Chicago", "cst": "America/Chicago",
    "mountain time": "America/Denver", "mst": "America/Denver", "pacific time": "America/Los_Angeles",
    "pst": "America/Los_Angeles", "pdt": "America/Los_Angeles", "cet": "Europe/Paris",
    "central european time": "Europe/Paris", "ist": "Asia/Kolkata", "jst": "Asia/Tokyo",
    "san francisco": "America/Los_Angeles", "seattle": "America/Los_Angeles", "portland": "America/Los_Angeles",
    "las vegas": "America/Los_Angeles", "san diego": "America/Los_Angeles", "boston": "America/New_York",
    "washington": "America/New_York", "washington dc": "America/New_York", "miami": "America/New_York",
    "atlanta": "America/New_York", "philadelphia": "America/New_York", "dallas": "America/Chicago",
    "houston": "America/Chicago", "austin": "America/Chicago", "montreal": "America/Toronto",
    "ottawa": "America/Toronto", "rio": "America/Sao_Paulo", "rio de janeiro": "America/Sao_Paulo",
    "beijing": "Asia/Shanghai", "shenzhen": "Asia/Shanghai", "delhi": "Asia/Kolkata",
    "new delhi": "Asia/Kolkata", "mumbai": "Asia/Kolkata", "bangalore": "Asia/Kolkata",
    "bengaluru": "Asia/Kolkata", "chennai": "Asia/Kolkata", "osaka": "Asia/Tokyo", "kyoto": "Asia/Tokyo",
    "munich": "Europe/Berlin", "frankfurt": "Europe/Berlin", "hamburg": "Europe/Berlin",
    "barcelona": "Europe/Madrid", "milan": "Europe/Rome", "venice": "Europe/Rome", "florence": "Europe/Rome",
    "geneva": "Europe/Zurich", "manchester": "Europe/London", "edinburgh": "Europe/London",
    "st petersburg": "Europe/Moscow", "saint petersburg": "Europe/Moscow", "tel aviv": "Asia/Jerusalem",
    "abu dhabi": "Asia/Dubai", "cape town": "Africa/Johannesburg",
    "japan": "Asia/Tokyo", "china": "Asia/Shanghai", "india": "Asia/Kolkata", "korea": "Asia/Seoul",
    "south korea": "Asia/Seoul", "uk": "Europe/London", "england": "Europe/London",
    "britain": "Europe/London", "united kingdom": "Europe/London", "ireland": "Europe/Dublin",
    "france": "Europe/Paris", "germany": "Europe/Berlin", "spain": "Europe/Madrid", "italy": "Europe/Rome",
    "netherlands": "Europe/Amsterdam", "switzerland": "Europe/Zurich", "russia": "Europe/Moscow",
    "brazil": "America/Sao_Paulo", "mexico": "America/Mexico_City", "argentina": "America/Argentina/Buenos_Aires",
    "egypt": "Africa/Cairo", "kenya": "Africa/Nairobi", "nigeria": "Africa/Lagos", "israel": "Asia/Jerusalem",
    "turkey": "Europe/Istanbul", "thailand": "Asia/Bangkok", "vietnam": "Asia/Ho_Chi_Minh",
    "singapore": "Asia/Singapore", "indonesia": "Asia/Jakarta", "philippines": "Asia/Manila",
    "taiwan": "Asia/Taipei", "new zealand": "Pacific/Auckland", "australia": "Australia/Sydney",
    "canada": "America/Toronto", "usa": "America/New_York", "us": "America/New_York",
    "united states": "America/New_York", "america": "America/New_York", "hawaii": "Pacific/Honolulu",
    "alaska": "America/Anchorage", "california": "America/Los_Angeles", "new york city": "America/New_York",
    "nyc": "America/New_York", "la": "America/Los_Angeles",
}  # fmt: skip

_MONTHS = {
    "january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "mar": 3, "april": 4, "apr": 4,
    "may": 5, "june": 6, "jun": 6, "july": 7, "jul": 7, "august": 8, "aug": 8, "september": 9,
    "sep": 9, "sept": 9, "october": 10, "oct": 10, "november": 11, "nov": 11, "december": 12, "dec": 12,
}  # fmt: skip
_MONTH_NAMES = "|".join(sorted(_MONTHS, key=len, reverse=True))
_HOLIDAYS = {  # name -> (month, day)
    "christmas eve": (12, 24), "christmas day": (12, 25), "christmas": (12, 25), "xmas": (12, 25),
    "new year's eve": (12, 31), "new years eve": (12, 31), "new year's day": (1, 1), "new years day": (1, 1),
    "new year's": (1, 1), "new years": (1, 1), "new year": (1, 1), "halloween": (10, 31),
    "valentine's day": (2, 14), "valentines day": (2, 14), "valentine's": (2, 14),
}  # fmt: skip
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
    "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19,
    "twentieth": 20, "thirtieth": 30,
}  # fmt: skip
_SMALL = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
}  # fmt: skip
_TEENS_TENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip


def _key(name: str) -> str:
    name = name.lower().replace("_", " ").replace(".", "").strip()
    return re.sub(r"\s+", " ", name)


@functools.cache
def _city_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for zone in sorted(available_timezones()):
        head, _, city = zone.rpartition("/")
        if not head or head.split("/")[0] in ("Etc", "SystemV", "US", "Brazil", "Canada", "Chile", "Mexico"):
            continue
        index.setdefault(_key(city), zone)
    return index


def resolve_zone(place: str) -> ZoneInfo:
    """The time zone of a city, country, zone abbreviation or IANA name; ClockError if unknown."""
    raw = place.strip().strip("?.!,")
    key = _key(re.sub(r"^(?:the\s+)", "", raw, flags=re.IGNORECASE))
    name = _ALIASES.get(key) or _city_index().get(key)
    if name is None and "/" in raw:
        name = raw
    if name is None:
        raise ClockError(f"I don't know the time zone of {raw!r}; try a big city or a zone like Europe/Paris")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ClockError(f"I don't know the time zone {raw!r}") from e


def user_zone(timezone: str | None) -> ZoneInfo | None:
    """The caller's zone from the page's IANA name, or None when absent or unknown."""
    if not timezone:
        return None
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def say_time(dt: datetime) -> str:
    return f"{dt.hour % 12 or 12}:{dt.minute:02d} {'AM' if dt.hour < 12 else 'PM'}"


def say_date(d: date) -> str:
    return f"{d:%A}, {d:%B} {d.day}, {d.year}"


def time_answer(now: datetime, place: str | None, timezone: str | None) -> str:
    """ "It's 9:05 PM on Tuesday, ... in Tokyo." `now` is aware; `place` beats the caller's zone."""
    if place:
        zone = resolve_zone(place)
        where = f" in {place.strip().strip('?.!,').title() if place.islower() else place.strip()}"
    else:
        zone = user_zone(timezone) or ZoneInfo("UTC")
        where = "" if user_zone(timezone) else " in UTC"
    local = now.astimezone(zone)
    offset = "" if where == " in UTC" else f" ({_offset(local)})"
    return f"It's {say_time(local)} on {say_date(local.date())}{where}{offset}."


def _offset(dt: datetime) -> str:
    off = dt.utcoffset() or timedelta(0)
    minutes = int(off.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    h, m = divmod(abs(minutes), 60)
    return f"UTC{sign}{h}" + (f":{m:02d}" if m else "")


def today_in(now: datetime, timezone: str | None) -> date:
    return now.astimezone(user_zone(timezone) or ZoneInfo("UTC")).date()


def _spoken_years(text: str) -> str:
    """ "twenty twenty-six" -> "2026", "nineteen ninety nine" -> "1999"."""
    tens = "|".join(_TEENS_TENS)
    small = "|".join(_SMALL)

    def year(m: re.Match[str]) -> str:
        century = _TEENS_TENS[m.group(1).lower()]
        rest = _TEENS_TENS[m.group(2).lower()] + (_SMALL[m.group(3).lower()] if m.group(3) else 0)
        return str(century * 100 + rest)

    return re.sub(rf"\b(nineteen|twenty)[\s-]+({tens})(?:[\s-]+({small}))?\b", year, text, flags=re.IGNORECASE)


def _spoken_ordinals(text: str) -> str:
    """ "twenty-fifth" -> "25th", "first" -> "1st"."""
    ords = "|".join(_ORDINALS)

    def ordinal(m: re.Match[str]) -> str:
        tens = {"twenty": 20, "thirty": 30}.get((m.group(1) or "").lower(), 0)
        return f"{tens + _ORDINALS[m.group(2).lower()]}th"

    return re.sub(rf"\b(?:(twenty|thirty)[\s-]+)?({ords})\b", ordinal, text, flags=re.IGNORECASE)


def _make(year: int, month: int, day: int) -> date:
    try:
        return date(year, month, day)
    except ValueError as e:
        raise ClockError(f"there is no day {day} in month {month} of {year}") from e


def find_date(text: str, today: date, *, future: bool = False) -> date | None:
    """The date named in `text`, or None. Without a year it is this year's, or with
    `future` the next one on or after `today`."""
    t = words_to_digits(_spoken_ordinals(_spoken_years(text))).lower()
    if re.search(r"\btoday\b", t):
        return today
    if re.search(r"\btomorrow\b", t):
        return today + timedelta(days=1)
    if re.search(r"\byesterday\b", t):
        return today - timedelta(days=1)
    m = re.search(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b", t)
    if m:
        return _make(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    year: int | None = None
    month = day = 0
    m = re.search(rf"\b({_MONTH_NAMES})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(\d{{4}})\b)?", t)
    m2 = re.search(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_NAMES})\b\.?(?:,?\s+(\d{{4}})\b)?", t)
    if m:
        month, day = _MONTHS[m.group(1)], int(m.group(2))
        year = int(m.group(3)) if m.group(3) else None
    elif m2:
        month, day = _MONTHS[m2.group(2)], int(m2.group(1))
        year = int(m2.group(3)) if m2.group(3) else None
    else:
        for name in sorted(_HOLIDAYS, key=len, reverse=True):
            if re.search(rf"\b{re.escape(name)}(?!\w)", t):
                month, day = _HOLIDAYS[name]
                break
        else:
            return None
    if year is None:  # "nineteen ninety nine, January first": the year said elsewhere
        ym = re.search(r"\b([12]\d{3})\b", t)
        year = int(ym.group(1)) if ym else None
    if year is not None:
        return _make(year, month, day)
    if not 1 <= day <= 31:
        raise ClockError(f"there is no day {day} in a month")
    for y in range(today.year, today.year + 9):  # Feb 29 waits up to 8 years
        try:
            d = date(y, month, day)
        except ValueError:
            continue
        if not future or d >= today:
            return d
    raise ClockError(f"there is no day {day} in month {month}")


def weekday_answer(d: date, today: date) -> str:
    verb = "is" if d >= today else "was"
    return f"{d:%B} {d.day}, {d.year} {verb} a {d:%A}."


def days_until_answer(d: date, today: date) -> str:
    n = (d - today).days
    when = say_date(d)
    if n == 0:
        return f"That's today, {when}."
    if n > 0:
        return f"{when} is {n} day{'s' if n != 1 else ''} from today."
    return f"{when} was {-n} day{'s' if n != -1 else ''} ago."
