"""The built-in tools as OpenAI-style function specs, and the dispatcher for a model's calls.

Arguments arrive as JSON text written by a model: anything malformed (bad JSON, a missing or
mistyped field, an unknown tool) becomes an "error: ..." result the model reads and can
recover from, never an exception out of the backend.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

import msgspec

from agents.backend import TaskContext
from agents.tools.toolbox import Toolbox

MAX_ARGUMENT_CHARS = 4000


def _fn(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


TOOL_SPECS: list[dict[str, Any]] = [
    _fn(
        "calculate",
        "Exact arithmetic on integers of any size, fractions and decimals: + - * / // % ** and parentheses.",
        {"expression": {"type": "string", "description": "e.g. (2**100 + 1/3) * 7"}},
        ["expression"],
    ),
    _fn(
        "current_time",
        "The current local time and date in a place; without a place, the caller's own time zone.",
        {"timezone": {"type": "string", "description": "a city, country or IANA zone, e.g. Tokyo or Europe/Paris"}},
        [],
    ),
    _fn(
        "date_info",
        "The weekday of a date and how many days it is from today.",
        {"date": {"type": "string", "description": "e.g. 2026-12-25, December 25, or Christmas"}},
        ["date"],
    ),
    _fn(
        "convert_units",
        "Convert a quantity between units of length, mass, volume, speed, time or temperature.",
        {
            "value": {"type": "number"},
            "from_unit": {"type": "string", "description": "e.g. miles, kg, degrees Fahrenheit, mph"},
            "to_unit": {"type": "string", "description": "e.g. kilometers, pounds, celsius, km/h"},
        },
        ["value", "from_unit", "to_unit"],
    ),
    _fn(
        "set_timer",
        "Start a timer or reminder that speaks up in this call when it goes off.",
        {
            "seconds": {"type": "number", "description": "how long from now, in seconds"},
            "reminder": {"type": "string", "description": "what to remind the caller of; omit for a plain timer"},
        },
        ["seconds"],
    ),
    _fn(
        "save_note",
        "Remember a note for the rest of this call.",
        {"note": {"type": "string"}},
        ["note"],
    ),
    _fn("list_notes", "Everything the caller asked to remember in this call.", {}, []),
]
TOOL_NAMES = frozenset(spec["function"]["name"] for spec in TOOL_SPECS)


class _ArgError(ValueError):
    pass


def _str(args: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    v = args.get(key)
    if v is None:
        if required:
            raise _ArgError(f"missing argument {key!r}")
        return None
    if not isinstance(v, str):
        raise _ArgError(f"argument {key!r} must be a string")
    return v


def _number(args: dict[str, Any], key: str) -> Fraction:
    v = args.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise _ArgError(f"argument {key!r} must be a number")
    try:
        # Via the decimal text, so 0.1 is 1/10 and not the binary float next to it.
        return Fraction(Decimal(str(v).strip().replace(",", "")))
    except (InvalidOperation, ValueError, OverflowError) as e:
        raise _ArgError(f"argument {key!r} must be a finite number") from e


def call_tool(toolbox: Toolbox, ctx: TaskContext, name: str, arguments: str) -> str:
    """Run one tool call; the result is text for a `role: tool` message."""
    if name not in TOOL_NAMES:
        return f"error: unknown tool {name!r}; the tools are {', '.join(sorted(TOOL_NAMES))}"
    if len(arguments) > MAX_ARGUMENT_CHARS:
        return "error: arguments too long"
    try:
        args = msgspec.json.decode(arguments or "{}")
    except msgspec.DecodeError:
        return "error: arguments are not valid JSON"
    if not isinstance(args, dict):
        return "error: arguments must be a JSON object"
    try:
        return _dispatch(toolbox, ctx, name, args)
    except _ArgError as e:
        return f"error: {e}"


def _dispatch(toolbox: Toolbox, ctx: TaskContext, name: str, args: dict[str, Any]) -> str:
    sid = ctx.session_id
    if name == "calculate":
        return toolbox.calculate(_str(args, "expression") or "")
    if name == "current_time":
        return toolbox.current_time(_str(args, "timezone", required=False), ctx.timezone)
    if name == "date_info":
        return toolbox.date_info(_str(args, "date") or "", ctx.timezone)
    if name == "convert_units":
        return toolbox.convert_units(_number(args, "value"), _str(args, "from_unit") or "", _str(args, "to_unit") or "")
    if name == "set_timer":
        seconds = _number(args, "seconds")
        return toolbox.set_timer(sid, float(seconds), _str(args, "reminder", required=False))
    if name == "save_note":
        return toolbox.save_note(sid, _str(args, "note") or "")
    assert name == "list_notes"
    return toolbox.list_notes(sid)
