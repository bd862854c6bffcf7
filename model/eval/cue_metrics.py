"""Scores for speaking on a cue: rep counting, visual alerts, CueSpeak, visual questions.

Pure functions over plain data (timed words, speech onsets, expected events), like
model/eval/metrics.py; model/eval/scoring.py reads the files. The rules (issue 10):

- Rep counting: a rep completed at t is counted right when a number word (or digits) with its
  count starts in [t, t + 0.6 s]; each spoken number counts at most one rep. Every spoken
  number from the request on that counted no rep is a false count (a late right count is a
  miss *and* a false count: said 2 s late it is noise to the user). Rate per minute of clip
  after the request.
- Visual alerts: an event at t is hit when a speech onset (the start of an output speech
  segment: what is said does not matter, that it is said then does) lies in [t, t + 1.0 s];
  latency = onset - t. Onsets from the request + 1.5 s on (the acknowledgement "okay, I'll
  watch" is free) that lie in no event's window are false alerts, per minute of that span.
- CueSpeak: a cue word ending at t is hit when the expected response word(s) start in
  [t, t + 1.0 s]. Words from the rule + 1.5 s on that answered no cue are false speech,
  counted as utterances: a run of such words with no gap over 0.5 s and no hit inside is one
  (so "eight" -> "eight uh eight" costs one, not two or three), per minute of that span.
- Visual question: FD-bench smooth turn-taking (TOR, latency from the question's end), plus
  whether the first colour word of the reply is the colour on screen.

Pooled over clips (sums of hits and false events over sums of events and minutes), so a
short clip weighs no more than its events.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from model.data.numbers import NUMBERS, TENS, parse_number
from model.eval.metrics import TaskSummary, TurnScore, smooth_turn_taking
from model.eval.words import Word

REP_WINDOW_S = 0.6
ALERT_WINDOW_S = 1.0
CUE_WINDOW_S = 1.0
ACK_WINDOW_S = 1.5
UTTERANCE_GAP_S = 0.5
COMPOUND_GAP_S = 0.3  # "twenty" "one" closer than this is one number

_TENS_VALUES = frozenset(NUMBERS[w] for w in TENS if w)  # 20, 30, .. 90: may take a unit word after
COLOURS = frozenset(
    [
        "red",
        "green",
        "blue",
        "yellow",
        "orange",
        "purple",
        "pink",
        "white",
        "black",
        "grey",
        "gray",
        "brown",
        "cyan",
        "magenta",
        "violet",
        "turquoise",
        "teal",
        "gold",
        "silver",
        "beige",
        "navy",
        "maroon",
        "lime",
        "indigo",
    ]
)
_PUNCT = re.compile(r"[^a-z0-9'\-]")


def normalize(text: str) -> str:
    """Lowercase, punctuation stripped ("Three," -> "three"); hyphens and apostrophes kept."""
    return _PUNCT.sub("", text.lower()).strip("-'")


@dataclass(frozen=True)
class Spoken:
    """A number said aloud: its value and the words it spans (one, or "twenty" + "one")."""

    value: int
    start: float
    end: float
    n_words: int = 1


def spoken_numbers(words: Sequence[Word]) -> list[Spoken]:
    """The numbers in `words`, in order; a tens word directly followed by a unit is one number."""
    out: list[Spoken] = []
    i = 0
    while i < len(words):
        v = parse_number(words[i].text)
        if v is None:
            i += 1
            continue
        if v in _TENS_VALUES and i + 1 < len(words):
            u = parse_number(words[i + 1].text)
            if u is not None and 0 < u < 10 and words[i + 1].start - words[i].end <= COMPOUND_GAP_S:
                out.append(Spoken(v + u, words[i].start, words[i + 1].end, 2))
                i += 2
                continue
        out.append(Spoken(v, words[i].start, words[i].end))
        i += 1
    return out


def _minutes(start: float, end: float) -> float:
    return max(end - start, 0.0) / 60.0


def _rate(n: int, minutes: float) -> float | None:
    return n / minutes if minutes > 0 else None


# -- rep counting ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Rep:
    time: float  # completion
    count: int


@dataclass(frozen=True)
class RepScore:
    n_reps: int
    counted: int  # reps counted with the right number in the window
    false_counts: int
    minutes: float  # clip span after the request
    latencies: list[float] = field(default_factory=list)  # per counted rep: number start - completion

    @property
    def accuracy(self) -> float | None:
        return self.counted / self.n_reps if self.n_reps else None


def rep_counting(
    words: Sequence[Word], reps: Sequence[Rep], request: float, end: float, window: float = REP_WINDOW_S
) -> RepScore:
    nums = [n for n in spoken_numbers(words) if n.start >= request]
    used = [False] * len(nums)
    lat = []
    for rep in sorted(reps, key=lambda r: r.time):
        for i, n in enumerate(nums):
            if not used[i] and n.value == rep.count and rep.time <= n.start <= rep.time + window:
                used[i] = True
                lat.append(n.start - rep.time)
                break
    return RepScore(len(reps), len(lat), used.count(False), _minutes(request, end), lat)


def _pooled(
    task: str,
    kind: str,
    scores: Sequence[RepScore | AlertScore | CueScore],
    counts: tuple[int, int, int],  # (targets, hits, false) summed over clips
    keys: tuple[str, str, str | None],  # (hit-rate key, false-per-minute key, latency-p50 key or None)
) -> TaskSummary:
    """Hits over targets and false outputs per minute, pooled over clips (one shape for every
    speak-on-a-cue benchmark)."""
    lat = [x for s in scores for x in s.latencies]
    out = TaskSummary(task, kind, len(scores), latencies=lat)
    n, hits, false = counts
    rate_key, false_key, p50_key = keys
    out.metrics[rate_key] = hits / n if n else None
    if p50_key is not None:
        out.metrics[p50_key] = p50(lat)
    out.metrics[false_key] = _rate(false, sum(s.minutes for s in scores))
    return out


def summarize_reps(task: str, scores: Sequence[RepScore]) -> TaskSummary:
    counts = (sum(s.n_reps for s in scores), sum(s.counted for s in scores), sum(s.false_counts for s in scores))
    return _pooled(task, "rep_counting", scores, counts, ("rep_accuracy", "false_counts_per_min", None))


# -- visual alerts --------------------------------------------------------------------------
@dataclass(frozen=True)
class AlertScore:
    n_events: int
    hits: int
    latencies: list[float]
    false_alerts: int
    minutes: float  # clip span after the acknowledgement window

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.n_events if self.n_events else None


def visual_alerts(
    onsets: Sequence[float],
    events: Sequence[float],
    request: float,
    end: float,
    window: float = ALERT_WINDOW_S,
    ack: float = ACK_WINDOW_S,
) -> AlertScore:
    pool = sorted(onsets)
    used = [False] * len(pool)
    lat = []
    for t in sorted(events):
        for i, o in enumerate(pool):
            if not used[i] and t <= o <= t + window:
                used[i] = True
                lat.append(o - t)
                break
    free_until = request + ack
    false = sum(1 for o in pool if o >= free_until and not any(t <= o <= t + window for t in events))
    return AlertScore(len(events), len(lat), lat, false, _minutes(free_until, end))


def p50(xs: Sequence[float]) -> float | None:
    return float(np.median(xs)) if len(xs) else None


def summarize_alerts(task: str, scores: Sequence[AlertScore]) -> TaskSummary:
    counts = (sum(s.n_events for s in scores), sum(s.hits for s in scores), sum(s.false_alerts for s in scores))
    keys = ("alert_hit_rate", "false_alerts_per_min", "alert_latency_p50_s")
    return _pooled(task, "visual_alert", scores, counts, keys)


# -- CueSpeak -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cue:
    time: float  # end of the cue word
    response: str  # what the assistant should say


@dataclass(frozen=True)
class CueScore:
    n_cues: int
    hits: int
    latencies: list[float]
    false_utterances: int
    false_words: int
    minutes: float

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.n_cues if self.n_cues else None


def _same(said: str, expected: str) -> bool:
    a, b = normalize(said), normalize(expected)
    if a == b:
        return True
    na, nb = parse_number(a), parse_number(b)
    return na is not None and na == nb


def cue_speak(
    words: Sequence[Word],
    cues: Sequence[Cue],
    rule: float,
    end: float,
    window: float = CUE_WINDOW_S,
    ack: float = ACK_WINDOW_S,
) -> CueScore:
    used = [False] * len(words)
    lat = []
    for cue in sorted(cues, key=lambda c: c.time):
        want = cue.response.split()
        if not want:
            continue
        for i in range(len(words) - len(want) + 1):
            span = range(i, i + len(want))
            if (
                cue.time <= words[i].start <= cue.time + window
                and not any(used[j] for j in span)
                and all(_same(words[j].text, w) for j, w in zip(span, want, strict=True))
            ):
                for j in span:
                    used[j] = True
                lat.append(words[i].start - cue.time)
                break
    free_until = rule + ack
    false_words = 0
    runs = 0
    prev_end = -math.inf
    in_run = False
    for w, u in zip(words, used, strict=True):
        if u:
            in_run = False  # a hit ends a run of false words
            continue
        if w.start < free_until:
            continue
        false_words += 1
        if not in_run or w.start - prev_end > UTTERANCE_GAP_S:
            runs += 1
        in_run, prev_end = True, w.end
    return CueScore(len(cues), len(lat), lat, runs, false_words, _minutes(free_until, end))


def summarize_cues(task: str, scores: Sequence[CueScore]) -> TaskSummary:
    counts = (sum(s.n_cues for s in scores), sum(s.hits for s in scores), sum(s.false_utterances for s in scores))
    return _pooled(task, "cue_speak", scores, counts, ("cue_hit_rate", "false_speech_per_min", "cue_latency_p50_s"))


# -- visual question ------------------------------------------------------------------------
@dataclass(frozen=True)
class QuestionScore:
    turn: TurnScore
    correct: int  # the first colour word of the reply is the answer
    said: str | None  # that colour word (None: no colour said)


def visual_question(words: Sequence[Word], user_end: float, answer: str) -> QuestionScore:
    turn = smooth_turn_taking(words, user_end)
    want = normalize(answer)
    said = next(
        (normalize(w.text) for w in words if w.start >= user_end and normalize(w.text) in COLOURS | {want}), None
    )
    return QuestionScore(turn, int(said == want), said)


def summarize_questions(task: str, scores: Sequence[QuestionScore]) -> TaskSummary:
    lat = [s.turn.latency for s in scores if s.turn.tor == 1 and s.turn.latency is not None]
    out = TaskSummary(task, "visual_question", len(scores), latencies=lat)
    out.metrics["tor"] = sum(s.turn.tor for s in scores) / len(scores) if scores else None
    out.metrics["latency_s"] = sum(lat) / len(lat) if lat else None
    out.metrics["answer_accuracy"] = sum(s.correct for s in scores) / len(scores) if scores else None
    return out
