"""Synthetic dialogues (model/data layout) -> clips in the Full-Duplex-Bench layout.

The held-out dialogues carry everything a task file needs in their events json; the user
channel becomes `input.wav`. Each clip is cropped so the metric measures the behaviour the
task is about (FD-bench scores take-over over the whole output):

- synthetic_pause_handling: the user's utterance with its mid-utterance pause, cropped
  `PAUSE_TAIL_S` after the user finishes — a reply after the end is not a take-over.
- synthetic_smooth_turn_taking: the first question, then `TURN_TAIL_S` of silence to answer in.
- synthetic_user_interruption: question, (the model answers), the interruption, then
  `INTERRUPT_TAIL_S` for the model to stop and respond.
- timespeak: the request and the whole timed stretch up to the user's "stop" plus a second.

- synthetic_backchannel: FD-bench's backchannel task, from the `monologue` scenario: the
  user's multi-sentence telling up to its last sentence plus `STOP_TAIL_S` (input.wav alone,
  with our `backchannel.json` of the user's pauses, where a listener's "mhm" belongs). The
  generator's `backchannel` scenario is the reverse (the user backchannels while the model
  talks) and is not exported.

Speaking on a cue (issue 10; json formats in model/eval/layout.py, scores in cue_metrics.py).
Video scenarios also write `frames/` (one PNG per micro-turn, from `<id>.frames.npz`):
- rep_counting: the request, the reps (full, partial, paused), the "stop" and any reps the user
  does after it (not to be counted), plus `STOP_TAIL_S`.
- visual_alert: the request and every visual event and distractor, plus `ALERT_TAIL_S`.
- visual_question: the first question at a moment, then `TURN_TAIL_S` to answer in (question.json
  and FD-bench's turn_taking.json).
- cue_speak (audio only): the rule and the talk with its cues, plus `CUE_TAIL_S` after the talk.

Each clip also gets `output_reference.wav/.json`: the generated assistant cropped the same
way, scored by `microturn eval` as the `reference` system (the ceiling of the scoring).

    python -m model.eval.dialogues --dialogues data/synth/heldout --root data/fdbench-heldout
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

from model.eval.frames import write_frames
from model.eval.layout import REFERENCE_STEM, SAMPLE_RATE, Clip, resample, write_output
from model.eval.words import Word

PAUSE_TAIL_S = 0.5
TURN_TAIL_S = 4.0
INTERRUPT_TAIL_S = 3.0
STOP_TAIL_S = 1.0
ALERT_TAIL_S = 1.5  # past the 1.0 s hit window of the last event
CUE_TAIL_S = 1.5
SR = 16000
TURN_S = 0.2
VIDEO_TASKS = ("rep_counting", "visual_alert", "visual_question")


def export_fdbench(dialogues: Path, root: Path, max_per_task: int | None = None) -> Counter[str]:
    """Write FD-bench task clips from every dialogue that maps to a task; returns counts per task."""
    counts: Counter[str] = Counter()
    wavs = sorted(Path(dialogues).glob("*.wav"))
    if not wavs:
        raise FileNotFoundError(f"{dialogues}: no dialogue .wav files")
    for wav in wavs:
        meta = json.loads(wav.with_name(wav.stem + ".events.json").read_text())
        events = meta.get("events", [])
        first: dict[str, dict] = {}
        for ev in events:
            first.setdefault(ev["type"], ev)
        scenario = meta.get("scenario", "")
        task, end, files = _task_for(scenario, first, events)
        if task is None or (max_per_task is not None and counts[task] >= max_per_task):
            continue
        audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
        user = audio[:, 1]  # channel 1 is the user (model/data layout)
        user = user[: len(user) if math.isinf(end) else min(len(user), round(end * sr))]
        out = Path(root) / task / wav.stem
        out.mkdir(parents=True, exist_ok=True)
        sf.write(str(out / "input.wav"), np.asarray(user), sr, subtype="PCM_16")
        for name, content in files.items():
            (out / name).write_text(json.dumps(content, indent=1) + "\n")
        _write_reference(wav, meta, audio[: len(user), 0], sr, Clip(task, "", wav.stem, out))
        npz = wav.with_name(wav.stem + ".frames.npz")
        if task in VIDEO_TASKS and npz.is_file():
            with np.load(npz) as z:
                frames = z["frames"]
            write_frames(out, frames[: math.ceil(len(user) / sr / TURN_S - 1e-9)])
        counts[task] += 1
    return counts


def _write_reference(wav: Path, meta: dict, assistant: np.ndarray, sr: int, clip: Clip) -> None:
    """The generated assistant (channel 0, its aligned words) as the `reference` system: what a
    model that learned the data exactly would say, so its scores are the ceiling of the scoring
    itself (ASR and VAD included)."""
    speaker = meta.get("speakers", {}).get("assistant", "SPEAKER_MAIN")
    duration = len(assistant) / sr
    align = json.loads(wav.with_name(wav.stem + ".json").read_text()).get("alignments", [])
    words = [Word(t, float(a), min(float(b), duration)) for t, (a, b), spk in align if spk == speaker and a < duration]
    write_output(clip, resample(assistant, sr, SAMPLE_RATE), words, REFERENCE_STEM)


def _task_for(scenario: str, ev: dict[str, dict], events: list[dict]) -> tuple[str | None, float, dict[str, object]]:
    if scenario == "pause" and "pause" in ev and "user_end" in ev:
        p = ev["pause"]
        return (
            "synthetic_pause_handling",
            ev["user_end"]["time"] + PAUSE_TAIL_S,
            {"pause.json": [{"text": "[PAUSE]", "timestamp": [p["time"], p["end"]]}]},
        )
    if scenario in ("turn_taking", "refusal") and "user_end" in ev:
        t = ev["user_end"]["time"]
        return (
            "synthetic_smooth_turn_taking",
            t + TURN_TAIL_S,
            {"turn_taking.json": [{"text": "[TURN-TAKING]", "timestamp": [t, t + TURN_TAIL_S]}]},
        )
    if scenario == "interruption" and "interrupt" in ev:
        i = ev["interrupt"]
        context = ev.get("user_end", {}).get("text", "")
        return (
            "synthetic_user_interruption",
            i["end"] + INTERRUPT_TAIL_S,
            {"interrupt.json": [{"context": context, "interrupt": i["text"], "timestamp": [i["time"], i["end"]]}]},
        )
    if scenario == "timed_speech" and "timespeak" in ev and "stop" in ev:
        t = ev["timespeak"]
        spec = {k: t[k] for k in ("request", "period_s", "start", "stop", "expected_onsets")}
        return "timespeak", ev["stop"]["end"] + STOP_TAIL_S, {"timespeak.json": spec}
    if scenario == "monologue" and "monologue" in ev:
        pauses = [[e["time"], e["end"]] for e in events if e["type"] == "monologue_pause"]
        return "synthetic_backchannel", ev["monologue"]["end"] + STOP_TAIL_S, {"backchannel.json": {"times": pauses}}
    return _cue_task_for(scenario, ev, events)


def _end_of(e: dict) -> float:
    """Where a request's acknowledgement window starts: its end when the event carries one."""
    return float(e.get("end", e["time"]))


