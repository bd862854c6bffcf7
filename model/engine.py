"""Many sessions per worker: a preallocated KV slot pool and a batched micro-turn step.

Moshi's server serves one conversation at a time behind a lock; the engine steps every
session that has input in one batch: one ragged prefill of all IN_k, then batched decode of
OUT_k (model/session.py:step_batch). Sessions join and leave between steps. Memory is fixed
at construction: `max_sessions` slots of `n_sinks + window` cache entries per layer, so a
full worker says so (CapacityError) instead of accepting a call that would stutter. Open
sessions stay packed into the lowest slots (closing one moves the highest into its place).

One session must not take the others down: `step_isolated` prepares each session's input on
its own (a session that raises there is left out before any shared compute), and when the
batched compute itself raises it reruns each session alone to find the one that fails. A
failed session is closed (its state can no longer be trusted) and named with its reason.

Failover (DESIGN.md §9): with `log_turns` set, every step also returns one `TurnRecord` per
session (what that turn put into its sequence); `restore` rebuilds a session from such records
on another engine with a chunked prefill, so the next step continues where the lost worker was.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from infra.messages import FRAME_SHAPE, InputError, MicroTurnInput, MicroTurnOutput, TurnRecord
from model.attention import KVCache
from model.config import BACKGROUND, USER_TEXT, ModelConfig
from model.interaction import InteractionModel
from model.positions import Positions, concat, input_positions, output_position
from model.session import AudioJob, SessionState, compute_batch, prepare_batch, step_batch
from model.step import Steps
from model.tokenizer import Tokenizer
from model.vision import frame_to_patches

log = logging.getLogger(__name__)


class CapacityError(RuntimeError):
    """Every session slot is taken."""

    def __init__(self, max_sessions: int) -> None:
        super().__init__(f"engine is full: all {max_sessions} session slots (max_sessions={max_sessions}) are in use")
        self.max_sessions = max_sessions


class UnknownSession(KeyError):
    pass


@dataclass(frozen=True)
class EngineStats:
    max_sessions: int
    active: int

    @property
    def free(self) -> int:
        return self.max_sessions - self.active


@dataclass
class StepResult:
    outputs: list[MicroTurnOutput] = field(default_factory=list)  # for the sessions that stepped, in input order
    failed: dict[str, str] = field(default_factory=dict)  # session_id -> why; these sessions are closed
    records: list[TurnRecord] = field(default_factory=list)  # with Engine.log_turns: one per output
    # with defer_audio: the outputs' synthesis, to run in order (their audio is empty until then)
    audio: list[AudioJob] = field(default_factory=list)


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:300]


class Engine:
    """Not thread-safe by itself: the worker calls it from one dedicated thread (a lock guards
    open/close against a concurrent step)."""

    def __init__(
        self,
        model: InteractionModel,
        tokenizer: Tokenizer,
        max_sessions: int,
        *,
        deterministic: bool | None = None,
        compile: bool | str | None = None,
    ) -> None:
        """`compile`: run the prefill and decode steps through torch.compile(fullgraph=True)
        (model/step.py) where the mode allows it; `decode_step` says which run. True: with
        inductor; a string: with that torch.compile backend. None: on a GPU (where a static
        graph can be replayed as a CUDA graph), not on a CPU. There it is no faster than
        eager (tiny, one thread: 67 vs 72 ms a step for 4 sessions, 450 vs ~220 ms for 32):
        its static shapes read the whole cache where eager reads the filled part and pad the
        prefill to one bucket where eager groups it, the GEMMs are the same BLAS calls, and
        each new batch size costs inductor over a minute to build on a 2-core CPU."""
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise ValueError(f"tokenizer vocab {tokenizer.vocab_size} exceeds model vocab_size {model.cfg.vocab_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_sessions = max_sessions
        self.deterministic = model.cfg.deterministic if deterministic is None else deterministic
        model.set_batch_invariant(self.deterministic)
        param = next(model.parameters())
        self.cache = KVCache.allocate(model.cfg, max_sessions, device=param.device, dtype=param.dtype)
        self._free = list(range(max_sessions))  # lowest slot first: reuse is predictable
        self._sessions: dict[str, SessionState] = {}
        self._lock = threading.Lock()
        self.log_turns = False  # build a TurnRecord per session and step (the failover log)
        if compile is None:
            compile = param.device.type == "cuda"
        self.steps = Steps(bool(compile), compile if isinstance(compile, str) else "inductor")
        log.info("engine: %d slots, decode step %s", max_sessions, self.decode_step)
        self._records: list[TurnRecord] = []

    # lifecycle ----------------------------------------------------------------------------
    def open(self, session_id: str, seed: int = 0, *, trace: bool = False) -> None:
        with self._lock:
            if session_id in self._sessions:
                raise ValueError(f"session_id: {session_id!r} is already open")
            if not self._free:
                raise CapacityError(self.max_sessions)
            slot = self._free.pop(0)
            self.cache.reset(slot)
            self._sessions[session_id] = SessionState.new(
                self.model.cfg, self.tokenizer, session_id, seed, slot, trace=trace
            )

    def close(self, session_id: str) -> None:
        with self._lock:
            self._close_locked(session_id)

    def _close_locked(self, session_id: str) -> None:
        state = self._sessions.pop(session_id, None)
        if state is None:
            raise UnknownSession(session_id)
        self.cache.reset(state.slot)  # nothing of this call survives into the next one
        freed = state.slot
        # keep the open sessions packed into the lowest slots: a step over all of them then reads
        # the cache as one view (no gather per layer) and a compiled step sees one layout per B
        last = max(self._sessions.values(), key=lambda s: s.slot, default=None)
        if last is not None and last.slot > freed:
            self.cache.move(last.slot, freed)
            last.slot, freed = freed, last.slot
        self._free.append(freed)
        self._free.sort()

    @property
    def decode_step(self) -> str:
        """Which steps run: compiled or eager."""
        return self.steps.describe(self.model)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def stats(self) -> EngineStats:
        return EngineStats(max_sessions=self.max_sessions, active=len(self._sessions))

    def session(self, session_id: str) -> SessionState:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise UnknownSession(session_id) from None

    # stepping -----------------------------------------------------------------------------
    def step(self, inputs: list[MicroTurnInput]) -> list[MicroTurnOutput]:
        """One micro-turn for each input's session (at most one input per session).

        Outputs come back in input order. A bad input raises InputError before any session
        has been advanced.
        """
        with self._lock:
            seen: set[str] = set()
            states = []
            for inp in inputs:
                if inp.session_id in seen:
                    raise InputError("session_id", f"{inp.session_id!r} appears twice in one step")
                seen.add(inp.session_id)
                state = self._sessions.get(inp.session_id)
                if state is None:
                    raise UnknownSession(inp.session_id)
                inp.validate()
                states.append(state)
            if not states:
                return []
            # slot order lets attention read the cache rows as one view instead of a gather
            order = sorted(range(len(states)), key=lambda i: states[i].slot)
            outs = step_batch(
                self.model,
                self.cache,
                self.tokenizer,
                [states[i] for i in order],
                [inputs[i] for i in order],
                self.steps,
            )
            result: list[MicroTurnOutput] = [outs[0]] * len(outs)
            for o, i in zip(outs, order, strict=True):
                result[i] = o
            return result

    def step_isolated(self, inputs: list[MicroTurnInput], *, defer_audio: bool = False) -> StepResult:
        """Like `step`, but a session whose input or step raises is closed and reported in
        `StepResult.failed` while every other session is stepped as if it had not been there.

        `defer_audio`: leave the vocoder out of the step; `StepResult.audio` holds it, for the
        caller to run on a thread of its own while the next step computes (model/worker.py)."""
        result = StepResult()
        t0 = time.perf_counter()
        with self._lock, torch.inference_mode():
            self._records = []
            todo: dict[str, tuple[SessionState, MicroTurnInput]] = {}
            for inp in inputs:
                state = self._sessions.get(inp.session_id)
                if state is not None and inp.session_id not in todo:  # else closed meanwhile, or a duplicate
                    todo[inp.session_id] = (state, inp)
            states, todo_inputs = [t[0] for t in todo.values()], [t[1] for t in todo.values()]
            ready: list[tuple[SessionState, MicroTurnInput, Positions]] = []
            chunks = prepare_batch(states, todo_inputs, self.tokenizer, batched=not self.deterministic)
            for state, inp, chunk in zip(states, todo_inputs, chunks, strict=True):
                if isinstance(chunk, Exception):
                    result.failed[inp.session_id] = _reason(chunk)
                else:
                    ready.append((state, inp, chunk))
            ready.sort(key=lambda r: r[0].slot)  # slot order: attention reads the cache rows as one view
            try:
                outs = self._run(ready, t0, result.audio)
            except Exception as e:
                if len(ready) == 1:
                    result.failed[ready[0][0].session_id] = _reason(e)
                    outs = []
                else:
                    # which one? compute_batch changes no session state when it raises: rerun each alone
                    outs = []
                    for r in ready:
                        try:
                            outs += self._run([r], t0, result.audio)
                        except Exception as e1:
                            result.failed[r[0].session_id] = _reason(e1)
            for sid in result.failed:
                if sid in self._sessions:
                    self._close_locked(sid)
        by_id = {o.session_id: o for o in outs}
        result.outputs = [by_id[i.session_id] for i in inputs if i.session_id in by_id]
        result.records = [r for r in self._records if r.session_id in by_id]
        self._records = []
        if not defer_audio:
            for job in result.audio:
                job.run()
            result.audio = []
        return result

    def _run(
        self, ready: list[tuple[SessionState, MicroTurnInput, Positions]], t0: float, audio: list[AudioJob]
    ) -> list[MicroTurnOutput]:
        """One batch's compute; appends its synthesis to `audio`."""
        if not ready:
            return []
        states = [r[0] for r in ready]
        inputs = [r[1] for r in ready]
        chunks = [r[2] for r in ready]
        prev = [(s.last_token, s.last_bins) for s in states]  # what output slot 0 is fed
        outs, pending = compute_batch(
            self.model, self.cache, self.tokenizer, states, inputs, chunks, t_start=t0, step=self.steps
        )
        audio.append(pending)
        if self.log_turns:
            self._records += [
                turn_record(self.model.cfg, s, i, c, o, p)
                for s, i, c, o, p in zip(states, inputs, chunks, outs, prev, strict=True)
            ]
        return outs

    # failover -----------------------------------------------------------------------------
    def restore(self, session_id: str, seed: int, records: list[TurnRecord]) -> SessionState:
        """Open `session_id` and rebuild its sequence from logged turns, so the next step continues it.

        Uses the turn-0 record (it holds the attention sinks) when present, plus the newest run of
        consecutive turns. The positions are replayed at their original absolute positions in
        chunks of at most `max_chunk` (what the ring's slack holds: a longer chunk would overwrite
        entries its own first queries still read). When the records reach back to turn 0 the
        rebuilt cache is the one the lost worker had, up to the float rounding of a prefill
        against incremental steps (tests/model/test_restore.py). When older turns were trimmed,
        the replayed positions attend to less history than they first did, so the window is an
        approximation that the next turns wash out of the ring. The vocoder and the caption/text
        UTF-8 decoders start fresh: the first restored turn may click (its Griffin-Lim overlap is
        gone). No records: a fresh open.
        """
        recs = usable_records(records)
        if recs and any(r.seed != seed for r in recs):
            raise ValueError(f"records: logged seed differs from {seed}")
        self.open(session_id, seed)
        if not recs:
            return self.session(session_id)
        with self._lock, torch.inference_mode():
            state = self._sessions.get(session_id)
            if state is None:  # closed meanwhile
                raise UnknownSession(session_id)
            try:
                self._replay(state, recs)
            except Exception:
                self._close_locked(session_id)
                raise
            return state

    def _replay(self, state: SessionState, recs: list[TurnRecord]) -> None:
        cfg = self.model.cfg
        device = self.cache.k.device
        slots = torch.tensor([state.slot], device=device)
        pieces: list[Positions] = []
        next_pos = 0
        for r in recs:
            turn_pieces = record_positions(cfg, r)
            pieces += turn_pieces
            next_pos = r.start_pos + sum(p.shape[1] for p in turn_pieces)
        for group in chunked(pieces, cfg.max_chunk):
            self.model(concat(group).to(device), self.cache, slots)
        last = recs[-1]
        state.turn = last.turn + 1
        state.next_pos = next_pos
        state.last_token = last.out_tokens[-1]
        state.turn_bins = list(_bins(cfg, last.out_bins))
        state.last_bins = state.turn_bins[-1]
        state.speaking = last.speaking
        state.pending_text.extend(last.pending_text)
        state.pending_bg.extend(last.pending_bg)
        if last.audio_tail:
            state.dmel.tail = torch.from_numpy(np.frombuffer(last.audio_tail, dtype="<f4").copy())

    @torch.no_grad()
    def warmup(self) -> None:
        """Run one throwaway step on a scratch session so the first call doesn't pay for
        lazy initialization (allocator, kernels, vocoder tables)."""
        sid = "__warmup__"
        self.open(sid)
        try:
            self.step([MicroTurnInput.from_arrays(np.zeros(self.model.cfg.turn_samples, np.float32), session_id=sid)])
        finally:
            self.close(sid)


