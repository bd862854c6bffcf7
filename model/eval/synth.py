"""Hand-made clips with known answers, in the FD-bench layout.

"Speech" is a voiced burst (harmonic tone plus a little noise, -20 dBFS RMS, 5 ms fades): the
energy VAD sees exactly the intervals we put it in, so every metric has a known answer. Used
by tests, and by `make_benchmark` to build a small synthetic benchmark set with all five tasks
(a smoke test of the whole pipeline, not a measure of conversational quality).

`fake_output` writes a system's output with known speech and words, for testing scoring.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from model.eval.layout import MODEL_STEM, SAMPLE_RATE, Clip, task_kind, write_output
from model.eval.words import Word

Interval = tuple[float, float]


def burst(n: int, sample_rate: int = SAMPLE_RATE, level_dbfs: float = -20.0, seed: int = 0) -> np.ndarray:
    """`n` samples of speech-like signal: 6 harmonics of 150 Hz plus 10 % noise, 5 ms fades."""
    rs = np.random.RandomState(seed)
    t = np.arange(n) / sample_rate
    x = sum(np.sin(2 * np.pi * 150 * h * t) / h for h in range(1, 7)) + 0.1 * rs.randn(n)
    x = np.asarray(x, dtype=np.float64)
    x *= 10 ** (level_dbfs / 20) / max(float(np.sqrt(np.mean(x**2))), 1e-12) if n else 1.0
    fade = min(n // 2, sample_rate // 200)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        x[:fade] *= ramp
        x[n - fade :] *= ramp[::-1]
    return x.astype(np.float32)


def render(
    speech: Sequence[Interval],
    duration: float,
    sample_rate: int = SAMPLE_RATE,
    level_dbfs: float = -20.0,
    seed: int = 0,
) -> np.ndarray:
    """Silence of `duration` seconds with a burst in each (start, end) interval."""
    out = np.zeros(round(duration * sample_rate), dtype=np.float32)
    for i, (s, e) in enumerate(speech):
        a, b = round(s * sample_rate), min(len(out), round(e * sample_rate))
        out[a:b] = burst(b - a, sample_rate, level_dbfs, seed + i)
    return out


def write_clip(
    root: str | Path, task: str, clip_id: str, audio: np.ndarray, sample_rate: int, files: dict[str, Any]
) -> Path:
    """Write `ROOT/<task>/<clip_id>/input.wav` (16-bit PCM) and the given json files."""
    d = Path(root) / task / clip_id
    d.mkdir(parents=True, exist_ok=True)
    sf.write(str(d / "input.wav"), audio, sample_rate, subtype="PCM_16")
    for name, obj in files.items():
        (d / name).write_text(json.dumps(obj, indent=2) + "\n")
    return d


def pause_clip(
    root: str | Path,
    clip_id: str,
    speech: Sequence[Interval] = ((0.3, 1.5), (2.5, 3.5)),
    duration: float = 5.0,
    sample_rate: int = SAMPLE_RATE,
    task: str = "pause_handling",
) -> Path:
    """The user pauses between the first two bursts (pause.json marks that gap)."""
    pause = [speech[0][1], speech[1][0]] if len(speech) > 1 else [speech[0][1], duration]
    files = {"pause.json": [{"text": "[PAUSE]", "timestamp": pause}]}
    return write_clip(root, task, clip_id, render(speech, duration, sample_rate), sample_rate, files)


def turn_taking_clip(
    root: str | Path,
    clip_id: str,
    speech: Sequence[Interval] = ((0.3, 1.8),),
    duration: float = 4.0,
    sample_rate: int = SAMPLE_RATE,
    task: str = "smooth_turn_taking",
) -> Path:
    """The user speaks, then stops at the end of the last burst: the model should take the turn."""
    user_end = speech[-1][1]
    files = {"turn_taking.json": [{"text": "[TURN-TAKING]", "timestamp": [user_end, duration]}]}
    return write_clip(root, task, clip_id, render(speech, duration, sample_rate), sample_rate, files)


def interruption_clip(
    root: str | Path,
    clip_id: str,
    context: Interval = (0.2, 1.2),
    interrupt: Interval = (2.6, 3.6),
    duration: float = 6.0,
    sample_rate: int = SAMPLE_RATE,
    task: str = "user_interruption",
) -> Path:
    """A user turn, then (while the model is expected to be replying) an interruption."""
    files = {
        "interrupt.json": [
            {
                "context": "tell me about the weather",
                "interrupt": "wait, what about tomorrow?",
                "timestamp": list(interrupt),
            }
        ]
    }
    return write_clip(root, task, clip_id, render([context, interrupt], duration, sample_rate), sample_rate, files)


def backchannel_clip(
    root: str | Path,
    clip_id: str,
    speech: Sequence[Interval] = ((0.2, 2.0), (2.3, 4.0), (4.3, 6.0)),
    times: Sequence[float] = (2.1, 4.1),
    duration: float = 6.5,
    sample_rate: int = SAMPLE_RATE,
    task: str = "backchannel",
) -> Path:
    """A long user turn with short pauses; `times` (our backchannel.json) say where a
    backchannel fits."""
    files = {"backchannel.json": {"times": list(times)}}
    return write_clip(root, task, clip_id, render(speech, duration, sample_rate), sample_rate, files)


def timespeak_clip(
    root: str | Path,
    clip_id: str,
    period_s: float = 2.0,
    start: float = 1.0,
    stop: float = 5.0,
    duration: float = 6.0,
    sample_rate: int = SAMPLE_RATE,
    task: str = "timespeak",
) -> Path:
    """Silent audio; the request arrives as typed text with the first micro-turn."""
    n = round((stop - start) / period_s + 1e-9) + 1
    expected = [round(start + i * period_s, 6) for i in range(n) if start + i * period_s <= stop + 1e-9]
    meta = {
        "request": f"say 'tick' every {period_s:g} seconds from {start:g} s until {stop:g} s",
        "period_s": period_s,
        "start": start,
        "stop": stop,
        "expected_onsets": expected,
        "typed": True,
    }
    audio = np.zeros(round(duration * sample_rate), dtype=np.float32)
    return write_clip(root, task, clip_id, audio, sample_rate, {"timespeak.json": meta})


def make_benchmark(root: str | Path, sample_rate: int = SAMPLE_RATE) -> list[Path]:
    """A small synthetic set: two clips of each task (one at 48 kHz to exercise resampling)."""
    return [
        pause_clip(root, "0001", sample_rate=sample_rate),
        pause_clip(root, "0002", speech=((0.5, 2.0), (3.2, 4.2)), sample_rate=48000),
        turn_taking_clip(root, "0001", sample_rate=sample_rate),
        turn_taking_clip(root, "0002", speech=((0.2, 1.0), (1.3, 2.4)), duration=5.0, sample_rate=sample_rate),
        interruption_clip(root, "0001", sample_rate=sample_rate),
        interruption_clip(root, "0002", context=(0.3, 1.6), interrupt=(2.8, 3.5), sample_rate=sample_rate),
        backchannel_clip(root, "0001", sample_rate=sample_rate),
        backchannel_clip(root, "0002", speech=((0.2, 3.0), (3.4, 6.5)), times=(3.2,), duration=7.0),
        timespeak_clip(root, "0001", sample_rate=sample_rate),
        timespeak_clip(root, "0002", period_s=1.5, start=0.5, stop=3.5, duration=4.5, sample_rate=sample_rate),
    ]


def fake_output(
    clip_dir: str | Path, speech: Sequence[tuple[float, float, str]], stem: str = MODEL_STEM, seed: int = 7
) -> None:
    """Write a system output with known answers: a burst in each (start, end, text) interval,
    its words spread evenly over the interval."""
    d = Path(clip_dir)
    info = sf.info(str(d / "input.wav"))
    duration = info.frames / info.samplerate
    clip = Clip(task=d.parent.name, kind=task_kind(d.parent), clip_id=d.name, path=d)
    words = []
    for s, e, text in speech:
        parts = text.split()
        step = (e - s) / max(len(parts), 1)
        words += [Word(w, round(s + i * step, 6), round(s + (i + 1) * step, 6)) for i, w in enumerate(parts)]
    audio = render([(s, e) for s, e, _ in speech], duration, SAMPLE_RATE, seed=seed)
    write_output(clip, audio, words, stem)


# -- speaking on a cue (issue 10): hand-made clips with video ----------------------------------
RGB = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "grey": (128, 128, 128)}


def solid_frames(colours: Sequence[str], background: str = "grey") -> np.ndarray:
    """One 160x120 frame per micro-turn: a centred 60x60 square of each named colour on
    `background` ("" shows no square)."""
    frames = np.empty((len(colours), 120, 160, 3), np.uint8)
    frames[:] = RGB[background]
    for k, c in enumerate(colours):
        if c:
            frames[k, 30:90, 50:110] = RGB[c]
    return frames


def _video_clip(
    root: str | Path, task: str, clip_id: str, speech: Sequence[Interval], duration: float, frames: np.ndarray,
    files: dict[str, Any],
) -> Path:  # fmt: skip
    from model.eval.frames import write_frames

    d = write_clip(root, task, clip_id, render(speech, duration), SAMPLE_RATE, files)
    write_frames(d, frames)
    return d


def rep_clip(
    root: str | Path, clip_id: str, reps: Sequence[float] = (2.0, 3.0, 4.0), duration: float = 6.0,
    task: str = "rep_counting",
) -> Path:  # fmt: skip
    """The user asks "count my reps" (0.2-1.0 s); the square turns green at each rep completion in `reps`."""
    n = round(duration / 0.2)
    colours = ["blue"] * n
    for t in reps:
        colours[round(t / 0.2)] = "green"
    spec = {
        "request": 1.0,
        "reps": [{"time": t, "count": i + 1, "text": str(i + 1)} for i, t in enumerate(reps)],
        "partials": [],
        "stop": None,
    }
    return _video_clip(root, task, clip_id, [(0.2, 1.0)], duration, solid_frames(colours), {"reps.json": spec})


def alert_clip(
    root: str | Path, clip_id: str, event: float = 3.0, duration: float = 5.0, task: str = "visual_alert"
) -> Path:
    """The user asks "tell me when it turns green" (0.2-1.0 s); the square is red, green from `event`."""
    n = round(duration / 0.2)
    colours = ["red" if k * 0.2 < event else "green" for k in range(n)]
    spec = {"request": 1.0, "events": [{"time": event, "text": "green"}], "distractors": []}
    return _video_clip(root, task, clip_id, [(0.2, 1.0)], duration, solid_frames(colours), {"alerts.json": spec})


def visual_question_clip(
    root: str | Path, clip_id: str, colour: str = "blue", duration: float = 4.0, task: str = "visual_question"
) -> Path:
    """The user asks "what colour is it now?" (0.3-1.5 s) with a `colour` square on screen throughout."""
    n = round(duration / 0.2)
    files = {
        "question.json": {"question": "what colour is it now?", "user_end": 1.5, "answer": colour},
        "turn_taking.json": [{"text": "[TURN-TAKING]", "timestamp": [1.5, duration]}],
    }
    return _video_clip(root, task, clip_id, [(0.3, 1.5)], duration, solid_frames([colour] * n), files)


def cue_clip(
    root: str | Path, clip_id: str, cues: Sequence[float] = (2.5, 4.0), duration: float = 6.0, task: str = "cue_speak"
) -> Path:
    """A rule (0.2-1.0 s), then the user talks (1.5-5.0 s); a number word ends at each cue time."""
    spec = {
        "rule": "every time I say a number, say the next one",
        "rule_time": 1.0,
        "cues": [{"time": t, "text": str(i + 1), "response": str(i + 2)} for i, t in enumerate(cues)],
    }
    return write_clip(root, task, clip_id, render([(0.2, 1.0), (1.5, 5.0)], duration), SAMPLE_RATE, {"cues.json": spec})


def make_cue_benchmark(root: str | Path) -> list[Path]:
    """One clip of each speaking-on-a-cue task (a smoke test of the pipeline)."""
    return [rep_clip(root, "0001"), alert_clip(root, "0001"), visual_question_clip(root, "0001"),
            cue_clip(root, "0001")]  # fmt: skip
