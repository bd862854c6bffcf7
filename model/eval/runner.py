"""Run a system over an FD-bench root: each clip's input.wav in, time-aligned output.wav out.

The unit that varies between systems is a `Responder`: given a clip's input audio (16 kHz) it
returns output audio of the same length, time aligned (sample i was produced while input
sample i was being heard), plus timed words. `run_responder` does the layout work around it
(read, resample, write `<stem>.wav`/`<stem>.json`, progress). Implemented responders:

- `ModelResponder` (offline): the interaction model stepped directly, 200 ms at a time.
- `HarnessBaseline` (model/eval/baselines.py): VAD endpointing + fixed-length speech.

A live runner (an aiortc client streaming the clip in real time to a running server and
recording what comes back) is another Responder: stream `inp.audio` at 1x, record the
remote track into a buffer of the same length, return the words from the server's text
channel. Nothing else here changes.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from infra.messages import MicroTurnInput
from model.attention import KVCache
from model.checkpoint import Checkpoint
from model.config import GateConfig
from model.eval.layout import MODEL_STEM, SAMPLE_RATE, Clip, discover, read_audio_16k, write_output
from model.eval.vad import DEFAULT_VAD, VadConfig, speech_segments
from model.eval.words import TimedToken, Word, group_words, snap_to_speech
from model.interaction import InteractionModel
from model.session import SessionState, step_batch
from model.tokenizer import Tokenizer


@dataclass
class ClipInput:
    clip: Clip
    audio: np.ndarray  # mono float32, 16 kHz
    text: str = ""  # typed user text delivered with the first micro-turn (the TimeSpeak request)
    video: np.ndarray | None = None  # (n, 120, 160, 3) uint8: frame k rides on micro-turn k; None = no camera

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass
class Response:
    audio: np.ndarray  # mono float32, 16 kHz, len(inp.audio) samples, time aligned
    words: list[Word]
    info: dict[str, Any] = field(default_factory=dict)  # counts for the report (words, voiced words, ...)


class Responder(Protocol):
    """A system under test. `stem` names its output files (`output` = FD-bench's name)."""

    name: str
    stem: str

    def respond(self, inp: ClipInput) -> Response: ...


@dataclass
class ClipRun:
    clip: Clip
    seconds: float  # audio duration
    elapsed: float  # wall time spent
    info: dict[str, Any]


def clip_request(clip: Clip) -> str:
    """Typed text the system gets with the clip: a TimeSpeak request marked `"typed": true`
    (input.wav does not speak it), else nothing. Our dialogue clips speak the request, as the
    training data does, so it is heard, not typed."""
    meta = clip.meta() if clip.kind == "timespeak" else None
    if meta and meta.get("typed"):
        return str(meta.get("request", ""))
    return ""


def clip_input(clip: Clip) -> ClipInput:
    """Everything a system gets from one clip: audio at 16 kHz, the typed request, the video."""
    audio, _, _ = read_audio_16k(clip.input_wav)
    return ClipInput(clip, audio, clip_request(clip), clip.frames())


def turn_frame(video: np.ndarray | None, k: int) -> np.ndarray | None:
    """The frame micro-turn k carries: frame k; past the video's end, none (the camera stopped)."""
    if video is None or k >= len(video):
        return None
    return video[k]


def run_responder(
    responder: Responder,
    root: str | Path,
    tasks: list[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[ClipRun]:
    """Run `responder` on every clip; writes `<stem>.wav` + `<stem>.json` beside each input."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    clips = discover(root, tasks)
    runs = []
    for i, clip in enumerate(clips, 1):
        inp = clip_input(clip)
        audio = inp.audio
        t0 = time.perf_counter()
        resp = responder.respond(inp)
        elapsed = time.perf_counter() - t0
        if len(resp.audio) != len(audio):
            raise RuntimeError(f"{responder.name}: returned {len(resp.audio)} samples for {len(audio)} of input")
        write_output(clip, resp.audio, resp.words, responder.stem)
        run = ClipRun(clip, inp.duration, elapsed, {"words": len(resp.words), **resp.info})
        runs.append(run)
        voiced = f" ({resp.info['voiced_words']} voiced)" if "voiced_words" in resp.info else ""
        log(
            f"[{responder.name}] {i}/{len(clips)} {clip.task}/{clip.clip_id}: {inp.duration:.1f} s in "
            f"{elapsed:.1f} s ({elapsed / max(inp.duration, 1e-9):.2f}x real time), {len(resp.words)} words{voiced}"
        )
    return runs


class ModelResponder:
    """The interaction model stepped directly over 200 ms chunks (offline, faster or slower
    than real time, but causally identical to serving); alignment as in `run_model_rows`."""

    stem = MODEL_STEM

    def __init__(
        self,
        model: InteractionModel,
        tokenizer: Tokenizer,
        seed: int = 0,
        vad: VadConfig = DEFAULT_VAD,
        name: str = "interaction model",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.seed = seed
        self.vad = vad
        self.name = name

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, seed: int = 0, vad: VadConfig = DEFAULT_VAD) -> ModelResponder:
        return cls(checkpoint.model, checkpoint.tokenizer, seed=seed, vad=vad)

    def respond(self, inp: ClipInput) -> Response:
        out, tokens = run_model_rows(self.model, self.tokenizer, inp, [None], self.seed)[0]
        pos_s = self.model.cfg.position_ms / 1000
        duration = len(inp.audio) / SAMPLE_RATE
        words = [Word(w.text, w.start, min(w.end, duration)) for w in group_words(tokens, self.tokenizer, pos_s)]
        snapped = snap_to_speech(words, speech_segments(out, self.vad))
        n_turns = math.ceil(len(inp.audio) / self.model.cfg.turn_samples)
        return Response(out, snapped.words, {"voiced_words": snapped.n_voiced, "turns": n_turns})


def run_model_rows(
    model: InteractionModel,
    tokenizer: Tokenizer,
    inp: ClipInput,
    gates: Sequence[GateConfig | None],
    seed: int = 0,
) -> list[tuple[np.ndarray, list[TimedToken]]]:
    """The clip through the model once per row of `gates` (None = the checkpoint's gate), all
    rows in one batch: (time-aligned output audio, timed text tokens) per row.

    Alignment: micro-turn k hears input [k*0.2, (k+1)*0.2) s; its output is what the model
    plays during turn k+1, so its 3200 samples go to [(k+1)*3200, (k+2)*3200); the first turn
    of output is silence and whatever runs past the clip end is dropped (so the last chunk,
    whose output would land entirely past the end, is not stepped). The last input chunk is
    zero-padded. Text position j of turn k is played at (k+1)*0.2 + j*0.05 s. Turn k carries
    video frame k (`inp.video`), as the server attaches the camera frame sampled during it.
    """
    cfg = model.cfg
    T = cfg.turn_samples
    turn_s = cfg.micro_turn_ms / 1000
    pos_s = cfg.position_ms / 1000
    n = len(inp.audio)
    duration = n / SAMPLE_RATE
    B = len(gates)
    model.eval()
    param = next(model.parameters())
    cache = KVCache.allocate(cfg, B, device=param.device, dtype=param.dtype)
    states = []
    for b, g in enumerate(gates):
        st = SessionState.new(cfg, tokenizer, f"{inp.clip.clip_id}/{b}", seed, slot=b)
        st.gate = g
        states.append(st)
    outs = [np.zeros(n, dtype=np.float32) for _ in range(B)]
    tokens: list[list[TimedToken]] = [[] for _ in range(B)]
    for k in range(math.ceil(n / T)):
        lo = (k + 1) * T  # where this turn's output plays
        if lo >= n:
            break
        chunk = np.zeros(T, dtype=np.float32)
        piece = inp.audio[k * T : (k + 1) * T]
        chunk[: len(piece)] = piece
        text = inp.text if k == 0 else ""
        frame = turn_frame(inp.video, k)
        step_in = [
            MicroTurnInput.from_arrays(chunk, video=frame, text=text, turn=k, session_id=s.session_id) for s in states
        ]
        hi = min(n, lo + T)
        for b, o in enumerate(step_batch(model, cache, tokenizer, states, step_in)):
            outs[b][lo:hi] = o.audio_array()[: hi - lo]
            for j, tok in enumerate(o.text_tokens):
                t = (k + 1) * turn_s + j * pos_s
                if t < duration:
                    tokens[b].append(TimedToken(tok, t))
    return list(zip(outs, tokens, strict=True))


def run_offline(
    checkpoint: Checkpoint,
    root: str | Path,
    tasks: list[str] | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    vad: VadConfig = DEFAULT_VAD,
) -> list[ClipRun]:
    """The interaction model on every clip of `root`: writes output.wav + output.json."""
    return run_responder(ModelResponder.from_checkpoint(checkpoint, seed, vad), root, tasks, log)