def turn_record(
    cfg: ModelConfig,
    state: SessionState,
    inp: MicroTurnInput,
    chunk: Positions,
    out: MicroTurnOutput,
    prev: tuple[int, torch.Tensor],
) -> TurnRecord:
    """What the turn just stepped put into `state`'s sequence (call after compute_batch)."""
    P = cfg.positions_per_turn
    stream, text = chunk.stream[0], chunk.text[0]
    return TurnRecord(
        session_id=state.session_id,
        seed=state.seed,
        turn=state.turn - 1,
        input_turn=inp.turn,
        start_pos=int(chunk.pos[0, 0]),
        in_bins=_bin_bytes(chunk.audio[0, :P]),
        video=inp.video,
        text_ids=text[stream == USER_TEXT].tolist(),
        bg_ids=text[stream == BACKGROUND].tolist(),
        prev_token=prev[0],
        prev_bins=_bin_bytes(prev[1]),
        out_tokens=list(out.text_tokens),
        out_bins=_bin_bytes(torch.stack(state.turn_bins)),
        speaking=state.speaking,
        audio_tail=state.dmel.tail.numpy().astype("<f4").tobytes(),
        pending_text=list(state.pending_text),
        pending_bg=list(state.pending_bg),
    )


def usable_records(records: list[TurnRecord]) -> list[TurnRecord]:
    """Turn 0 (the sinks) if logged, then the newest run of consecutive turns; oldest first."""
    by_turn = {r.turn: r for r in records}
    if not by_turn:
        return []
    newest = max(by_turn)
    first = newest
    while first - 1 in by_turn:
        first -= 1
    run = [by_turn[t] for t in range(first, newest + 1)]
    return ([by_turn[0]] if first > 0 and 0 in by_turn else []) + run