def _cue_task_for(
    scenario: str, ev: dict[str, dict], events: list[dict]
) -> tuple[str | None, float, dict[str, object]]:
    def of(kind: str) -> list[dict]:
        return [e for e in events if e["type"] == kind]

    if scenario == "rep_counting" and "rep_request" in ev:
        reps = [{"time": e["time"], "count": e["count"], "text": e.get("text", "")} for e in of("rep")]
        stop = ev.get("stop")
        uncounted = [e["time"] for e in of("uncounted_rep")]  # reps after "stop": counting them is false
        spec = {
            "request": _end_of(ev["rep_request"]),
            "reps": reps,
            "partials": [e["time"] for e in of("partial_rep")],
            "uncounted": uncounted,
            "stop": None if stop is None else stop["time"],
        }
        end = max([stop["end"], *uncounted]) + STOP_TAIL_S if stop else math.inf
        return "rep_counting", end, {"reps.json": spec}
    if scenario == "visual_alert" and "alert_request" in ev:
        alerts = [{"time": e["time"], "text": e.get("text", "")} for e in of("visual_event")]
        distractors = [e["time"] for e in of("distractor")]
        spec = {"request": _end_of(ev["alert_request"]), "events": alerts, "distractors": distractors}
        last = max([a["time"] for a in alerts] + distractors, default=None)
        return "visual_alert", math.inf if last is None else last + ALERT_TAIL_S, {"alerts.json": spec}
    if scenario == "visual_question" and "user_end" in ev and "visual_answer" in ev:
        q = ev["user_end"]
        t = q["time"]
        files: dict[str, object] = {
            "question.json": {"question": q.get("text", ""), "user_end": t, "answer": ev["visual_answer"]["text"]},
            "turn_taking.json": [{"text": "[TURN-TAKING]", "timestamp": [t, t + TURN_TAIL_S]}],
        }
        return "visual_question", t + TURN_TAIL_S, files
    if scenario == "cue_speak" and "cue_rule" in ev:
        cues = [{"time": e["time"], "text": e.get("text", ""), "response": e["response"]} for e in of("cue")]
        spec = {"rule": ev["cue_rule"].get("text", ""), "rule_time": _end_of(ev["cue_rule"]), "cues": cues}
        talk = ev.get("cue_talk", {})  # the user's talk after the rule; speech after it is false too
        end = max([c["time"] for c in cues] + [talk.get("end", 0.0)], default=math.inf) + CUE_TAIL_S
        return "cue_speak", end, {"cues.json": spec}
    return None, 0.0, {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dialogues", required=True, type=Path)
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--max-per-task", type=int)
    args = ap.parse_args(argv)
    try:
        counts = export_fdbench(args.dialogues, args.root, args.max_per_task)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for task, n in sorted(counts.items()):
        print(f"{task}: {n} clips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
