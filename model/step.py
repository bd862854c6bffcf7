"""The two units torch.compile captures: a micro-turn's prefill and one output position.

`decode_position` is embeddings, every layer (cache write and attention), the text head, the
speak gate, the turn head and voice gate, and the flow head's sampling, for B sessions;
`prefill_hidden` is IN_k of B sessions through the trunk, right-padded to one of a few length
buckets (`PREFILL_BUCKETS`, padding goes to the cache's trash entry). Every input is a tensor
or a static Python value, with no host read and no data-dependent shape: so both compile with
`fullgraph=True` (the proof that a CUDA graph can replay them). `compute_batch`
(model/session.py) calls them through `Steps`, eager or compiled.

Eager (the CPU default), the prefill runs one forward per length bucket present
(`length_groups`), each padded only to its own longest chunk: the sessions with a camera frame
or typed text do not drag every other session's 4 audio positions up to their length. Compiled,
it stays one forward padded to one bucket (one graph per batch size and bucket).

What runs eager: deterministic mode. Its attention runs session by session on host-known
lengths (`Lens`, no read back, but Python per session) and its prefill MoE groups rows by
expert on the host (model/moe.py). Eager on a CPU, decode reads back which rows play sound and
samples the flow head for those alone (`sample_audible`); compiled, it samples every row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from model.attention import KVCache
from model.config import ModelConfig
from model.dmel import quantize, unit_to_mel
from model.gate import BatchGate, gate_step
from model.interaction import InteractionModel
from model.positions import Positions, stack

# (q_lens, kv_lens): each session's real positions in the chunk and the cache entries filled
# once it is written, host ints for batch-invariant attention (model/attention.py SessionPlan)
Lens = tuple[list[int], list[int]]

# IN_k lengths a compiled prefill is padded to (then the config's max_chunk): 4 audio positions
# alone, with one camera frame's 12 patches, with some typed text
PREFILL_BUCKETS = (4, 16, 32)


def prefill_length(T: int, max_chunk: int) -> int:
    """The bucket a chunk of T positions is padded to."""
    return next((b for b in PREFILL_BUCKETS if b >= T), max(T, max_chunk))


def length_groups(chunks: list[Positions], cfg: ModelConfig) -> list[list[int]]:
    """The chunks' indices grouped by length bucket, shortest first. Eager prefill runs a group
    per forward: most sessions send 4 audio positions, and padding them to the one with a
    camera frame (16) or typed text would multiply the trunk's rows by up to 4. The extra
    forward's dispatch costs less: a B=32 step with one session in five sending a frame took
    185 ms against 241 as one forward (tests/bench/bench_engine.py `prefill_groups_speedup_B32`)."""
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(chunks):
        groups.setdefault(prefill_length(c.shape[1], cfg.max_chunk), []).append(i)
    return [groups[k] for k in sorted(groups)]


def bucketed(chunks: list[Positions], cfg: ModelConfig) -> Positions:
    """B sessions' IN_k as one batch of a static shape: right-padded to the length bucket of the
    longest, and its camera patches (at most one frame per session) to one frame per session."""
    p = stack(chunks, prefill_length(max(c.shape[1] for c in chunks), cfg.max_chunk))
    if p.patches.shape[0]:
        pad = len(chunks) * cfg.n_patches - p.patches.shape[0]
        p.patches = torch.cat([p.patches, p.patches.new_zeros(pad, *p.patches.shape[1:])])
    return p


def prefill_hidden(
    model: InteractionModel,
    cache: KVCache,
    slots: torch.Tensor,
    rows: slice | list[int],
    kv_len: int | None,
    p: Positions,  # (B, T) IN_k of B sessions, right-padded
    lens: Lens | None = None,
) -> torch.Tensor:
    """(B, T, D) hidden states of the chunk, its keys and values written to the cache."""
    return model(p, cache, slots, rows=rows, kv_len=kv_len, lens=lens).hidden


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
    lens: Lens | None = None,
) -> Decoded:
    cfg = model.cfg
    h = model(p, cache, slots, rows=rows, kv_len=kv_len, lens=lens).hidden[:, 0]  # (B, D)
    logits = model.text_head(h)  # (B, V)
    tok, speaking = gate_step(logits, speaking, gate, gate_noise)  # the speak gate, or argmax when greedy
    audible = gate.audible(model.turn_head(h), speaking)  # (B,)
    unit = sample_audible(model, model.flow_cond(h, tok), flow_noise, audible)
    mel = unit_to_mel(unit.clamp(-1, 1), cfg).view(-1, cfg.frames_per_position, cfg.n_mels)  # (B, F, M)
    return Decoded(hidden=h, logits=logits, token=tok, speaking=speaking, mel=mel, bins=quantize(mel, cfg))


def sample_audible(
    model: InteractionModel,
    cond: torch.Tensor,  # (B, D) the flow head's condition
    noise: torch.Tensor,  # (B, mel_dim)
    audible: torch.Tensor,  # (B,) bool: the rows that play sound
) -> torch.Tensor:
    """(B, mel_dim) units: the flow head's sample where audible, silence (-1, the bottom of the
    unit range: what the assistant channel holds when it is quiet) elsewhere.

    Eager on a CPU only the audible rows are sampled: a quiet row's sample would be thrown away,
    and the model is quiet for most positions of a call (it listens while the user speaks).
    Picking the rows reads `audible` back, which costs nothing on a CPU; on a GPU and under
    torch.compile (a data-dependent shape) every row is sampled. A row's sample is the same
    either way: its noise is its own, and in deterministic mode every flow-head op is per row
    (model/linear.py), so the bits do not depend on which rows share the call."""
    if torch.compiler.is_compiling() or cond.is_cuda:
        return sample_every_row(model, cond, noise, audible)
    rows = audible.nonzero()[:, 0]
    if len(rows) == len(audible):
        return model.flow.sample(cond, noise)
    unit = noise.new_full(noise.shape, -1.0)
    if len(rows):
        unit[rows] = model.flow.sample(cond[rows], noise[rows])
    return unit


def sample_every_row(
    model: InteractionModel, cond: torch.Tensor, noise: torch.Tensor, audible: torch.Tensor
) -> torch.Tensor:
    """`sample_audible` with no host read: every row sampled, the quiet ones then silenced."""
    unit = model.flow.sample(cond, noise)
    return torch.where(audible[:, None], unit, torch.full_like(unit, -1.0))


Fn = Callable[..., torch.Tensor]
DecodeFn = Callable[..., Decoded]


class Steps:
    """`prefill_hidden` and `decode_position`, compiled with torch.compile(fullgraph=True)
    when asked and allowed (not in deterministic mode).

    Compiled, shapes are static: one graph per batch size and prefill bucket met, the prefill
    padded to its bucket (and its camera patches to one frame per session), and both read the
    whole cache (`kv_len` None: one shape however old the sessions are)."""

    def __init__(self, compile: bool = False, backend: str = "inductor") -> None:
        """`backend`: torch.compile's; "aot_eager" captures the same whole graphs without
        generating code (fast to build: the tests' proof that the steps capture whole)."""
        self.compiled: tuple[Fn, DecodeFn] | None = None
        if compile:
            # B x bucket x (frame or not) graphs: more than dynamo's default of 8 per function
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
            self.compiled = (
                torch.compile(prefill_hidden, fullgraph=True, dynamic=False, backend=backend),
                torch.compile(decode_position, fullgraph=True, dynamic=False, backend=backend),
            )

    def uses_compiled(self, model: InteractionModel) -> bool:
        return self._compiled(model) is not None

    def _compiled(self, model: InteractionModel) -> tuple[Fn, DecodeFn] | None:
        return None if model.runs_batch_invariant else self.compiled

    def prefill(
        self,
        model: InteractionModel,
        cache: KVCache,
        slots: torch.Tensor,
        rows: slice | list[int],
        chunks: list[Positions],
        *,
        kv_len: int | None,
        lens: Lens | None = None,
    ) -> torch.Tensor:
        """(B, T, D) for B sessions' IN_k (T = the longest chunk; rows past a chunk are padding)."""
        device = cache.k.device
        T = max(c.shape[1] for c in chunks)
        if (compiled := self._compiled(model)) is not None:
            return compiled[0](model, cache, slots, rows, None, bucketed(chunks, model.cfg).to(device))[:, :T]
        groups = length_groups(chunks, model.cfg)
        if len(groups) == 1:
            return prefill_hidden(model, cache, slots, rows, kv_len, stack(chunks).to(device), lens)
        ids = list(range(rows.start, rows.stop)) if isinstance(rows, slice) else rows
        out: torch.Tensor | None = None
        for group in groups:
            sub_lens = None if lens is None else ([lens[0][i] for i in group], [lens[1][i] for i in group])
            h = prefill_hidden(
                model, cache, slots[group], cache.rows([ids[i] for i in group]), kv_len,
                stack([chunks[i] for i in group]).to(device), sub_lens,
            )  # fmt: skip
            if out is None:
                out = h.new_zeros(len(chunks), T, h.shape[-1])
            out[group, : h.shape[1]] = h
        assert out is not None
        return out

    def decode(
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
        lens: Lens | None = None,
    ) -> Decoded:
        if (compiled := self._compiled(model)) is not None:
            return compiled[1](model, cache, slots, rows, None, p, speaking, gate, flow_noise, gate_noise)
        return decode_position(model, cache, slots, rows, kv_len, p, speaking, gate, flow_noise, gate_noise, lens)

    def describe(self, model: InteractionModel) -> str:
        if not self.uses_compiled(model):
            return "eager"
        buckets = (*PREFILL_BUCKETS, model.cfg.max_chunk)
        return f"compiled (torch.compile fullgraph): prefill in buckets {buckets}, decode"


EAGER = Steps()
