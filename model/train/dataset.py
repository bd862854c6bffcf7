"""Dialogue clips -> teacher-forced interleaved sequences with per-position targets.

A clip is the moshi-finetune layout written by model/data: a stereo 16 kHz wav (channel 0 the
assistant, channel 1 the user), `<id>.json` with word alignments per speaker, and
`<id>.events.json` (delegations, background results, typed text).

Alignment of streams to the sequence (DESIGN.md §5):
- IN_k holds the user's audio of turn k, typed text and background results whose event time
  falls in turn k.
- OUT_k is what the model plays during turn k+1 (it can only react to audio it has heard):
  its output slot j is trained on the assistant's mel frames of [0.2(k+1) + 0.05j, +0.05),
  its text target is the inner monologue (`<pad>` elsewhere): an assistant *turn* (words with
  less than TURN_GAP_S of silence between them) is packed as one run of BPE tokens starting
  LEAD_POSITIONS before its first word's onset (the text leads the sound, as in Moshi) and
  ended by `<eot>`, so a reply is one timing decision, not one per word; `<delegate>` sits at a
  delegation event. The first token of a turn is weighted FIRST_TOKEN_WEIGHT in the loss: it is
  the decision to speak. Its mirror, the decision to hold, can be weighted too (`hold_weight`):
  a `<pad>` target inside a user's pause (mid-request, or between a monologue's sentences).
- Output position j of OUT_k also has turn-state targets (voice-activity projection): is the
  assistant's voice active in that position's 50 ms, and, while silent, does a turn start
  within the next ONSET_HORIZON positions.
- User-audio position i of turn k has a caption target: each user word's tokens are emitted
  from the first position that ends at or after the word's end (causal captions).
"""

from __future__ import annotations

import glob
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
from model.train.augment import Perturbation
from model.vision import frame_to_patches

ASSISTANT = "SPEAKER_MAIN"
USER = "SPEAKER_USER"

TURN_GAP_S = 0.7  # assistant silence that ends a turn (longer than espeak-ng/flite sentence pauses)
LEAD_POSITIONS = 1  # the monologue's first token leads the turn's sound by one position (50 ms)
# The monologue and captions are mostly <pad>; Moshi likewise down-weights padding so the rare
# real tokens are learned instead of a blanket "always pad".
PAD_WEIGHT = 0.2
FIRST_TOKEN_WEIGHT = 4.0  # loss weight of a turn's first token, the decision to speak
ONSET_HORIZON = 4  # positions (200 ms) ahead that the onset target looks
# A pause the assistant must sit through looks, to the audio, like the end of a turn: the same
# silence after the user's last word, and its padding weighs 1/20 of a missed reply. Weighting it
# like the decision to speak (`build_example(hold_weight=FIRST_TOKEN_WEIGHT)`, `microturn train
# --hold-weight 4`) was tried on the shipped checkpoint: a 1,100-step fine-tune made the model
# late, not discerning (held-out turn-taking take-over 0.50 -> 0.00 at the calibrated gate, pause
# 0.60 -> 0.40), so the default leaves pauses weighted as any padding.
HOLD_EVENTS = ("pause", "monologue_pause")  # events whose [time, end) the assistant holds through


class DatasetError(ValueError):
    """A clip that cannot be used; the message names the file."""


@dataclass
class Clip:
    clip_id: str
    # (N,) 16 kHz, float32 in [-1, 1] or int16 as a PCM_16 file holds it: a training set lives in
    # RAM, and int16 halves it; crops are read as float32 (`pcm`), the same values either way
    assistant: np.ndarray
    user: np.ndarray
    words: list[tuple[str, float, float, str]]  # (word, start, end, speaker)
    events: list[dict[str, object]] = field(default_factory=list)
    scenario: str = ""
    # (n_turns, H, W, 3) uint8 camera frames, frame k shown during micro-turn k; None = no video
    frames: np.ndarray | None = None

    @property
    def duration(self) -> float:
        return len(self.user) / 16000


