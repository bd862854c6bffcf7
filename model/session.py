"""Streaming sessions: 200 ms in, 200 ms out.

`SessionState` is everything one call owns besides its KV cache slot: featurizer tails, the
vocoder's overlap state, the last output (it feeds the next turn's first output slot), and
queues of typed and background text that did not fit into earlier turns. The model reads
`max_text_tokens_per_turn` typed tokens per turn, so typed text that arrives faster would wait
longer and longer: the typed-text backlog is capped (`max_text_backlog` tokens) and a message
that does not fit is dropped whole, counted, and reported on the next output
(`MicroTurnOutput.text_dropped`) so the client can be told.
`step_batch` runs one micro-turn for many sessions: one ragged prefill of every IN_k, then
`positions_per_turn` batched decode steps for OUT_k (`compute_batch`), then the audio
(`PendingAudio`, which the worker runs on its own thread instead). `InteractionSession` is the
single-session API on top of it; the engine (model/engine.py) is the same call over a slot pool.
"""

from __future__ import annotations

import codecs
import time
import unicodedata
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from infra.messages import MicroTurnInput, MicroTurnOutput
from model import rng
from model.attention import KVCache
from model.config import MODEL_OUT, GateConfig, ModelConfig
from model.dmel import DMelStream, push_batch, quantize
from model.gate import BatchGate
from model.interaction import InteractionModel
from model.neural_vocoder import Vocoder, new_vocoder, vocode_batch
from model.positions import Positions, empty_patches, input_positions, output_position
from model.step import EAGER, Steps
from model.tokenizer import Tokenizer
from model.vision import frame_to_patches

# Typed tokens that may wait for the model: one full-size client event (4096 bytes, at most one
# byte-level token per byte) always fits, and at 32 tokens per turn it is read within ~26 s.
MAX_TEXT_BACKLOG = 4096


