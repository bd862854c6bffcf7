"""Can a listener understand the model, and does the model understand the user?

    python -m model.eval.intelligibility --checkpoint checkpoints/tiny --dialogues data/synth/heldout \\
        [--max-clips 40] [--batch 8] [--json out.json]

Runs the model over whole held-out dialogues (the user channel, micro-turn by micro-turn, as
serving does; several dialogues batched) and measures two word error rates:

- intelligibility: pocketsphinx ASR of the model's output audio (decoded inside Silero VAD
  speech) against the model's own text stream over the same clip. The text stream is what the
  model meant to say; the ASR is what a listener hears.
- captions: the caption head's text against the words the user actually spoke (the dialogue's
  alignments), i.e. live captions on voices training never heard.

WER is pooled (total edits / total reference words), after lower-casing, dropping punctuation
and reading numerals as words on both sides (model/data/numbers.py: the ASR writes "fifty six",
the text stream and the dialogues' words write "56"; "3:45" is "three forty five").

And the ceilings the first figure is read against (`reference`, `--no-reference` skips them):
the same ASR on the dialogues' own assistant channel (the recorded voice the model learns)
against the words it says, and on that recording resynthesized from its log-mel by streaming
Griffin-Lim (model/vocoder.py) and, when the checkpoint ships one, by its trained vocoder
(model/neural_vocoder.py): what a perfect model would score through each.

When the checkpoint ships a vocoder, the model's speech is heard through both from one run:
each session's mel goes to the trained vocoder (what serving plays) and to a streaming
Griffin-Lim beside it, so the two speech WERs differ only by the vocoder.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from infra.messages import MicroTurnInput
from model.attention import KVCache
from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from model.data.numbers import say_numerals
from model.dmel import log_mel_offline
from model.interaction import InteractionModel
from model.neural_vocoder import NeuralVocoder, StreamingNeuralVocoder, Vocoder, vocode, vocode_batch
from model.session import SessionState, step_batch
from model.tokenizer import Tokenizer
from model.vocoder import StreamingGriffinLim, griffin_lim
from model.vocoder import push_batch as griffin_push_batch

SAMPLE_RATE = 16000
_WORD = re.compile(r"[a-z0-9']+")


def normalize(text: str) -> list[str]:
    """Lower-case words without punctuation, numerals as the words said for them
    ("It's 56." -> ["it's", "fifty", "six"])."""
    return [w.strip("'") for w in _WORD.findall(say_numerals(text).lower()) if w.strip("'")]


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions, deletions cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


@dataclass
class Wer:
    edits: int = 0
    words: int = 0  # reference words
    clips: int = 0

    def add(self, ref: Sequence[str], hyp: Sequence[str]) -> None:
        if not ref and not hyp:
            return
        self.edits += edit_distance(ref, hyp)
        self.words += len(ref)
        self.clips += 1

    @property
    def rate(self) -> float | None:
        return self.edits / self.words if self.words else None


@dataclass
class ClipText:
    clip_id: str
    model_text: str  # the model's text stream
    heard: str  # ASR of its output audio
    captions: str  # the caption head's text
    spoken: str  # what the user said
    heard_griffin_lim: str = ""  # ASR of the same mel through Griffin-Lim (when the model has a trained vocoder)


class _Both:
    """A session's vocoder (what it plays) with a streaming Griffin-Lim fed the same mel beside it."""

    def __init__(self, main: Vocoder, cfg: ModelConfig) -> None:
        self.main = main
        self.griffin = StreamingGriffinLim(cfg)
        self.turns: list[np.ndarray] = []  # Griffin-Lim's audio of each push, taken by the caller

    @property
    def delay_samples(self) -> int:
        return self.main.delay_samples

    @property
    def frames_seen(self) -> int:
        return self.main.frames_seen

    def reset(self) -> None:
        self.main.reset()
        self.griffin.reset()

    def push(self, logmel: torch.Tensor) -> torch.Tensor:
        return self.push_many([self], logmel[None])[0]

    @staticmethod
    def push_many(vocoders: Sequence[_Both], logmel: torch.Tensor) -> torch.Tensor:
        alt = griffin_push_batch([v.griffin for v in vocoders], logmel).clamp(-1, 1).numpy()
        for v, a in zip(vocoders, alt, strict=True):
            v.turns.append(a)
        return vocode_batch([v.main for v in vocoders], logmel)


