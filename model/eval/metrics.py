"""FD-bench v1 metrics (exactly as ../shared/fdbench.md states them) and our TimeSpeak score.

Pure functions over plain data (words, speech segments, timestamps) so each formula is tested
on hand-built clips with known answers; reading files is model/eval/scoring.py's job.

Take-over (TOR) of a clip, as FD-bench computes it on the first and last output.json chunk:
0 with no words; 1 if last end - first start >= 1 s; 1 if shorter but more than 3 words; else 0.

Where fdbench.md and the upstream scripts differ we follow fdbench.md and say so:
- user interruption: fdbench.md scores the words that start at or after the interruption
  *start*; upstream transcribes only the audio after the interruption *end*.
- backchannel: fdbench.md's rule (any take-over segment makes the clip TOR 1; only the
  non-take-over segments are backchannels); upstream keeps the verdict of the last segment
  and counts every segment up to 3 s as a backchannel.
The JSD histogram is upstream's: 200 ms bins over the clip, a backchannel [s, e] adds 1 to
every bin from int(s/0.2) to int(e/0.2), epsilon 1e-10, normalized; the ground truth is
resampled to the same number of bins by linear interpolation; scipy's `jensenshannon`
(natural log) gives the distance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import interp1d
from scipy.spatial.distance import jensenshannon

from model.eval.words import Word

Segment = tuple[float, float]

TURN_MIN_SPAN_S = 1.0  # a span this long is a take-over
TURN_MAX_WORDS = 3  # a shorter span with more words than this is a take-over
BACKCHANNEL_MAX_S = 3.0  # FD-bench's "formally speaking" threshold
BACKCHANNEL_MAX_WORDS = 2  # a segment under 1 s with more words than this is a take-over
BIN_S = 0.2
EPSILON = 1e-10
TIMESPEAK_TOLERANCE_S = 0.5


# -- take-over ------------------------------------------------------------------------------
def take_over(words: Sequence[Word]) -> int:
    """FD-bench TOR of one clip's words (in output.json order)."""
    if not words:
        return 0
    span = words[-1].end - words[0].start
    if span >= TURN_MIN_SPAN_S - 1e-9:
        return 1
    return int(len(words) > TURN_MAX_WORDS)


@dataclass(frozen=True)
class TurnScore:
    """One clip of pause handling, smooth turn-taking or user interruption."""

    tor: int
    latency: float | None = None  # clamped at 0; None unless tor == 1 (and a reference time exists)
    reply: str = ""  # the words scored (FD-bench rates them with an LLM judge; we report them)
    stop_latency: float | None = None  # user interruption only, see `stop_latency`
    upstream_latency: float | None = None  # user interruption only, see `user_interruption`


def pause_handling(words: Sequence[Word]) -> TurnScore:
    """TOR over the whole output (a model that takes over during a pause scores 1: lower is better)."""
    return TurnScore(tor=take_over(words), reply=_text(words))


def smooth_turn_taking(words: Sequence[Word], user_end: float) -> TurnScore:
    """TOR over the whole output; latency = first word start - `turn_taking.json[0].timestamp[0]`."""
    tor = take_over(words)
    latency = max(0.0, words[0].start - user_end) if tor else None
    return TurnScore(tor=tor, latency=latency, reply=_text(words))


def user_interruption(
    words: Sequence[Word], interrupt_start: float, interrupt_end: float, segments: Sequence[Segment] = ()
) -> TurnScore:
    """TOR and latency on the words starting at or after the interruption start; latency from
    the interruption end (`interrupt.json[0].timestamp[1]`), clamped at 0. `segments` (output
    speech) adds the stop latency.

    Also, for comparison, `upstream_latency`: upstream transcribes only the output after the
    interruption *end*, so a word still being said when the user barges in (which the
    fdbench.md rule scores as latency 0) does not count there; None unless those words are a
    take-over."""
    after = [w for w in words if w.start >= interrupt_start]
    tor = take_over(after)
    latency = max(0.0, after[0].start - interrupt_end) if tor else None
    after_end = [w for w in words if w.start >= interrupt_end]
    upstream = after_end[0].start - interrupt_end if take_over(after_end) else None
    return TurnScore(
        tor=tor,
        latency=latency,
        reply=_text(after),
        stop_latency=stop_latency(segments, interrupt_start),
        upstream_latency=upstream,
    )