class IncrementalDecoder:
    """Byte-level BPE tokens -> text deltas.

    Joins the tokens' raw bytes through an incremental UTF-8 decoder, so a character split
    across tokens or turns comes out whole when its last byte arrives; bytes that can never be
    UTF-8 become U+FFFD, and control characters (other than newline and tab) are dropped so a
    babbling model cannot put them on a caption line.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: list[int]) -> str:
        text = self._utf8.decode(b"".join(self.tok.token_bytes(i) for i in ids))
        return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")


@dataclass
class TurnTrace:
    """What one turn fed the model and what came out (for tests and debugging)."""

    chunks: list[Positions]
    hidden: torch.Tensor  # (T_in + P, D)
    text_logits: torch.Tensor  # (P, V)
    caption_logits: torch.Tensor  # (P, V)


@dataclass
class SessionState:
    cfg: ModelConfig
    session_id: str
    seed: int
    slot: int
    dmel: DMelStream
    vocoder: Vocoder
    text_decoder: IncrementalDecoder
    caption_decoder: IncrementalDecoder
    last_bins: torch.Tensor  # (F, M) int64: the previous output position's mel, fed to the next
    turn: int = 0
    next_pos: int = 0
    last_token: int = 0
    pending_text: deque[int] = field(default_factory=deque)
    pending_bg: deque[int] = field(default_factory=deque)
    trace: list[TurnTrace] | None = None
    max_text_backlog: int = MAX_TEXT_BACKLOG
    text_dropped: int = 0  # typed tokens dropped since the last output said so
    text_dropped_total: int = 0
    bg_dropped: int = 0
    gate: GateConfig | None = None  # None = the model config's (model/gate.py)
    speaking: bool = False  # the gate's state after the last output position
    # the last turn's output positions' bins, each fed to the next position (the failover log keeps them)
    turn_bins: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def new(
        cls, cfg: ModelConfig, tokenizer: Tokenizer, session_id: str, seed: int, slot: int, trace: bool = False
    ) -> SessionState:
        return cls(
            cfg=cfg,
            session_id=session_id,
            seed=seed,
            slot=slot,
            dmel=DMelStream(cfg),
            vocoder=new_vocoder(cfg),  # the checkpoint's trained vocoder if it ships one, else Griffin-Lim
            text_decoder=IncrementalDecoder(tokenizer),
            caption_decoder=IncrementalDecoder(tokenizer),
            last_token=tokenizer.pad_id,
            last_bins=torch.zeros(cfg.frames_per_position, cfg.n_mels, dtype=torch.long),  # bin 0 = silence
            trace=[] if trace else None,
        )

    def prepare(self, inp: MicroTurnInput, tokenizer: Tokenizer, bins: torch.Tensor | None = None) -> Positions:
        """Featurize one input into IN_k. Raises InputError/ValueError naming the bad field.
        `bins`: its audio's dMel bins (frames_per_turn, M), already pushed through this
        session's `dmel` for a validated input (`prepare_batch`); None: featurized here."""
        cfg = self.cfg
        if bins is None:
            inp.validate()
            bins = quantize(self.dmel.push(torch.from_numpy(inp.audio_array().copy())), cfg)  # (frames_per_turn, M)
        frame = inp.video_array()
        patches = None if frame is None else frame_to_patches(frame, cfg)
        if inp.text:
            ids = tokenizer.encode(inp.text)
            if len(self.pending_text) + len(ids) > self.max_text_backlog:
                # whole, not truncated: what was accepted earlier stays intact and in order
                self.text_dropped += len(ids)
                self.text_dropped_total += len(ids)
            else:
                self.pending_text.extend(ids)
        if inp.background:
            bg = [tokenizer.bg_id, *tokenizer.encode(inp.background)]
            if len(self.pending_bg) + len(bg) <= self.max_text_backlog:  # bounded like typed text
                self.pending_bg.extend(bg)
            else:
                self.bg_dropped += len(bg)
        text_ids = _take(self.pending_text, cfg.max_text_tokens_per_turn)
        bg_ids = _take(self.pending_bg, cfg.max_background_tokens_per_turn)
        return input_positions(cfg, self.turn, self.next_pos, bins, patches, text_ids, bg_ids)

    def take_text_dropped(self) -> int:
        """Typed tokens dropped since the previous call (reported once, on the next output)."""
        n, self.text_dropped = self.text_dropped, 0
        return n


def _take(q: deque[int], n: int) -> list[int]:
    return [q.popleft() for _ in range(min(n, len(q)))]


def prepare_batch(
    states: list[SessionState], inputs: list[MicroTurnInput], tokenizer: Tokenizer, *, batched: bool
) -> list[Positions | Exception]:
    """`SessionState.prepare` for each (state, input) pair: its IN_k, or the error that rejects
    that input alone. `batched`: the audio of every valid input featurized as one batch
    (`push_batch`: a B=32 step spent ~20 ms in per-session featurization). Batch-invariant
    serving passes False: a session's features must not depend on who shares its batch."""
    bins: list[torch.Tensor | None] = [None] * len(inputs)
    errors: dict[int, Exception] = {}
    if batched:
        for i, inp in enumerate(inputs):
            try:
                inp.validate()
            except Exception as e:
                errors[i] = e
        ok = [i for i in range(len(inputs)) if i not in errors]
        if ok:
            audio = torch.from_numpy(np.stack([inputs[i].audio_array() for i in ok]))  # (B, turn_samples)
            q = quantize(push_batch([states[i].dmel for i in ok], audio), states[0].cfg)  # (B, F, M)
            for i, b in zip(ok, q.unbind(0), strict=True):
                bins[i] = b
    out: list[Positions | Exception] = []
    for i, (state, inp) in enumerate(zip(states, inputs, strict=True)):
        if i in errors:
            out.append(errors[i])
            continue
        try:
            out.append(state.prepare(inp, tokenizer, bins[i]))
        except Exception as e:
            out.append(e)
    return out


