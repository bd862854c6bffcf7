"""The Full-Duplex-Bench v1 directory layout: finding clips, reading inputs, writing outputs.

    ROOT/<task>/<clip_id>/input.wav          user audio, mono (stereo is averaged), any rate
                          pause.json | turn_taking.json | interrupt.json | timespeak.json
                          backchannel.json    ours, optional: {"times": [t | [start, end], ...]}
                          reps.json | alerts.json | cues.json | question.json   ours (issue 10)
                          frames/000000.png ... or input.mp4   video: frame k during [0.2k, 0.2(k+1)) s
                          output.wav          the interaction model's reply (FD-bench's name)
                          output.json         its words (from the model's text stream, no ASR)
                          output_baseline.wav/.json   the harness baseline, same format

Other systems write `<stem>.wav` / `<stem>.json` beside FD-bench's `output.*`, so any number
of systems coexist in one root without copying inputs; `output` is always the model under test,
so FD-bench's own scripts run unchanged on our output.

A task directory's kind comes from its name (FD-bench names them e.g. `synthetic_pause_handling`,
`candor_turn_taking`, `synthetic_user_interruption`, `icc_backchannel`), else from the json
its first clip carries (input.wav alone = backchannel). Backchannel ground truth is either our
per-clip `backchannel.json` or upstream's task-level `icc_gt_distribution.json`
({clip_id: [p per 200 ms bin]}).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from model.eval.words import Word, words_from_json, words_to_json

SAMPLE_RATE = 16000
MODEL_STEM = "output"
BASELINE_STEM = "output_baseline"
REFERENCE_STEM = "output_reference"  # the generated dialogue's own assistant (model/eval/dialogues.py)
KINDS = (
    "pause_handling",
    "smooth_turn_taking",
    "user_interruption",
    "backchannel",
    "timespeak",
    "rep_counting",
    "visual_alert",
    "visual_question",
    "cue_speak",
)
# Ours, speaking on a cue (model/eval/cue_metrics.py); the json formats:
#   reps.json      {"request": t, "reps": [{"time": completion, "count": n, "text": "three"}, ...],
#                   "partials": [t, ...], "uncounted": [t, ...] (reps after "stop"), "stop": t | null}
#   alerts.json    {"request": t, "events": [{"time": t, "text": "green"}, ...], "distractors": [t, ...]}
#   cues.json      {"rule": text, "rule_time": t, "cues": [{"time": cue word end, "text": cue, "response": w}, ...]}
#   question.json  {"question": text, "user_end": t, "answer": colour} (+ FD-bench's turn_taking.json)
# Request/rule times are the end of the user's request, where its acknowledgement window starts.
KIND_FILES = {
    "rep_counting": "reps.json",
    "visual_alert": "alerts.json",
    "visual_question": "question.json",
    "cue_speak": "cues.json",
    "pause_handling": "pause.json",
    "smooth_turn_taking": "turn_taking.json",
    "user_interruption": "interrupt.json",
    "timespeak": "timespeak.json",
}
_NAME_HINTS = (
    ("rep_count", "rep_counting"),
    ("visual_alert", "visual_alert"),
    ("visual_question", "visual_question"),
    ("cue_speak", "cue_speak"),
    ("cuespeak", "cue_speak"),
    ("pause", "pause_handling"),
    ("turn_taking", "smooth_turn_taking"),
    ("turn-taking", "smooth_turn_taking"),
    ("interrupt", "user_interruption"),
    ("backchannel", "backchannel"),
    ("timespeak", "timespeak"),
)
GT_DISTRIBUTION_FILE = "icc_gt_distribution.json"


class LayoutError(ValueError):
    """A root, task or clip that is not in the FD-bench layout; the message names the path."""


@dataclass(frozen=True)
class Clip:
    task: str  # the task directory's name
    kind: str  # one of KINDS
    clip_id: str
    path: Path  # the clip directory

    @property
    def input_wav(self) -> Path:
        return self.path / "input.wav"

    def output_wav(self, stem: str = MODEL_STEM) -> Path:
        return self.path / f"{stem}.wav"

    def output_json(self, stem: str = MODEL_STEM) -> Path:
        return self.path / f"{stem}.json"

    def frames(self, n_turns: int | None = None) -> np.ndarray | None:
        """The clip's video, one (120, 160, 3) uint8 frame per micro-turn, or None (audio only)."""
        from model.eval.frames import FramesError, read_clip_frames

        try:
            return read_clip_frames(self.path, n_turns)
        except FramesError as e:
            raise LayoutError(str(e)) from e

    def meta(self) -> Any:
        """The task json (None for backchannel clips, whose ground truth is optional)."""
        name = KIND_FILES.get(self.kind)
        if name is None:
            return None
        return read_json(self.path / name)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LayoutError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LayoutError(f"{path}: not valid json: {e}") from e