def stop_latency(segments: Sequence[Segment], interrupt_start: float) -> float | None:
    """Our addition: how long the model kept talking after the user started interrupting =
    end of the output speech segment that is active at `interrupt_start`, minus that time.
    None when the model was silent at that moment (nothing to stop)."""
    for s, e in segments:
        if s <= interrupt_start < e:
            return e - interrupt_start
    return None


def _text(words: Sequence[Word]) -> str:
    return " ".join(w.text for w in words)


# -- backchannel ----------------------------------------------------------------------------
def words_in_segment(words: Sequence[Word], seg: Segment) -> int:
    """Words overlapping a segment, by upstream's rule: inside it, or crossing its end or start."""
    s, e = seg
    n = 0
    for w in words:
        if (w.start >= s and w.end <= e) or (w.start <= e and w.end > e) or (w.start <= s and w.end > s):
            n += 1
    return n


def is_take_over_segment(duration: float, n_words: int) -> bool:
    """fdbench.md: >= 1 s, or > 3 s, or (under 1 s) more than 2 words."""
    return duration >= TURN_MIN_SPAN_S or duration > BACKCHANNEL_MAX_S or n_words > BACKCHANNEL_MAX_WORDS


@dataclass(frozen=True)
class BackchannelScore:
    tor: int
    backchannels: list[Segment]
    take_overs: list[Segment]
    per_second: float
    jsd: float | None  # None: backchannels but no ground truth to compare with

    @property
    def n_backchannels(self) -> int:
        return len(self.backchannels)


def backchannel(
    segments: Sequence[Segment],
    words: Sequence[Word],
    duration: float,
    gt: np.ndarray | None = None,
) -> BackchannelScore:
    """Classify output speech segments; `gt` is the ground-truth distribution over 200 ms bins
    (see `gt_distribution_from_times`) or None when the clip has none."""
    bcs: list[Segment] = []
    takes: list[Segment] = []
    for seg in segments:
        (takes if is_take_over_segment(seg[1] - seg[0], words_in_segment(words, seg)) else bcs).append(seg)
    jsd: float | None
    if not bcs:
        jsd = 1.0
    elif gt is None:
        jsd = None
    else:
        jsd = js_distance(histogram(bcs, duration), gt)
    return BackchannelScore(
        tor=int(bool(takes)), backchannels=bcs, take_overs=takes, per_second=len(bcs) / duration, jsd=jsd
    )


def histogram(intervals: Sequence[Segment], duration: float, bin_s: float = BIN_S) -> np.ndarray:
    """Upstream's normalized 200 ms-bin occupancy histogram of [start, end] intervals."""
    bins = np.zeros(int(duration / bin_s) + 1)
    for s, e in intervals:
        a, b = int(s / bin_s), int(e / bin_s)
        bins[max(a, 0) : min(b, len(bins) - 1) + 1] += 1
    bins = bins + EPSILON
    return bins / bins.sum()


def gt_distribution_from_times(times: Sequence[float | Sequence[float]], duration: float) -> np.ndarray:
    """Ground truth from backchannel times: a time t marks its bin, a [start, end] pair every
    bin it covers (the same histogram as the prediction)."""
    intervals: list[Segment] = []
    for t in times:
        if isinstance(t, int | float):
            intervals.append((float(t), float(t)))
        else:
            intervals.append((float(t[0]), float(t[1])))
    return histogram(intervals, duration)