def record_positions(cfg: ModelConfig, r: TurnRecord) -> list[Positions]:
    """A logged turn as the pieces the model was fed: IN_k, then each OUT_k position."""
    P = cfg.positions_per_turn
    in_bins = _bins(cfg, r.in_bins).reshape(cfg.frames_per_turn, cfg.n_mels)
    patches = None if r.video is None else frame_to_patches(np.frombuffer(r.video, np.uint8).reshape(FRAME_SHAPE), cfg)
    pieces = [input_positions(cfg, r.turn, r.start_pos, in_bins, patches, r.text_ids, r.bg_ids)]
    out_bins = _bins(cfg, r.out_bins)
    if len(r.out_tokens) != P or out_bins.shape[0] != P:
        raise ValueError(f"record of turn {r.turn}: expected {P} output positions")
    feed = [(r.prev_token, _bins(cfg, r.prev_bins)[0]), *zip(r.out_tokens[:-1], out_bins[:-1], strict=True)]
    pos = r.start_pos + pieces[0].shape[1]
    for j, (tok, bins) in enumerate(feed):
        pieces.append(output_position(cfg, r.turn, j, pos + j, tok, bins))
    return pieces


def chunked(pieces: list[Positions], max_len: int) -> list[list[Positions]]:
    """Consecutive pieces grouped into prefill chunks of at most `max_len` positions each."""
    groups: list[list[Positions]] = []
    n = 0
    for p in pieces:
        if not groups or n + p.shape[1] > max_len:
            groups.append([])
            n = 0
        groups[-1].append(p)
        n += p.shape[1]
    return groups


def _bin_bytes(bins: torch.Tensor) -> bytes:
    return bins.to(torch.uint8).contiguous().numpy().tobytes()


def _bins(cfg: ModelConfig, data: bytes) -> torch.Tensor:
    """uint8 bytes -> (n, frames_per_position, n_mels) int64."""
    per = cfg.frames_per_position * cfg.n_mels
    if not data or len(data) % per:
        raise ValueError(f"bins: {len(data)} bytes is not a whole number of positions of {per}")
    return (
        torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
        .long()
        .view(-1, cfg.frames_per_position, cfg.n_mels)
    )
