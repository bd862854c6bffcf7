"""The embedded tools agent: no model, phrase rules over the caller's last message.

The ask arrives as a caption of speech ("what is twelve times seven") or typed text. Number
words become digits first; then the rules below are tried in order and the first that
matches answers — notes, timers, time and dates, unit conversion, arithmetic — and anything
else gets a short, polite refusal that says what the agent can do. Earlier user messages
matter for notes: "remember that ..." said to an earlier task of the call (on any agent
process) is read back from the window.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from fractions import Fraction

from agents.backend import TaskContext
from agents.tools import units
from agents.tools.notes import extract_note
from agents.tools.numbers import parse_number, words_to_digits
from agents.tools.timers import parse_duration
from agents.tools.toolbox import Toolbox

REFUSAL = (
    "Sorry, I can't help with that one. I can do exact arithmetic, tell the time and date "
    "anywhere, count days to a date, convert units, set timers and reminders, and remember "
    "notes for this call."
)
MAX_ASK_CHARS = 1000

_F = re.IGNORECASE

# Politeness and filler in front of the actual request.
_LEAD = re.compile(
    r"^(?:(?:hey|hi|ok(?:ay)?|so|um+|uh+|well|please|and|now)[,\s]+)*"
    r"(?:(?:can|could|would|will) you(?: please)? |please |i(?:'d| would) like (?:you )?to know |"
    r"i want to know |do you know |tell me |quickly )*",
    _F,
)

_NOTES_LIST = re.compile(
    r"\b(?:what (?:did|have|do) i (?:ask|asked|tell|told|want|wanted) you to (?:remember|note|keep)"
    r"|what do you remember|what have you (?:remembered|noted)"
    r"|(?:read|list|show|tell me|what are|what's in|recall)(?: back)? (?:all )?(?:my|the) notes"
    r"|^(?:my )?notes\??$|remind me what i (?:told|asked) you)",
    _F,
)
_NOTES_CLEAR = re.compile(
    r"\b(?:forget|clear|delete|erase) (?:everything|all(?: my| the)? notes|my notes|the notes)", _F
)
_TIMER_CANCEL = re.compile(
    r"\b(?:cancel|stop|clear|delete) (?:all )?(?:the |my |of my )?(?:timers?|reminders?|alarms?)", _F
)
_TIMER = re.compile(r"\b(?:remind me|reminder|timer|alarm|countdown|wake me)\b", _F)
_REMIND_WHAT = re.compile(r"\bremind me\s+(?:to\s+|that\s+|about\s+|of\s+)?(?P<what>.*)$", _F)
_DURATION_PHRASE = re.compile(
    r"\b(?:in|after|for)?\s*(?:(?:\d+(?:\.\d+)?|an?|half an?|a half)\s*-?\s*"
    r"(?:seconds?|secs?|minutes?|mins?|hours?|hrs?)\b(?:\s+and\s+a\s+half)?(?:\s+and)?\s*)+",
    _F,
)
_TIME = re.compile(
    r"\b(?:what(?:'s| is)? (?:the )?(?:current |local )?time|what time|time is it|current time|time in)\b", _F
)
_PLACE = re.compile(
    r"\b(?:in|at|for)\s+(?P<place>[^\d?!,;]+?)\s*(?:right now|now|currently|today|at the moment)?[?.!]*$", _F
)
_DAYS_UNTIL = re.compile(
    r"\b(?:how many (?:more )?days|days (?:until|till|til|to|before|since|left|away|ago)"
    r"|how long (?:until|till|til|before|ago|since))\b",
    _F,
)
_WEEKDAY = re.compile(r"\b(?:what|which) day\b|\bday of the week\b|\bweekday\b", _F)
_TODAY = re.compile(r"\b(?:what(?:'s| is) (?:the )?date|today's date|the date today|what(?:'s| is) today)\b", _F)
_CALC_VERB = re.compile(r"^(?:calculate|compute|evaluate|work out|solve|what does|how much does)\b", _F)
_CALC_LEAD = re.compile(
    r"^(?:what(?:'s| is| are| does)|how much (?:is|are|does)|calculate|compute|evaluate|work out|solve|"
    r"what do you get (?:if|when) you (?:do |compute )?)\s+",
    _F,
)
_OPS: list[tuple[str, str]] = [
    (r"\bmultiplied by\b|\btimes\b|×", "*"),
    (r"\bdivided by\b|÷", "/"),
    (r"\bover\b", "/"),
    (r"\bplus\b|\badded to\b", "+"),
    (r"\bminus\b|\btake away\b|−|–", "-"),
    (r"\bnegative\b", "-"),
    (r"\b(?:raised )?to the power(?: of)?\b|\braised to\b", "**"),
    (r"\bsquared\b", "**2"),
    (r"\bcubed\b", "**3"),
    (r"\bmod(?:ulo)?\b", "%"),
    (r"(?:%|\bpercent)\s+of\b", "/100*"),
    (r"\bpercent\b", "/100"),
    (r"(?<=\d)\s*x\s*(?=\d)", "*"),
]
_ROOT = re.compile(r"\b(?:the )?(square|cube) root of\s+(\d+(?:\.\d+)?|\([^()]*\))", _F)
_MATHY = re.compile(r"^[\d\s.+\-*/%()^,]+$")
_CODEY = re.compile(r"[_\[\]{}'\"=;`\\]|\w\.\w|\w\(")


_ASK_START = re.compile(
    r"\b(?:what|what's|whats|how|which|when|remind|remember|note|set|start|convert|calculate|compute|"
    r"cancel|stop|forget|tell|can|could|is|are|do|does)\b",
    _F,
)


def _sentences(line: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", line.strip()) if s]


def _candidates(ask: str, limit: int = 8) -> list[str]:
    """Where the request may start in the caller's last words, longest first: the whole line,
    its last sentence, then from each question word on (captions run sentences together:
    "okay so um what's twelve times seven")."""
    out = [ask]
    sentences = _sentences(ask)
    last = sentences[-1] if sentences else ask
    if last != ask:
        out.append(last)
    out.extend(last[m.start() :] for m in _ASK_START.finditer(last) if m.start() > 0)
    return list(dict.fromkeys(out))[:limit]


def _strip_lead(text: str) -> str:
    return _LEAD.sub("", text.strip(), count=1).strip()


def spoken_expression(text: str) -> str:
    """ "12 times 7", "the square root of 16 plus 1" -> "12 * 7", "(16)**(1/2) + 1"."""
    expr = _ROOT.sub(lambda m: f"({m.group(2)})**(1/{2 if m.group(1).lower() == 'square' else 3})", text)
    for pattern, op in _OPS:
        expr = re.sub(pattern, f" {op} ", expr, flags=_F)
    expr = re.sub(r"\s*(?:=|equals?|is)\s*\??\s*$", "", expr.strip(), flags=_F)
    return re.sub(r"\s+", " ", expr.rstrip("?.! ")).strip()


def _speech_pieces(answer: str, min_chars: int = 40) -> list[str]:
    """A few deltas: sentences, a long sentence cut after commas into pieces of >= min_chars."""
    pieces: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", answer.strip()):
        piece = ""
        for part in re.split(r"(?<=,)\s+", sentence):
            piece = f"{piece} {part}" if piece else part
            if len(piece) >= min_chars:
                pieces.append(piece)
                piece = ""
        if piece:
            if pieces and len(piece) < min_chars // 2 and not pieces[-1].endswith((".", "!", "?")):
                pieces[-1] = f"{pieces[-1]} {piece}"
            else:
                pieces.append(piece)
    return [p + (" " if i < len(pieces) - 1 else "") for i, p in enumerate(pieces)]


class ToolsBackend:
    name = "tools"

    def __init__(self, toolbox: Toolbox) -> None:
        self.toolbox = toolbox

    async def run(self, ctx: TaskContext) -> AsyncIterator[str]:
        answer = self.answer(ctx)
        answer = answer[:1].upper() + answer[1:]
        for piece in _speech_pieces(answer):
            yield piece
            await asyncio.sleep(0)  # a delta per step: cancellation lands between pieces

    async def session_ended(self, session_id: str) -> None:
        await self.toolbox.session_ended(session_id)

    async def aclose(self) -> None:
        await self.toolbox.aclose()

    # --- the rules ----------------------------------------------------------------------------
    def answer(self, ctx: TaskContext) -> str:
        last = ctx.last_user_text().strip()
        if not last:
            return "I didn't catch a question. What should I work on?"
        ask = last.splitlines()[-1].strip()
        if len(ask) > MAX_ASK_CHARS:
            return "Sorry, that request is too long for me."
        # Everything the caller said before the ask, line by line: notes saved earlier live here.
        earlier = [ln for m in ctx.messages if m.role == "user" for ln in m.content.splitlines()][:-1]
        for candidate in _candidates(ask):
            answer = self._answer(ctx, candidate, earlier)
            if answer is not REFUSAL:
                return answer
        return REFUSAL

    def _answer(self, ctx: TaskContext, ask: str, earlier: list[str]) -> str:
        text = _strip_lead(ask)
        if not text:
            return REFUSAL
        tb = self.toolbox
        sid = ctx.session_id

        if _NOTES_LIST.search(text):
            from_window = [n for n in (extract_note(_strip_lead(s)) for ln in earlier for s in _sentences(ln)) if n]
            return tb.list_notes(sid, also=from_window)
        if _NOTES_CLEAR.search(text):
            return tb.clear_notes(sid)
        note = extract_note(text)
        if note is not None:
            return tb.save_note(sid, note)

        if _TIMER_CANCEL.search(text):
            return tb.cancel_timers(sid)
        if _TIMER.search(text):
            return self._timer(sid, text)

        if _TIME.search(text) and not _DAYS_UNTIL.search(text):
            m = _PLACE.search(text)
            place = m.group("place").strip() if m else None
            if place and place.lower() in ("the world", "here", "my time zone", "my timezone"):
                place = None
            return tb.current_time(place, ctx.timezone)
        if _DAYS_UNTIL.search(text):
            return tb.days_until(text, ctx.timezone)
        if _WEEKDAY.search(text) or _TODAY.search(text):
            if re.search(r"\b(?:it|today)\b\W*$", text, _F) or _TODAY.search(text):
                return tb.today(ctx.timezone)
            return tb.weekday(text, ctx.timezone)

        converted = self._units(text)
        if converted is not None:
            return converted
        calc = self._arithmetic(text)
        if calc is not None:
            return calc
        return REFUSAL

    def _timer(self, sid: str, text: str) -> str:
        digits = words_to_digits(text)
        seconds = parse_duration(digits)
        if seconds is None:
            if re.search(r"\b(?:at|on|tomorrow|tonight)\b", text, _F):
                return "Sorry, I can only set timers and reminders for a length of time, like in 10 minutes."
            return "For how long? Say something like: set a timer for 5 minutes."
        what: str | None = None
        m = _REMIND_WHAT.search(digits)
        if m:
            what = _DURATION_PHRASE.sub(" ", m.group("what"))
            what = re.sub(r"^\s*(?:to|that|about|of)\s+", "", what.strip(), flags=_F)
            what = re.sub(r"\s+", " ", what).strip(" .!?,") or None
            if what:
                what = re.sub(r"\bmy\b", "your", what, flags=_F)
        return self.toolbox.set_timer(sid, seconds, what)

    def _units(self, text: str) -> str | None:
        t = words_to_digits(text).strip().rstrip("?.!")
        t = re.sub(r"^(?:convert|change|turn|what(?:'s| is| are)|how (?:much|far) (?:is|are))\s+", "", t, flags=_F)
        m = re.match(r"^how many\s+(?P<dst>.+?)\s+(?:are |is |make |go )?(?:in|into|to|make up)\s+(?P<rest>.+)$", t, _F)
        if m:
            dst, rest = m.group("dst"), m.group("rest")
            rest = re.sub(r"\s+(?:are there|is there|make)$", "", rest, flags=_F)
            vm = re.match(r"^(?P<v>-?[\d.,/]+|an?|one)\s+(?P<src>.+)$", rest, _F)
            value_text, src = (vm.group("v"), vm.group("src")) if vm else ("1", rest)
            return self._convert(value_text, src, dst)
        vm = re.match(r"^(?P<v>-?\d[\d.,/]*|an?|one|minus \d[\d.,]*)\s*(?P<rest>.+)$", t, _F)
        if not vm:
            return None
        rest = vm.group("rest")
        # Try every " to / in / into / as " as the split: "5 inches in cm" splits at the second word.
        for sep in re.finditer(r"\s+(?:to|in|into|as|in terms of)\s+", rest, _F):
            src, dst = rest[: sep.start()], rest[sep.end() :]
            answer = self._convert(vm.group("v"), src, dst)
            if answer is not None:
                return answer
        return None

    def _convert(self, value_text: str, src: str, dst: str) -> str | None:
        value = parse_number(value_text)
        if value is None:
            return None
        try:
            units.find_unit(src)
            units.find_unit(dst)
        except units.UnitError:
            return None
        return self.toolbox.convert_units(Fraction(value), src, dst)

    def _arithmetic(self, text: str) -> str | None:
        explicit = bool(_CALC_VERB.match(text))
        body = _CALC_LEAD.sub("", text.strip(), count=1)
        spoken = words_to_digits(body).strip().rstrip("?.! ")
        expr = spoken_expression(spoken)
        if not re.search(r"\d", expr) and not explicit and not _CODEY.search(body):
            return None
        if not (_MATHY.match(expr) or explicit or _CODEY.search(body)):
            return None
        answer = self.toolbox.calculate(expr)
        if answer.startswith("Sorry"):
            return answer
        # Say it the way it was asked ("12 times 7 is 84."), not in operator symbols.
        return answer.replace(expr, spoken, 1) if answer.startswith(expr) else answer