@torch.inference_mode()
def step_batch(
    model: InteractionModel,
    cache: KVCache,
    tokenizer: Tokenizer,
    states: list[SessionState],
    inputs: list[MicroTurnInput],
    step: Steps = EAGER,
) -> list[MicroTurnOutput]:
    """One micro-turn for every (state, input) pair: ragged prefill, then batched decode."""
    t_start = time.perf_counter()
    chunks: list[Positions] = []
    for c in prepare_batch(states, inputs, tokenizer, batched=not model.runs_batch_invariant):
        if isinstance(c, Exception):
            raise c
        chunks.append(c)
    outputs, audio = compute_batch(model, cache, tokenizer, states, inputs, chunks, t_start=t_start, step=step)
    audio.run()
    return outputs


class AudioJob(Protocol):
    """A step's synthesis still to run (in step order): `PendingAudio` in process, or the
    engine process's (model/engine_process.py `RemoteAudio`)."""

    outputs: list[MicroTurnOutput]

    def run(self) -> None: ...


@dataclass
class PendingAudio:
    """A batch's turn of audio still to synthesize: each session's vocoder and its new mel.

    The engine's worker runs it on a thread of its own (model/worker.py), so Griffin-Lim
    overlaps the next model step instead of adding to it. A vocoder carries overlap state from
    one turn to the next: a session's turns must be run in order (one thread, FIFO)."""

    vocoders: list[Vocoder]
    mel: torch.Tensor  # (B, frames_per_turn, M) on the CPU
    outputs: list[MicroTurnOutput]  # audio and step_ms are filled in by `run`
    exact: bool = True  # each session's audio bitwise as if alone (deterministic serving)

    def run(self) -> None:
        t0 = time.perf_counter()
        wave = vocode_batch(self.vocoders, self.mel, exact=self.exact)  # (B, samples)
        audio = wave.clamp(-1, 1).numpy().astype("<f4")
        ms = (time.perf_counter() - t0) * 1000
        for out, a in zip(self.outputs, audio, strict=True):
            out.audio = a.tobytes()
            out.step_ms += ms  # the turn's compute: model step plus its synthesis


