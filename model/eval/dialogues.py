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

    python -m model.eval.dialogues --dialogues data/synth/heldout --root data/fdbench-heldout
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

PAUSE_TAIL_S = 0.5
TURN_TAIL_S = 4.0
INTERRUPT_TAIL_S = 3.0
STOP_TAIL_S = 1.0
SR = 16000


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
        user = user[: min(len(user), round(end * sr))]
        out = Path(root) / task / wav.stem
        out.mkdir(parents=True, exist_ok=True)
        sf.write(str(out / "input.wav"), np.asarray(user), sr, subtype="PCM_16")
        for name, content in files.items():
            (out / name).write_text(json.dumps(content, indent=1) + "\n")
        counts[task] += 1
    return counts


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