def load_clip(wav: Path) -> Clip:
    """Read `<id>.wav`, `<id>.json` and (if present) `<id>.events.json`."""
    try:
        dtype = "int16" if sf.info(str(wav)).subtype == "PCM_16" else "float32"
        audio, sr = sf.read(str(wav), dtype=dtype, always_2d=True)
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
    frames_file = wav.with_name(wav.stem + ".frames.npz")
    frames = None
    if frames_file.exists():
        try:
            with np.load(frames_file) as npz:
                frames = npz["frames"]
        except (OSError, ValueError, KeyError) as e:
            raise DatasetError(f"{frames_file}: unreadable frames: {e}") from e
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            got = f"{frames.dtype} {frames.shape}"
            raise DatasetError(f"{frames_file}: expected uint8 (n_turns, H, W, 3) frames, got {got}")
    words = sorted(words, key=lambda w: w[1])
    return Clip(wav.stem, audio[:, 0].copy(), audio[:, 1].copy(), words, events, scenario, frames)


def list_clips(root: Path) -> list[Path]:
    """Every clip under `root`, following symlinked directories (a training set can be a
    directory of links to several generated sets)."""
    wavs = sorted(Path(p) for p in glob.glob(str(Path(root) / "**" / "*.wav"), recursive=True))
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
    text_weight: torch.Tensor  # (1, T) loss weight of each text target (0 where there is none)
    turn_target: torch.Tensor  # (1, T, 2) {voice active, onset soon} at MODEL_OUT positions, -1 elsewhere
    n_turns: int