@torch.inference_mode()
def compute_batch(
    model: InteractionModel,
    cache: KVCache,
    tokenizer: Tokenizer,
    states: list[SessionState],
    inputs: list[MicroTurnInput],
    chunks: list[Positions],
    *,
    t_start: float | None = None,
    step: Steps = EAGER,
) -> tuple[list[MicroTurnOutput], PendingAudio]:
    """The batched part of a micro-turn, for chunks from `SessionState.prepare`: outputs
    without their audio, and the synthesis that fills it in (`PendingAudio.run`).

    Sessions' positions, last output and turn counter change only after all the compute
    succeeded, so when this raises it can be run again with the same chunks for a subset of
    the sessions (model/engine.py isolates a failing session that way): the rerun rewrites the
    cache entries the failed run wrote, at the same positions. The vocoders change only when
    the audio is run.
    """
    cfg = model.cfg
    device = cache.k.device
    t_start = time.perf_counter() if t_start is None else t_start
    B, P = len(states), cfg.positions_per_turn
    slot_ids = [s.slot for s in states]
    slots = torch.tensor(slot_ids, device=device)
    rows = cache.rows(slot_ids)
    start_out = [s.next_pos + c.shape[1] for s, c in zip(states, chunks, strict=True)]
    kv_len = kv_bucket(max(start_out) + P, cache.cache_len)  # entries beyond are still empty
    exact = model.runs_batch_invariant
    C = cache.cache_len
    # batch-invariant attention reads each session's own lengths from here, not from the tensors
    lens = ([c.shape[1] for c in chunks], [min(s, C) for s in start_out]) if exact else None
    hidden_in = step.prefill(model, cache, slots, rows, chunks, kv_len=kv_len, lens=lens)  # (B, T, D)
    gates = [s.gate or cfg.gate for s in states]
    gate = BatchGate.build(
        gates, [s.seed for s in states], [s.turn for s in states], tokenizer.pad_id, tokenizer.eot_id, device
    )
    speaking = torch.tensor([s.speaking for s in states], dtype=torch.bool, device=device)

    caption_logits = model.caption_head(hidden_in[:, :P])  # (B, P, V): audio positions come first
    # everything per session is built here, once per turn, so the P decode steps are tensor work
    out = OutputSteps.build(cfg, states, start_out, device)
    flow_noise = (
        torch.stack([torch.stack([rng.noise(s.seed, s.turn, j, cfg.mel_dim) for j in range(P)]) for s in states])
        .transpose(0, 1)
        .contiguous()
        .to(device)
    )  # (P, B, mel_dim)
    gate_noise = None
    if any(g.temperature > 0 for g in gates):  # the gate's Gumbel noise (BatchGate.step), all positions at once
        V = cfg.vocab_size
        rows_noise = [
            [rng.gumbel(s.seed, s.turn, j, V) if g.temperature > 0 else torch.zeros(V) for j in range(P)]
            for s, g in zip(states, gates, strict=True)
        ]
        gate_noise = torch.stack([torch.stack(r) for r in rows_noise]).transpose(0, 1).contiguous().to(device)

    tok = torch.tensor([s.last_token for s in states], device=device)  # (B,) fed to output slot 0
    bins = torch.stack([s.last_bins for s in states]).to(device)  # (B, F, M)
    toks, all_bins, mels, out_hidden, out_logits = [], [], [], [], []
    for j in range(P):
        d = step.decode(
            model, cache, slots, rows, out.position(j, tok, bins), speaking, gate, flow_noise[j],
            None if gate_noise is None else gate_noise[j], kv_len=kv_len,
            lens=([1] * B, [min(s + j + 1, C) for s in start_out]) if exact else None,
        )  # fmt: skip
        h, logits, tok, speaking, mel, bins = d.hidden, d.logits, d.token, d.speaking, d.mel, d.bins
        toks.append(tok)
        all_bins.append(bins)
        mels.append(mel)
        out_hidden.append(h)
        out_logits.append(logits)

    # one transfer per turn: the host needs tokens, bins and mel only now
    captions = caption_logits.argmax(-1).tolist()
    tokens: list[list[int]] = torch.stack(toks, dim=1).tolist()  # (B, P)
    bins_host = torch.stack(all_bins, dim=1).cpu()  # (B, P, F, M)
    turn_bins = [list(bins_host[b].unbind(0)) for b in range(B)]
    next_pos = [p + P for p in start_out]
    last_token = [t[-1] for t in tokens]
    last_bins = [tb[-1] for tb in turn_bins]
    now_speaking = speaking.tolist()

    turn_mel = torch.cat(mels, dim=1).cpu()  # (B, frames_per_turn, M)
    if not torch.isfinite(turn_mel).all():  # here, not in the vocoder's thread: the engine isolates who
        raise ValueError("model output: non-finite mel")
    step_ms = (time.perf_counter() - t_start) * 1000
    outputs = []
    for b, s in enumerate(states):
        if s.trace is not None:  # before the state moves on: slot 0 is fed the previous turn's last output
            fed = _fed_positions(cfg, s, start_out[b], tokens[b], turn_bins[b])
        s.next_pos, s.last_token, s.last_bins = next_pos[b], last_token[b], last_bins[b]
        s.speaking = now_speaking[b]
        s.turn_bins = turn_bins[b]
        if s.trace is not None:
            n_in = chunks[b].shape[1]
            s.trace.append(
                TurnTrace(
                    chunks=[chunks[b], *fed],
                    hidden=torch.cat([hidden_in[b, :n_in], torch.stack([h[b] for h in out_hidden])]).cpu(),
                    text_logits=torch.stack([lg[b] for lg in out_logits]).cpu(),
                    caption_logits=caption_logits[b].cpu(),
                )
            )
        outputs.append(
            MicroTurnOutput(
                session_id=s.session_id,
                turn=s.turn,
                audio=b"",
                text=s.text_decoder.push(tokens[b]),
                caption=s.caption_decoder.push(captions[b]),
                text_tokens=tokens[b],
                caption_tokens=captions[b],
                delegate=tokenizer.delegate_id in tokens[b],
                gap=inputs[b].gap,
                step_ms=step_ms,
                text_dropped=s.take_text_dropped(),
            )
        )
        s.turn += 1
    return outputs, PendingAudio([s.vocoder for s in states], turn_mel, outputs, exact=exact)