def js_distance(pred: np.ndarray, gt: np.ndarray) -> float:
    """Jensen-Shannon distance after resampling `gt` to `pred`'s bins (upstream's interp1d)."""
    gt = np.asarray(gt, dtype=np.float64)
    if len(gt) != len(pred):
        if len(gt) == 1:
            gt = np.repeat(gt, len(pred))
        else:
            f = interp1d(np.linspace(0, 1, len(gt)), gt, kind="linear", fill_value="extrapolate")
            gt = f(np.linspace(0, 1, len(pred)))
    gt = np.clip(gt, 0.0, None)
    return float(jensenshannon(pred, gt))


# -- TimeSpeak (our extension) --------------------------------------------------------------
@dataclass(frozen=True)
class TimeSpeakScore:
    score: float | None  # None: the clip expected no onsets
    matched: int
    spurious: int
    n_expected: int


def speech_onsets(segments: Sequence[Segment]) -> list[float]:
    return [s for s, _ in segments]


def timespeak(
    onsets: Sequence[float],
    expected: Sequence[float],
    tolerance: float = TIMESPEAK_TOLERANCE_S,
    not_before: float = -math.inf,
) -> TimeSpeakScore:
    """(expected onsets matched by a model onset within ±tolerance - model onsets matching
    none) / expected onsets, floored at 0. Matching is one-to-one, each expected onset taking
    the nearest unused model onset. Onsets before `not_before` (the scorer passes the request
    window start - tolerance, so acknowledging the request is free) are ignored."""
    if not expected:
        return TimeSpeakScore(None, 0, 0, 0)
    pool = sorted(o for o in onsets if o >= not_before)
    used = [False] * len(pool)
    matched = 0
    for t in sorted(expected):
        best, best_d = None, tolerance + 1e-9
        for i, o in enumerate(pool):
            d = abs(o - t)
            if not used[i] and d <= best_d:
                best, best_d = i, d
        if best is not None:
            used[best] = True
            matched += 1
    spurious = used.count(False)
    score = max(0.0, (matched - spurious) / len(expected))
    return TimeSpeakScore(score, matched, spurious, len(expected))


# -- aggregation ----------------------------------------------------------------------------
def mean(xs: Sequence[float | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


@dataclass
class TaskSummary:
    """One task directory scored for one system. `metrics` holds the rows of the report."""

    task: str
    kind: str
    n_clips: int
    metrics: dict[str, float | None] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # per clip (TOR = 1), for the plot
    stop_latencies: list[float] = field(default_factory=list)


def summarize_turns(task: str, kind: str, scores: Sequence[TurnScore]) -> TaskSummary:
    """Mean TOR; latency averaged over clips with TOR = 1 (and stop latency where defined)."""
    lat = [s.latency for s in scores if s.tor == 1 and s.latency is not None]
    out = TaskSummary(task, kind, len(scores), latencies=lat)
    out.metrics["tor"] = mean([s.tor for s in scores])
    if kind != "pause_handling":
        out.metrics["latency_s"] = mean(lat)
    if kind == "user_interruption":
        stops = [s.stop_latency for s in scores if s.stop_latency is not None]
        out.stop_latencies = stops
        out.metrics["stop_latency_s"] = mean(stops)
        out.metrics["latency_upstream_s"] = mean([s.upstream_latency for s in scores])
    return out


def summarize_backchannel(task: str, scores: Sequence[BackchannelScore]) -> TaskSummary:
    out = TaskSummary(task, "backchannel", len(scores))
    out.metrics["tor"] = mean([s.tor for s in scores])
    out.metrics["backchannels_per_s"] = mean([s.per_second for s in scores])
    out.metrics["jsd"] = mean([s.jsd for s in scores])
    return out


def summarize_timespeak(task: str, scores: Sequence[TimeSpeakScore]) -> TaskSummary:
    out = TaskSummary(task, "timespeak", len(scores))
    out.metrics["score"] = mean([s.score for s in scores])
    return out