def build_example(
    cfg: ModelConfig,
    tok: Tokenizer,
    clip: Clip,
    max_turns: int | None = None,
    start: int = 0,
    hold_weight: float = PAD_WEIGHT,
    perturb: Perturbation | None = None,
) -> Example:
    """Turns [start, start + max_turns) of a clip as one teacher-forced sequence; `hold_weight`
    weighs `<pad>` targets inside the user's pauses (HOLD_EVENTS); `perturb` changes the user's
    voice (model/train/augment.py)."""
    S, P, Fp = cfg.turn_samples, cfg.positions_per_turn, cfg.frames_per_position
    pos_s = cfg.position_ms / 1000
    n_total = len(clip.user) // S - 1  # the last turn needs the next turn's assistant audio
    if n_total < 1:
        raise DatasetError(f"{clip.clip_id}: shorter than two micro-turns")
    end = n_total if max_turns is None else min(n_total, start + max_turns)
    t0 = start * S
    user = pcm(clip.user[t0 : end * S])
    asst = pcm(clip.assistant[t0 : (end + 1) * S])
    # the first frame of the crop needs the 400-sample tail before it: compute over the tail too
    tail = cfg.hop_length
    u_pad = pcm(clip.user[max(0, t0 - tail) : end * S])
    a_pad = pcm(clip.assistant[max(0, t0 - tail) : (end + 1) * S])
    skip = (tail if t0 > 0 else 0) // cfg.hop_length
    user_mel = log_mel_offline(u_pad, cfg)[skip:]  # (frames, M)
    if perturb is not None:
        user_mel = perturb.apply(user_mel, cfg)
    asst_mel = log_mel_offline(a_pad, cfg)[skip:]
    assert user_mel.shape[0] == len(user) // cfg.hop_length and asst_mel.shape[0] == len(asst) // cfg.hop_length
    user_bins, asst_bins = quantize(user_mel, cfg), quantize(asst_mel, cfg)

    n_out_positions = (end - start + 1) * P  # output positions cover [0.2*(start+1), 0.2*(end+1))
    out_text = [tok.pad_id] * n_out_positions
    captions: dict[int, list[int]] = {}  # user position index -> tokens
    base = (start + 1) * cfg.micro_turn_ms / 1000  # time of output position 0 of the crop
    for ev in clip.events:  # placed first: a turn's packed tokens flow around it
        if ev.get("type") == "delegate":
            t = float(ev.get("time", 0.0))  # type: ignore[arg-type]
            _place(out_text, _floor((t - base) / pos_s), [tok.delegate_id], tok.pad_id)
    first_at: set[int] = set()  # output positions holding a turn's first token
    turns = assistant_turns(clip.words)
    for turn in turns:
        ids = [i for w in turn for i in tok.encode(" " + w[0])] + [tok.eot_id]
        first = _place(out_text, _floor((turn[0][1] - base) / pos_s) - LEAD_POSITIONS, ids, tok.pad_id)
        if first is not None:
            first_at.add(first)
    voice, onset = _turn_state(turns, base, pos_s, n_out_positions)
    hold = _hold_positions(clip.events, base, pos_s, n_out_positions) if hold_weight != PAD_WEIGHT else set()
    for word, _ws, we, spk in clip.words:
        ids = tok.encode(" " + word)
        if spk == USER:
            i = _ceil((we - start * cfg.micro_turn_ms / 1000) / pos_s) - 1
            captions.setdefault(max(i, 0), []).extend(ids)
    user_text: dict[int, list[int]] = {}
    bg_text: dict[int, list[int]] = {}
    for ev in clip.events:
        t = float(ev.get("time", 0.0))  # type: ignore[arg-type]
        k = _floor(t / (cfg.micro_turn_ms / 1000)) - start
        text = str(ev.get("text", ""))
        kind = ev.get("type")
        if kind == "background_result" and 0 <= k < end - start:
            bg_text.setdefault(k, []).extend([tok.bg_id, *tok.encode(text)])
        elif kind == "typed_text" and 0 <= k < end - start:
            user_text.setdefault(k, []).extend(tok.encode(text))

    cap_flat = _spread(captions, (end - start) * P, tok.pad_id)
    parts: list[Positions] = []
    text_t: list[int] = []
    weight_t: list[float] = []
    turn_t: list[tuple[float, float]] = []
    cap_t: list[int] = []
    mel_t: list[torch.Tensor] = []
    next_pos = 0
    prev_tok, prev_bins = tok.pad_id, torch.zeros(Fp, cfg.n_mels, dtype=torch.long)
    unit = mel_to_unit(asst_mel, cfg)  # (frames, M)
    for k in range(end - start):
        fr = slice(k * cfg.frames_per_turn, (k + 1) * cfg.frames_per_turn)
        frame = clip.frames[start + k] if clip.frames is not None and start + k < len(clip.frames) else None
        chunk = input_positions(
            cfg,
            start + k,
            next_pos,
            user_bins[fr],
            None if frame is None else frame_to_patches(frame, cfg),  # as the engine does (model/session.py)
            user_text.get(k, [])[: cfg.max_text_tokens_per_turn],
            bg_text.get(k, [])[: cfg.max_background_tokens_per_turn],
        )
        parts.append(chunk)
        n_in = chunk.shape[1]
        next_pos += n_in
        cap_t += cap_flat[k * P : (k + 1) * P] + [-100] * (n_in - P)
        text_t += [-100] * n_in
        weight_t += [0.0] * n_in
        turn_t += [(-1.0, -1.0)] * n_in
        mel_t += [torch.zeros(cfg.mel_dim)] * n_in
        for j in range(P):
            o = (k + 1) * P + j  # output position index into the assistant's frames
            parts.append(output_position(cfg, start + k, j, next_pos, prev_tok, prev_bins))
            next_pos += 1
            target_tok = out_text[k * P + j]
            text_t.append(target_tok)
            weight = _text_weight(target_tok, k * P + j in first_at, tok.pad_id)
            weight_t.append(hold_weight if target_tok == tok.pad_id and k * P + j in hold else weight)
            turn_t.append((voice[k * P + j], onset[k * P + j]))
            cap_t.append(-100)
            mel_t.append(unit[o * Fp : (o + 1) * Fp].reshape(-1))
            prev_tok, prev_bins = target_tok, asst_bins[o * Fp : (o + 1) * Fp]
    seq = concat(parts)
    return Example(
        positions=seq,
        text_target=torch.tensor([text_t]),
        caption_target=torch.tensor([cap_t]),
        mel_target=torch.stack(mel_t)[None],
        text_weight=torch.tensor([weight_t]),
        turn_target=torch.tensor([turn_t]),
        n_turns=end - start,
    )