def kv_bucket(n: int, cache_len: int, bucket: int = 64) -> int:
    """Cache entries a turn must read when its newest position is n - 1 (a ring that has not
    wrapped is filled from the front), rounded up to a multiple of `bucket` so a compiled step
    meets few distinct shapes."""
    return min(cache_len, -(-n // bucket) * bucket)


@dataclass
class OutputSteps:
    """A turn's output positions for B sessions as batched tensors: what `output_position`
    builds for one session and slot, built once per turn instead of per session and position."""

    time: torch.Tensor  # (B, P) float64
    pos: torch.Tensor  # (B,) int64 position of output slot 0
    stream: torch.Tensor  # (B, 1)
    video: torch.Tensor  # (B, 1)
    patches: torch.Tensor  # (0, 3, P, P)

    @classmethod
    def build(cls, cfg: ModelConfig, states: list[SessionState], start: list[int], device: torch.device) -> OutputSteps:
        P, B = cfg.positions_per_turn, len(states)
        # the same float arithmetic as output_position, so the time embedding matches bitwise
        times = [
            [(s.turn + 1) * cfg.micro_turn_ms / 1000 + j * cfg.position_ms / 1000 for j in range(P)] for s in states
        ]
        return cls(
            time=torch.tensor(times, dtype=torch.float64, device=device),
            pos=torch.tensor(start, device=device),
            stream=torch.full((B, 1), MODEL_OUT, device=device),
            video=torch.full((B, 1), -1, device=device),
            patches=empty_patches(cfg).to(device),
        )

    def position(self, j: int, tok: torch.Tensor, bins: torch.Tensor) -> Positions:
        """Output slot j fed with the previous output: tok (B,), bins (B, F, M)."""
        return Positions(
            stream=self.stream,
            time=self.time[:, j : j + 1],
            pos=self.pos[:, None] + j,
            audio=bins[:, None],
            text=tok[:, None],
            video=self.video,
            patches=self.patches,
        )


def _fed_positions(
    cfg: ModelConfig, s: SessionState, start: int, tokens: list[int], bins: list[torch.Tensor]
) -> list[Positions]:
    """The output positions one session was fed this turn, one (1, 1) Positions each (for traces)."""
    feed = [(s.last_token, s.last_bins), *zip(tokens[:-1], bins[:-1], strict=True)]
    return [output_position(cfg, s.turn, j, start + j, t, b) for j, (t, b) in enumerate(feed)]


class InteractionSession:
    """One streaming session on its own one-slot cache.

    >>> sess = InteractionSession(model, tokenizer, seed=7)
    >>> out = sess.step(MicroTurnInput.from_arrays(np.zeros(3200, np.float32)))
    """

    def __init__(
        self,
        model: InteractionModel,
        tokenizer: Tokenizer,
        seed: int = 0,
        session_id: str = "local",
        trace: bool = False,
    ) -> None:
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise ValueError(
                f"tokenizer: vocab of {tokenizer.vocab_size} does not fit the model's vocab_size {model.cfg.vocab_size}"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        param = next(model.parameters())
        self.cache = KVCache.allocate(model.cfg, 1, device=param.device, dtype=param.dtype)
        self.state = SessionState.new(model.cfg, tokenizer, session_id, seed, slot=0, trace=trace)

    @property
    def trace(self) -> list[TurnTrace]:
        if self.state.trace is None:
            raise RuntimeError("session was created without trace=True")
        return self.state.trace

    def step(self, inp: MicroTurnInput) -> MicroTurnOutput:
        return step_batch(self.model, self.cache, self.tokenizer, [self.state], [inp])[0]

    def step_audio(self, audio: np.ndarray, **kw: object) -> MicroTurnOutput:
        return self.step(MicroTurnInput.from_arrays(audio, **kw))  # type: ignore[arg-type]