def run_dialogues(
    model: InteractionModel,
    tokenizer: Tokenizer,
    wavs: Sequence[Path],
    seed: int = 0,
    griffin_lim_too: list[np.ndarray] | None = None,
) -> list[tuple[np.ndarray, str, str]]:
    """Each dialogue's user channel through the model in one batch: (output audio aligned to the
    input as in model/eval/runner.py, model text, caption text) per dialogue. With a list for
    `griffin_lim_too` and sessions that speak through a trained vocoder, the same mel through
    Griffin-Lim is appended to it, one array per dialogue."""
    cfg = model.cfg
    T = cfg.turn_samples
    users = [sf.read(str(w), dtype="float32", always_2d=True)[0][:, 1] for w in wavs]
    param = next(model.parameters())
    cache = KVCache.allocate(cfg, len(wavs), device=param.device, dtype=param.dtype)
    states = [SessionState.new(cfg, tokenizer, w.stem, seed, slot=b) for b, w in enumerate(wavs)]
    both = griffin_lim_too is not None and all(isinstance(s.vocoder, StreamingNeuralVocoder) for s in states)
    tees = [_Both(s.vocoder, cfg) for s in states] if both else []
    for s, tee in zip(states, tees, strict=False):
        s.vocoder = tee
    outs = [np.zeros(len(u), np.float32) for u in users]
    alts = [np.zeros(len(u), np.float32) for u in users]
    texts, caps = ["" for _ in wavs], ["" for _ in wavs]
    n_turns = max(len(u) for u in users) // T + 1
    model.eval()
    for k in range(n_turns):
        live = [b for b, u in enumerate(users) if (k + 1) * T < len(u)]
        if not live:
            break
        inputs = []
        for b in live:
            chunk = np.zeros(T, np.float32)
            piece = users[b][k * T : (k + 1) * T]
            chunk[: len(piece)] = piece
            inputs.append(MicroTurnInput.from_arrays(chunk, turn=k, session_id=states[b].session_id))
        for b, o in zip(live, step_batch(model, cache, tokenizer, [states[b] for b in live], inputs), strict=True):
            lo, hi = (k + 1) * T, min(len(users[b]), (k + 2) * T)
            outs[b][lo:hi] = o.audio_array()[: hi - lo]
            if both:
                alts[b][lo:hi] = tees[b].turns.pop()[: hi - lo]
            texts[b] += o.text
            caps[b] += o.caption
    if both and griffin_lim_too is not None:
        griffin_lim_too.extend(alts)
    return list(zip(outs, texts, caps, strict=True))


def spoken_words(wav: Path, speaker: str = "SPEAKER_USER") -> str:
    """One speaker's words of a dialogue, from its alignments (model/data layout)."""
    alignments = json.loads(wav.with_suffix(".json").read_text())["alignments"]
    return " ".join(str(w) for w, _, spk in alignments if spk == speaker)


def reference(wavs: Sequence[Path], cfg: ModelConfig, log: bool = True) -> tuple[Wer, Wer]:
    """ASR word error rates of the dialogues' assistant channel (channel 0) against its words:
    (the recording itself, the recording through Griffin-Lim from its log-mel)."""
    direct, vocoded, _ = ceilings(wavs, cfg, None, log)
    return direct, vocoded


def ceilings(
    wavs: Sequence[Path], cfg: ModelConfig, net: NeuralVocoder | None, log: bool = True
) -> tuple[Wer, Wer, Wer | None]:
    """`reference`, plus the recording through the trained vocoder `net` when there is one."""
    from model.eval import asr, silero

    direct, vocoded = Wer(), Wer()
    neural = Wer() if net is not None else None
    for i, wav in enumerate(wavs):
        words = normalize(spoken_words(wav, "SPEAKER_MAIN"))
        if not words:
            continue
        audio, sr = sf.read(wav, dtype="float32", always_2d=True)
        if sr != SAMPLE_RATE:
            raise ValueError(f"{wav}: expected {SAMPLE_RATE} Hz, got {sr}")
        voice = np.ascontiguousarray(audio[:, 0])
        logmel = log_mel_offline(torch.from_numpy(voice), cfg)
        resynth = griffin_lim(logmel, cfg).numpy()
        rows = [(direct, voice), (vocoded, resynth)]
        if net is not None and neural is not None:
            rows.append((neural, vocode(net, logmel).clamp(-1, 1).numpy()))
        for wer, x in rows:
            wer.add(words, normalize(" ".join(w.text for w in asr.transcribe(x, silero.speech_segments(x)))))
        if log:
            print(
                f"reference: {i + 1}/{len(wavs)} dialogues, recorded voice WER {_fmt(direct.rate)}, "
                f"through Griffin-Lim {_fmt(vocoded.rate)}"
                + ("" if neural is None else f", through the trained vocoder {_fmt(neural.rate)}"),
                file=sys.stderr,
                flush=True,
            )
    return direct, vocoded, neural