def task_kind(task_dir: Path) -> str:
    name = task_dir.name.lower()
    for hint, kind in _NAME_HINTS:
        if hint in name:
            return kind
    for clip_dir in sorted(p for p in task_dir.iterdir() if p.is_dir()):
        for kind, fname in KIND_FILES.items():
            if (clip_dir / fname).is_file():
                return kind
        if (clip_dir / "input.wav").is_file():
            return "backchannel"
    raise LayoutError(f"{task_dir}: cannot tell the task kind (no clip with input.wav)")


def discover(root: str | Path, tasks: list[str] | None = None) -> list[Clip]:
    """Every `ROOT/<task>/<clip_id>/input.wav`, sorted; `tasks` filters by directory name."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: no such directory (expected ROOT/<task>/<clip_id>/input.wav)")
    task_dirs = sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*/input.wav")))
    if tasks:
        known = {p.name for p in task_dirs}
        missing = [t for t in tasks if t not in known]
        if missing:
            raise LayoutError(
                f"{root}: no clips for task(s) {', '.join(missing)}; found: {', '.join(sorted(known)) or 'none'}"
            )
        task_dirs = [p for p in task_dirs if p.name in tasks]
    clips = [
        Clip(task=t.name, kind=task_kind(t), clip_id=c.parent.name, path=c.parent)
        for t in task_dirs
        for c in sorted(t.glob("*/input.wav"))
    ]
    if not clips:
        raise LayoutError(f"{root}: no clips found (expected ROOT/<task>/<clip_id>/input.wav)")
    return clips


# -- audio ----------------------------------------------------------------------------------
def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly) between integer rates."""
    if sr_in == sr_out:
        return np.asarray(audio, dtype=np.float32)
    g = gcd(sr_in, sr_out)
    return resample_poly(np.asarray(audio, dtype=np.float64), sr_out // g, sr_in // g).astype(np.float32)


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """(mono float32 at the file's rate, rate). Stereo is averaged, as FD-bench's ASR does."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise LayoutError(f"{path}: unreadable audio: {e}") from e
    return data.mean(axis=1).astype(np.float32), int(sr)


def read_audio_16k(path: Path) -> tuple[np.ndarray, int, int]:
    """(mono float32 at 16 kHz, original rate, original length in samples)."""
    audio, sr = read_audio(path)
    return resample(audio, sr, SAMPLE_RATE), sr, len(audio)


def write_output(clip: Clip, audio_16k: np.ndarray, words: list[Word], stem: str = MODEL_STEM) -> None:
    """Write `<stem>.wav` (mono, same rate and length as input.wav, 16-bit PCM, clipped to
    [-1, 1] as a sound card would) and `<stem>.json` beside the input."""
    info = sf.info(str(clip.input_wav))
    sr, n = int(info.samplerate), int(info.frames)
    out = resample(audio_16k, SAMPLE_RATE, sr)
    fitted = np.zeros(n, dtype=np.float32)
    fitted[: min(n, len(out))] = out[:n]
    sf.write(str(clip.output_wav(stem)), np.clip(fitted, -1.0, 1.0), sr, subtype="PCM_16")
    clip.output_json(stem).write_text(json.dumps(words_to_json(words), indent=2) + "\n")


def read_output(clip: Clip, stem: str = MODEL_STEM) -> tuple[np.ndarray, list[Word]]:
    """(output audio at 16 kHz, words) of one system on one clip."""
    wav, js = clip.output_wav(stem), clip.output_json(stem)
    if not wav.is_file():
        raise LayoutError(f"{wav}: missing (run the system on this root first)")
    audio, _, _ = read_audio_16k(wav)
    return audio, words_from_json(read_json(js), source=str(js))