def pcm(x: np.ndarray) -> torch.Tensor:
    """Samples as float32 in [-1, 1]: int16 scaled as soundfile reads PCM_16 (exactly)."""
    if x.dtype == np.int16:
        return torch.from_numpy(x.astype(np.float32) / 32768.0)
    return torch.from_numpy(x)


def assistant_turns(words: list[tuple[str, float, float, str]]) -> list[list[tuple[str, float, float, str]]]:
    """The assistant's words grouped into turns: a silence of TURN_GAP_S or more starts a new one."""
    turns: list[list[tuple[str, float, float, str]]] = []
    for w in sorted((w for w in words if w[3] == ASSISTANT), key=lambda w: w[1]):
        if turns and w[1] - max(x[2] for x in turns[-1]) < TURN_GAP_S:
            turns[-1].append(w)
        else:
            turns.append([w])
    return turns


def _turn_state(
    turns: list[list[tuple[str, float, float, str]]], base: float, pos_s: float, n: int
) -> tuple[list[float], list[float]]:
    """Per output position: voice active (a word overlaps its 50 ms) and onset within ONSET_HORIZON."""
    voice = [0.0] * n
    for turn in turns:
        for _, ws, we, _ in turn:
            for j in range(max(0, _floor((ws - base) / pos_s)), min(n, _ceil((we - base) / pos_s))):
                voice[j] = 1.0
    onset = [0.0] * n
    for turn in turns:
        j0 = _floor((turn[0][1] - base) / pos_s)
        for j in range(max(0, j0 - ONSET_HORIZON), min(n, j0 + 1)):
            onset[j] = 1.0
    return voice, onset


def _hold_positions(events: list[dict[str, object]], base: float, pos_s: float, n: int) -> set[int]:
    """Output positions (of n, position 0 at `base` seconds) that lie inside a user's pause."""
    out: set[int] = set()
    for ev in events:
        if ev.get("type") not in HOLD_EVENTS:
            continue
        t, end = event_float(ev.get("time")), event_float(ev.get("end"))
        if t is None or end is None:
            continue
        out.update(range(max(0, _ceil((t - base) / pos_s)), min(n, _floor((end - base) / pos_s))))
    return out


def event_float(x: object) -> float | None:
    """An event field as a finite float, or None (events are JSON written by model/data)."""
    if isinstance(x, bool) or not isinstance(x, int | float | str):
        return None
    try:
        v = float(x)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _text_weight(target: int, first: bool, pad: int) -> float:
    if target == pad:
        return PAD_WEIGHT
    return FIRST_TOKEN_WEIGHT if first else 1.0


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
        text_weight=torch.cat([pad(e.text_weight, 0.0) for e in examples]),
        turn_target=torch.cat([pad(e.turn_target, -1.0) for e in examples]),
        n_turns=sum(e.n_turns for e in examples),
    )


# Times are decimal seconds; 2.6 / 0.05 is 51.999... in binary. Snap before rounding.
_SNAP = 1e-6


def _floor(x: float) -> int:
    return math.floor(x + _SNAP)


def _ceil(x: float) -> int:
    return math.ceil(x - _SNAP)


def _place(seq: list[int], j: int, ids: list[int], pad: int) -> int | None:
    """Write ids from index j on, shifting right past positions already taken; returns where
    the first id landed (None if outside the sequence)."""
    first = None
    for n, tok_id in enumerate(ids):
        while 0 <= j < len(seq) and seq[j] != pad:
            j += 1
        if 0 <= j < len(seq):
            seq[j] = tok_id
            first = j if n == 0 else first
        j += 1
    return first


def _spread(at: dict[int, list[int]], n: int, pad: int) -> list[int]:
    out = [pad] * n
    for i in sorted(at):
        _place(out, i, at[i], pad)
    return out
