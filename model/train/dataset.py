"""Dialogue clips -> teacher-forced interleaved sequences with per-position targets.

A clip is the moshi-finetune layout written by model/data: a stereo 16 kHz wav (channel 0 the
assistant, channel 1 the user), `<id>.json` with word alignments per speaker, and
`<id>.events.json` (delegations, background results, typed text).

Alignment of streams to the sequence (DESIGN.md §5):
- IN_k holds the user's audio of turn k, typed text and background results whose event time
  falls in turn k.
- OUT_k is what the model plays during turn k+1 (it can only react to audio it has heard):
  its output slot j is trained on the assistant's mel frames of [0.2(k+1) + 0.05j, +0.05),
  its text target is the inner-monologue token placed at that position: the BPE tokens of an
  assistant word start at the position where the word starts (Moshi-style, slightly ahead of
  the sound), `<delegate>` at a delegation event, `<pad>` elsewhere.
- User-audio position i of turn k has a caption target: each user word's tokens are emitted
  from the first position that ends at or after the word's end (causal captions).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from model.config import ModelConfig
from model.dmel import log_mel_offline, mel_to_unit, quantize
from model.positions import Positions, concat, input_positions, output_position, pad_time, stack
from model.tokenizer import Tokenizer

ASSISTANT = "SPEAKER_MAIN"
USER = "SPEAKER_USER"


class DatasetError(ValueError):
    """A clip that cannot be used; the message names the file."""


@dataclass
class Clip:
    clip_id: str
    assistant: np.ndarray  # (N,) float32 16 kHz
    user: np.ndarray  # (N,) float32 16 kHz
    words: list[tuple[str, float, float, str]]  # (word, start, end, speaker)
    events: list[dict[str, object]] = field(default_factory=list)
    scenario: str = ""

    @property
    def duration(self) -> float:
        return len(self.user) / 16000


def load_clip(wav: Path) -> Clip:
    """Read `<id>.wav`, `<id>.json` and (if present) `<id>.events.json`."""
    try:
        audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise DatasetError(f"{wav}: unreadable audio: {e}") from e
    if sr != 16000 or audio.shape[1] != 2:
        raise DatasetError(f"{wav}: expected 16 kHz stereo (assistant, user), got {sr} Hz x {audio.shape[1]} channels")
    align_file = wav.with_suffix(".json")
    try:
        alignments = json.loads(align_file.read_text())["alignments"]
        words = [(str(w), float(s), float(e), str(spk)) for w, (s, e), spk in alignments]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{align_file}: missing or malformed word alignments: {e}") from e
    events_file = wav.with_name(wav.stem + ".events.json")
    events: list[dict[str, object]] = []
    scenario = ""
    if events_file.exists():
        try:
            meta = json.loads(events_file.read_text())
            events = list(meta.get("events", []))
            scenario = str(meta.get("scenario", ""))
        except (json.JSONDecodeError, AttributeError) as e:
            raise DatasetError(f"{events_file}: malformed events: {e}") from e
    return Clip(wav.stem, audio[:, 0].copy(), audio[:, 1].copy(), sorted(words, key=lambda w: w[1]), events, scenario)


def list_clips(root: Path) -> list[Path]:
    wavs = sorted(Path(root).rglob("*.wav"))
    if not wavs:
        raise DatasetError(f"{root}: no .wav clips found")
    return wavs


@dataclass
class Example:
    """One clip as a (1, T) sequence plus targets at every position (-100 = no target)."""

    positions: Positions
    text_target: torch.Tensor  # (1, T) at MODEL_OUT positions
    caption_target: torch.Tensor  # (1, T) at USER_AUDIO positions
    mel_target: torch.Tensor  # (1, T, mel_dim) unit-space mel at MODEL_OUT positions
    n_turns: int


def build_example(
    cfg: ModelConfig, tok: Tokenizer, clip: Clip, max_turns: int | None = None, start: int = 0
) -> Example:
    """Turns [start, start + max_turns) of a clip as one teacher-forced sequence."""
    S, P, Fp = cfg.turn_samples, cfg.positions_per_turn, cfg.frames_per_position
    pos_s = cfg.position_ms / 1000
    n_total = len(clip.user) // S - 1  # the last turn needs the next turn's assistant audio
    if n_total < 1:
        raise DatasetError(f"{clip.clip_id}: shorter than two micro-turns")
    end = n_total if max_turns is None else min(n_total, start + max_turns)
    t0 = start * S
    user = torch.from_numpy(clip.user[t0 : end * S])
    asst = torch.from_numpy(clip.assistant[t0 : (end + 1) * S])
    # the first frame of the crop needs the 400-sample tail before it: compute over the tail too
    tail = cfg.hop_length
    u_pad = torch.from_numpy(clip.user[max(0, t0 - tail) : end * S])
    a_pad = torch.from_numpy(clip.assistant[max(0, t0 - tail) : (end + 1) * S])
    skip = (tail if t0 > 0 else 0) // cfg.hop_length
    user_mel = log_mel_offline(u_pad, cfg)[skip:]  # (frames, M)
    asst_mel = log_mel_offline(a_pad, cfg)[skip:]
    assert user_mel.shape[0] == len(user) // cfg.hop_length and asst_mel.shape[0] == len(asst) // cfg.hop_length
    user_bins, asst_bins = quantize(user_mel, cfg), quantize(asst_mel, cfg)

    n_out_positions = (end - start + 1) * P  # output positions cover [0.2*(start+1), 0.2*(end+1))
    out_text = [tok.pad_id] * n_out_positions
    captions: dict[int, list[int]] = {}  # user position index -> tokens
    base = (start + 1) * cfg.micro_turn_ms / 1000  # time of output position 0 of the crop
    for word, ws, we, spk in clip.words:
        ids = tok.encode(" " + word)
        if spk == ASSISTANT:
            j = _floor((ws - base) / pos_s)
            _place(out_text, j, ids, tok.pad_id)
        elif spk == USER:
            i = _ceil((we - start * cfg.micro_turn_ms / 1000) / pos_s) - 1
            captions.setdefault(max(i, 0), []).extend(ids)
    user_text: dict[int, list[int]] = {}
    bg_text: dict[int, list[int]] = {}
    for ev in clip.events:
        t = float(ev.get("time", 0.0))  # type: ignore[arg-type]
        k = _floor(t / (cfg.micro_turn_ms / 1000)) - start
        text = str(ev.get("text", ""))
        kind = ev.get("type")
        if kind == "delegate":
            _place(out_text, _floor((t - base) / pos_s), [tok.delegate_id], tok.pad_id)
        elif kind == "background_result" and 0 <= k < end - start:
            bg_text.setdefault(k, []).extend([tok.bg_id, *tok.encode(text)])
        elif kind == "typed_text" and 0 <= k < end - start:
            user_text.setdefault(k, []).extend(tok.encode(text))

    cap_flat = _spread(captions, (end - start) * P, tok.pad_id)
    parts: list[Positions] = []
    text_t: list[int] = []
    cap_t: list[int] = []
    mel_t: list[torch.Tensor] = []
    next_pos = 0
    prev_tok, prev_bins = tok.pad_id, torch.zeros(Fp, cfg.n_mels, dtype=torch.long)
    unit = mel_to_unit(asst_mel, cfg)  # (frames, M)
    for k in range(end - start):
        fr = slice(k * cfg.frames_per_turn, (k + 1) * cfg.frames_per_turn)
        chunk = input_positions(
            cfg,
            start + k,
            next_pos,
            user_bins[fr],
            None,
            user_text.get(k, [])[: cfg.max_text_tokens_per_turn],
            bg_text.get(k, [])[: cfg.max_background_tokens_per_turn],
        )
        parts.append(chunk)
        n_in = chunk.shape[1]
        next_pos += n_in
        cap_t += cap_flat[k * P : (k + 1) * P] + [-100] * (n_in - P)
        text_t += [-100] * n_in
        mel_t += [torch.zeros(cfg.mel_dim)] * n_in
        for j in range(P):
            o = (k + 1) * P + j  # output position index into the assistant's frames
            parts.append(output_position(cfg, start + k, j, next_pos, prev_tok, prev_bins))
            next_pos += 1
            target_tok = out_text[k * P + j]
            text_t.append(target_tok)
            cap_t.append(-100)
            mel_t.append(unit[o * Fp : (o + 1) * Fp].reshape(-1))
            prev_tok, prev_bins = target_tok, asst_bins[o * Fp : (o + 1) * Fp]
    seq = concat(parts)
    return Example(
        positions=seq,
        text_target=torch.tensor([text_t]),
        caption_target=torch.tensor([cap_t]),
        mel_target=torch.stack(mel_t)[None],
        n_turns=end - start,
    )


def collate(examples: list[Example]) -> Example:
    """Right-pad a list of (1, T_i) examples into one (B, T) batch."""
    T = max(e.positions.shape[1] for e in examples)

    def pad(x: torch.Tensor, value: float) -> torch.Tensor:
        return pad_time(x, T - x.shape[1], value)

    return Example(
        positions=stack([e.positions for e in examples]),
        text_target=torch.cat([pad(e.text_target, -100) for e in examples]),
        caption_target=torch.cat([pad(e.caption_target, -100) for e in examples]),
        mel_target=torch.cat([pad(e.mel_target, 0.0) for e in examples]),
        n_turns=sum(e.n_turns for e in examples),
    )


# Times are decimal seconds; 2.6 / 0.05 is 51.999... in binary. Snap before rounding.
_SNAP = 1e-6


def _floor(x: float) -> int:
    return math.floor(x + _SNAP)


def _ceil(x: float) -> int:
    return math.ceil(x - _SNAP)


def _place(seq: list[int], j: int, ids: list[int], pad: int) -> None:
    """Write ids from index j on, shifting right past positions already taken."""
    for tok_id in ids:
        while 0 <= j < len(seq) and seq[j] != pad:
            j += 1
        if 0 <= j < len(seq):
            seq[j] = tok_id
        j += 1


def _spread(at: dict[int, list[int]], n: int, pad: int) -> list[int]:
    out = [pad] * n
    for i in sorted(at):
        _place(out, i, at[i], pad)
    return out