def measure(
    model: InteractionModel, tokenizer: Tokenizer, wavs: Sequence[Path], batch: int = 8, log: bool = True
) -> tuple[Wer, Wer, list[ClipText], Wer | None]:
    """(speech WER, caption WER, per-clip texts, speech WER of the same mel through Griffin-Lim
    when the sessions speak through a trained vocoder, else None)."""
    from model.eval import asr, silero

    def hear(x: np.ndarray) -> str:
        return " ".join(w.text for w in asr.transcribe(x, silero.speech_segments(x)))

    intel, cap, intel_gl = Wer(), Wer(), Wer()
    rows: list[ClipText] = []
    for i in range(0, len(wavs), batch):
        group = list(wavs[i : i + batch])
        alts: list[np.ndarray] = []
        runs = run_dialogues(model, tokenizer, group, griffin_lim_too=alts)
        for j, (wav, (audio, text, captions)) in enumerate(zip(group, runs, strict=True)):
            heard = hear(audio)
            heard_gl = hear(alts[j]) if alts else ""
            spoken = spoken_words(wav)
            intel.add(normalize(text), normalize(heard))
            if alts:
                intel_gl.add(normalize(text), normalize(heard_gl))
            cap.add(normalize(spoken), normalize(captions))
            rows.append(ClipText(wav.stem, text, heard, captions, spoken, heard_gl))
        if log:
            print(
                f"intelligibility: {min(i + batch, len(wavs))}/{len(wavs)} dialogues, "
                f"speech WER {_fmt(intel.rate)}, caption WER {_fmt(cap.rate)}",
                file=sys.stderr,
                flush=True,
            )
    return intel, cap, rows, (intel_gl if intel_gl.words else None)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--dialogues", required=True, type=Path, help="held-out dialogues (model/data layout)")
    ap.add_argument("--max-clips", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", type=Path, help="write the figures and every clip's texts here")
    ap.add_argument("--no-reference", action="store_true", help="skip the recorded-voice and vocoder ceilings")
    args = ap.parse_args(argv)
    wavs = sorted(args.dialogues.glob("*.wav"))[: args.max_clips]
    if not wavs:
        print(f"error: {args.dialogues}: no dialogue .wav files", file=sys.stderr)
        return 2
    ck = load_checkpoint(args.checkpoint)
    intel, cap, rows, intel_gl = measure(ck.model, ck.tokenizer, wavs, args.batch)
    kind = "trained vocoder" if intel_gl is not None else "Griffin-Lim"
    print(f"speech WER (ASR of output vs own text): {_fmt(intel.rate)} over {intel.words} words, {intel.clips} clips")
    print(f"  heard through the {kind}")
    if intel_gl is not None:
        print(f"speech WER, the same mel through Griffin-Lim: {_fmt(intel_gl.rate)}")
    print(f"caption WER (caption head vs spoken):   {_fmt(cap.rate)} over {cap.words} words, {cap.clips} clips")
    refs: dict[str, float | None] = {}
    if not args.no_reference:
        net = ck.vocoder if intel_gl is not None else None
        direct, vocoded, neural = ceilings(wavs, ck.model.cfg, net)
        refs = {"reference_voice_wer": direct.rate, "reference_vocoded_wer": vocoded.rate}
        print(f"reference: the recorded assistant voice {_fmt(direct.rate)}, through Griffin-Lim {_fmt(vocoded.rate)}")
        if neural is not None:
            refs["reference_neural_vocoded_wer"] = neural.rate
            print(f"reference: the recorded assistant voice through the trained vocoder {_fmt(neural.rate)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "speech_wer": intel.rate,
            "speech_words": intel.words,
            "caption_wer": cap.rate,
            "caption_words": cap.words,
            "vocoder": "neural" if intel_gl is not None else "griffin-lim",
            "speech_wer_griffin_lim": intel_gl.rate if intel_gl is not None else intel.rate,
            **refs,
            "clips": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
