"""The speak gate: the text head's decision at each output position, with hysteresis.

Starting to speak is a rare event (about 1 % of output positions in training), so greedy
argmax lets `<pad>` win until the model is very sure, and the non-pad mass is split over many
first tokens. The gate instead thresholds the total non-pad probability:

- silent: start speaking (emit the best non-pad token) when p(not `<pad>`) >= `start`;
- speaking: keep going while p(not `<pad>`) >= `keep` (a lower threshold, so a reply does not
  die on one uncertain position), else fall silent (emit `<pad>`);
- `<eot>` ends the turn: back to silent, so the next reply must cross `start` again.

The token among the non-pad ones is the best (temperature 0) or a sample at `temperature`
drawn with Gumbel noise from model/rng.py keyed on (seed, turn, position): a pure function of
the session, so deterministic mode stays bitwise batch-invariant. Rows whose `GateConfig` is
greedy (`start=None`, checkpoints from before the gate) take argmax over the whole vocabulary,
exactly as before. Every row of a batch may have its own thresholds (calibration runs many
candidate gates side by side on the same clip); the step itself is vectorized over rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model import rng
from model.config import GateConfig


@dataclass
class BatchGate:
    """Per-row gate parameters for one micro-turn of a batch (build once, step per position)."""

    greedy: torch.Tensor  # (B,) bool: argmax over everything
    start: torch.Tensor  # (B,) float32
    keep: torch.Tensor  # (B,) float32
    temperature: torch.Tensor  # (B,) float32
    voice: torch.Tensor  # (B,) float32: p(voice active) needed to stay audible; 0 = always audible
    seeds: list[int]
    turns: list[int]
    pad_id: int
    eot_id: int

    @classmethod
    def build(
        cls,
        gates: Sequence[GateConfig],
        seeds: Sequence[int],
        turns: Sequence[int],
        pad_id: int,
        eot_id: int,
        device: torch.device | str = "cpu",
    ) -> BatchGate:
        def f32(xs: list[float]) -> torch.Tensor:
            return torch.tensor(xs, dtype=torch.float32, device=device)

        return cls(
            greedy=torch.tensor([g.greedy for g in gates], dtype=torch.bool, device=device),
            start=f32([1.0 if g.start is None else g.start for g in gates]),
            keep=f32([1.0 if g.keep_threshold is None else g.keep_threshold for g in gates]),
            temperature=f32([g.temperature for g in gates]),
            voice=f32([0.0 if g.voice is None else g.voice for g in gates]),
            seeds=list(seeds),
            turns=list(turns),
            pad_id=pad_id,
            eot_id=eot_id,
        )

    def step(self, logits: torch.Tensor, speaking: torch.Tensor, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V) text logits and (B,) speaking flags -> ((B,) tokens, (B,) speaking after them)."""
        noise = None
        if bool((self.temperature > 0).any()):
            rows = [
                rng.gumbel(s, t, position, logits.shape[-1]) if temp > 0 else torch.zeros(logits.shape[-1])
                for s, t, temp in zip(self.seeds, self.turns, self.temperature.tolist(), strict=True)
            ]
            noise = torch.stack(rows).to(logits.device)
        return gate_step(logits, speaking, self, noise)

    def audible(self, turn_logits: torch.Tensor, speaking: torch.Tensor) -> torch.Tensor:
        """(B, 2) turn-head logits and (B,) text-gate state -> (B,) whether the position plays sound."""
        p_voice = torch.sigmoid(turn_logits[:, 0].float())
        return speaking | (p_voice >= self.voice)


def p_speak(logits: torch.Tensor, pad_id: int) -> torch.Tensor:
    """p(not `<pad>`) per row, in float32: 1 - softmax(logits)[pad]."""
    return 1.0 - torch.softmax(logits.float(), dim=-1)[:, pad_id]


def gate_step(
    logits: torch.Tensor, speaking: torch.Tensor, gate: BatchGate, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One output position for every row (see module doc). `noise` is (B, V) Gumbel noise for
    rows with temperature > 0 (ignored where the temperature is 0)."""
    x = logits.float()
    greedy_tok = x.argmax(-1)  # first maximum on ties, as before the gate
    p = p_speak(x, gate.pad_id)
    threshold = torch.where(speaking, gate.keep, gate.start)
    speak = p >= threshold
    scores = x.clone()
    scores[:, gate.pad_id] = float("-inf")
    hot = gate.temperature > 0
    if noise is not None:  # no host read of `hot`: where() leaves cold rows as they are
        t = torch.where(hot, gate.temperature, torch.ones_like(gate.temperature)).unsqueeze(-1)
        sampled = scores / t + noise.float()
        scores = torch.where(hot.unsqueeze(-1), sampled, scores)
    best = scores.argmax(-1)
    gated = torch.where(speak, best, torch.full_like(best, gate.pad_id))
    tok = torch.where(gate.greedy, greedy_tok, gated)
    # greedy rows carry no state: they never enter the speaking branch
    now_speaking = speak & (tok != gate.eot_id) & ~gate.greedy
    return tok, now_speaking
