"""One output position for B sessions as a single function: the unit torch.compile captures.

`decode_position` is embeddings, every layer (cache write and attention), the text head, the
speak gate, the turn head and voice gate, and the flow head's sampling, with every input a
tensor or a static Python value, no host read and no data-dependent shape: so it compiles with
`fullgraph=True` (the proof that a CUDA graph can replay it). `run_batch` (model/session.py)
calls it P times per micro-turn, eager or compiled (`DecodeStep`).

What still breaks the graph, so runs eager: deterministic mode (its attention runs session by
session on each one's real keys, a data-dependent selection; on CPU its MoE groups rows by
expert on the host).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from model.attention import KVCache
from model.dmel import quantize, unit_to_mel
from model.gate import BatchGate, gate_step
from model.interaction import InteractionModel
from model.positions import Positions


@dataclass
class Decoded:
    hidden: torch.Tensor  # (B, D)
    logits: torch.Tensor  # (B, V) text logits
    token: torch.Tensor  # (B,) emitted text token
    speaking: torch.Tensor  # (B,) gate state after it
    mel: torch.Tensor  # (B, F, M) log-mel
    bins: torch.Tensor  # (B, F, M) dMel bins, fed to the next position


def decode_position(
    model: InteractionModel,
    cache: KVCache,
    slots: torch.Tensor,
    rows: slice | list[int],
    kv_len: int | None,
    p: Positions,  # (B, 1): the output position, fed with the previous output
    speaking: torch.Tensor,  # (B,) bool
    gate: BatchGate,
    flow_noise: torch.Tensor,  # (B, mel_dim)
    gate_noise: torch.Tensor | None,  # (B, V) Gumbel noise, or None when no row samples
) -> Decoded:
    cfg = model.cfg
    h = model(p, cache, slots, rows=rows, kv_len=kv_len).hidden[:, 0]  # (B, D)
    logits = model.text_head(h)  # (B, V)
    tok, speaking = gate_step(logits, speaking, gate, gate_noise)  # the speak gate, or argmax when greedy
    unit = model.flow.sample(model.flow_cond(h, tok), flow_noise)
    # silence is the bottom of the unit range: what the assistant channel holds when it is quiet
    unit = torch.where(gate.audible(model.turn_head(h), speaking)[:, None], unit, torch.full_like(unit, -1.0))
    mel = unit_to_mel(unit.clamp(-1, 1), cfg).view(-1, cfg.frames_per_position, cfg.n_mels)  # (B, F, M)
    return Decoded(hidden=h, logits=logits, token=tok, speaking=speaking, mel=mel, bins=quantize(mel, cfg))


DecodeFn = Callable[..., Decoded]


class DecodeStep:
    """`decode_position`, compiled with torch.compile(fullgraph=True) when asked and allowed.

    The batch size is a static shape (one graph per B met), and the compiled step reads the
    whole cache (`kv_len` None: one shape however old the sessions are)."""

    def __init__(self, compile: bool = False) -> None:
        self.compiled: DecodeFn | None = None
        if compile:
            self.compiled = torch.compile(decode_position, fullgraph=True, dynamic=False)

    def uses_compiled(self, model: InteractionModel) -> bool:
        return self.compiled is not None and not model.blocks[0].attn.batch_invariant  # type: ignore[union-attr]

    def __call__(
        self,
        model: InteractionModel,
        cache: KVCache,
        slots: torch.Tensor,
        rows: slice | list[int],
        p: Positions,
        speaking: torch.Tensor,
        gate: BatchGate,
        flow_noise: torch.Tensor,
        gate_noise: torch.Tensor | None,
        *,
        kv_len: int | None,
    ) -> Decoded:
        if self.compiled is not None and self.uses_compiled(model):
            return self.compiled(model, cache, slots, rows, None, p, speaking, gate, flow_noise, gate_noise)
        return decode_position(model, cache, slots, rows, kv_len, p, speaking, gate, flow_noise, gate_noise)

    def describe(self, model: InteractionModel) -> str:
        return "compiled (torch.compile fullgraph)" if self.uses_compiled(model) else "eager"


EAGER = DecodeStep()
