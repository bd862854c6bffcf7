"""Score one system's outputs on an FD-bench root: files in, `TaskSummary` per task out.

Scoring reads only what is on disk (`<stem>.wav`, `<stem>.json`, the task json), like
FD-bench's own scripts, so outputs produced by any runner (offline, live, another model's
inference script) are scored the same way. Speech segments for the backchannel, stop-latency
and TimeSpeak metrics come from `model/eval/vad.py` on the output audio at 16 kHz.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.eval import cue_metrics as C
from model.eval import metrics as M
from model.eval.layout import (
    GT_DISTRIBUTION_FILE,
    KIND_FILES,
    SAMPLE_RATE,
    Clip,
    LayoutError,
    discover,
    read_json,
    read_output,
)
from model.eval.vad import DEFAULT_VAD, Segment, VadConfig, speech_segments
from model.eval.words import Word

BACKCHANNEL_GT_FILE = "backchannel.json"


@dataclass
class SystemScores:
    name: str
    stem: str
    tasks: dict[str, M.TaskSummary] = field(default_factory=dict)
    clips: list[dict[str, Any]] = field(default_factory=list)  # one row per clip, for the json report


def _timestamp(meta: Any, clip: Clip, fname: str) -> list[float]:
    try:
        ts = [float(x) for x in meta[0]["timestamp"]]
        if len(ts) < 2:
            raise ValueError("timestamp needs [start, end]")
        return ts
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise LayoutError(f"{clip.path / fname}: expected [{{..., 'timestamp': [start, end]}}]: {e!r}") from e


def backchannel_gt(clip: Clip, duration: float) -> np.ndarray | None:
    """Ground-truth distribution for a backchannel clip, or None.

    Ours: `<clip>/backchannel.json` = {"times": [t | [start, end], ...]} (seconds at which a
    backchannel is appropriate) or {"distribution": [p per 200 ms bin]}. Upstream:
    `<task>/icc_gt_distribution.json` = {clip_id: [p per 200 ms bin]}."""
    own = clip.path / BACKCHANNEL_GT_FILE
    if own.is_file():
        obj = read_json(own)
        try:
            if "distribution" in obj:
                return np.asarray([float(p) for p in obj["distribution"]])
            return M.gt_distribution_from_times(obj["times"], duration)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise LayoutError(f"{own}: expected {{'times': [...]}} or {{'distribution': [...]}}: {e!r}") from e
    shared = clip.path.parent / GT_DISTRIBUTION_FILE
    if shared.is_file():
        table = read_json(shared)
        if isinstance(table, dict) and clip.clip_id in table:
            return np.asarray([float(p) for p in table[clip.clip_id]])
    return None


def score_clip(
    clip: Clip, stem: str, vad: VadConfig = DEFAULT_VAD, *, asr: bool = False, silero: bool = False
) -> tuple[Any, dict[str, Any]]:
    """(typed score, json row) of one clip, from `<stem>.wav`/`<stem>.json` on disk.

    FD-bench's way (`asr`, `silero`): words from ASR of `<stem>.wav` (model/eval/asr.py) instead
    of `<stem>.json`, speech segments from Silero VAD (model/eval/silero.py) instead of energy."""
    audio, words = read_output(clip, stem)
    if silero:
        from model.eval import silero as silero_vad

        segments = silero_vad.speech_segments(audio)
    else:
        segments = speech_segments(audio, vad)
    if asr:
        from model.eval import asr as asr_words

        words = asr_words.transcribe(audio, segments if silero else speech_segments(audio, vad))
    return score_output(clip, words, segments, len(audio) / SAMPLE_RATE)


def score_output(
    clip: Clip, words: Sequence[Word], segments: Sequence[Segment], duration: float
) -> tuple[Any, dict[str, Any]]:
    """(typed score, json row) of one clip from one system's words and output speech segments."""
    row: dict[str, Any] = {"task": clip.task, "clip": clip.clip_id, "words": len(words)}
    score: Any
    if clip.kind == "pause_handling":
        score = M.pause_handling(words)
    elif clip.kind == "smooth_turn_taking":
        user_end = _timestamp(clip.meta(), clip, "turn_taking.json")[0]
        score = M.smooth_turn_taking(words, user_end)
    elif clip.kind == "user_interruption":
        start, end = _timestamp(clip.meta(), clip, "interrupt.json")[:2]
        score = M.user_interruption(words, start, end, segments)
    elif clip.kind == "backchannel":
        score = M.backchannel(segments, words, duration, backchannel_gt(clip, duration))
        row.update(
            tor=score.tor,
            backchannels=score.n_backchannels,
            take_over_segments=len(score.take_overs),
            per_second=score.per_second,
            jsd=score.jsd,
        )
        return score, row
    elif clip.kind == "timespeak":
        meta = clip.meta()
        try:
            expected = [float(t) for t in meta["expected_onsets"]]
            start = float(meta.get("start", min(expected, default=0.0)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise LayoutError(f"{clip.path / 'timespeak.json'}: expected 'expected_onsets' and 'start': {e!r}") from e
        ts = M.timespeak(M.speech_onsets(segments), expected, not_before=start - M.TIMESPEAK_TOLERANCE_S)
        row.update(score=ts.score, matched=ts.matched, spurious=ts.spurious, expected=ts.n_expected)
        return ts, row
    elif clip.kind in CUE_KINDS:
        return score_cue_task(clip, words, segments, duration, row)
    else:  # pragma: no cover - discover() only yields known kinds
        raise LayoutError(f"{clip.path}: unknown task kind {clip.kind}")
    row.update(tor=score.tor, latency=score.latency, reply=score.reply)
    if clip.kind == "user_interruption":
        row["stop_latency"] = score.stop_latency
        row["latency_upstream"] = score.upstream_latency
    return score, row


CUE_KINDS = ("rep_counting", "visual_alert", "visual_question", "cue_speak")


def score_cue_task(
    clip: Clip, words: Sequence[Word], segments: Sequence[Segment], duration: float, row: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Speaking on a cue (model/eval/cue_metrics.py): rep counting, visual alerts and questions, CueSpeak."""
    meta = clip.meta()
    fname = KIND_FILES[clip.kind]
    score: Any
    try:
        if clip.kind == "rep_counting":
            reps = [C.Rep(float(r["time"]), int(r["count"])) for r in meta["reps"]]
            score = C.rep_counting(words, reps, float(meta["request"]), duration)
            row.update(reps=score.n_reps, counted=score.counted, false_counts=score.false_counts)
        elif clip.kind == "visual_alert":
            events = [float(e["time"]) for e in meta["events"]]
            score = C.visual_alerts(M.speech_onsets(segments), events, float(meta["request"]), duration)
            row.update(events=score.n_events, hits=score.hits, false_alerts=score.false_alerts)
            row["latencies"] = score.latencies
        elif clip.kind == "cue_speak":
            cues = [C.Cue(float(c["time"]), str(c["response"])) for c in meta["cues"]]
            score = C.cue_speak(words, cues, float(meta["rule_time"]), duration)
            row.update(
                cues=score.n_cues,
                hits=score.hits,
                false_utterances=score.false_utterances,
                false_words=score.false_words,
            )
        else:
            score = C.visual_question(words, float(meta["user_end"]), str(meta["answer"]))
            row.update(
                tor=score.turn.tor, latency=score.turn.latency, reply=score.turn.reply, correct=score.correct,
                said=score.said, answer=meta["answer"],
            )  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise LayoutError(f"{clip.path / fname}: not the {clip.kind} format (model/eval/layout.py): {e!r}") from e
    return score, row


def summarize(task: str, kind: str, scores: Sequence[Any]) -> M.TaskSummary:
    if kind == "rep_counting":
        return C.summarize_reps(task, scores)
    if kind == "visual_alert":
        return C.summarize_alerts(task, scores)
    if kind == "cue_speak":
        return C.summarize_cues(task, scores)
    if kind == "visual_question":
        return C.summarize_questions(task, scores)
    if kind == "backchannel":
        return M.summarize_backchannel(task, scores)
    if kind == "timespeak":
        return M.summarize_timespeak(task, scores)
    return M.summarize_turns(task, kind, scores)


def score_system(
    root: str | Path,
    stem: str,
    name: str,
    tasks: list[str] | None = None,
    vad: VadConfig = DEFAULT_VAD,
    *,
    asr: bool = False,
    silero: bool = False,
) -> SystemScores:
    """Every task of `root` scored from `<stem>.wav`/`<stem>.json` (see `score_clip`)."""
    out = SystemScores(name=name, stem=stem)
    by_task: dict[str, tuple[str, list[Any]]] = {}
    for clip in discover(root, tasks):
        score, row = score_clip(clip, stem, vad, asr=asr, silero=silero)
        by_task.setdefault(clip.task, (clip.kind, []))[1].append(score)
        out.clips.append(row)
    for task, (kind, scores) in by_task.items():
        out.tasks[task] = summarize(task, kind, scores)
    return out
