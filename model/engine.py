"""Many sessions per worker: a preallocated KV slot pool and a batched micro-turn step.

Moshi's server serves one conversation at a time behind a lock; the engine steps every
session that has input in one batch: one ragged prefill of all IN_k, then batched decode of
OUT_k (model/session.py:step_batch). Sessions join and leave between steps. Memory is fixed
at construction: `max_sessions` slots of `n_sinks + window` cache entries per layer, so a
full worker says so (CapacityError) instead of accepting a call that would stutter.

One session must not take the others down: `step_isolated` prepares each session's input on
its own (a session that raises there is left out before any shared compute), and when the
batched compute itself raises it reruns each session alone to find the one that fails. A
failed session is closed (its state can no longer be trusted) and named with its reason.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from infra.messages import InputError, MicroTurnInput, MicroTurnOutput
from model.attention import KVCache
from model.interaction import InteractionModel
from model.positions import Positions
from model.session import SessionState, run_batch, step_batch
from model.tokenizer import Tokenizer


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
    ) -> None:
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
        self._free.append(state.slot)
        self._free.sort()

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
                self.model, self.cache, self.tokenizer, [states[i] for i in order], [inputs[i] for i in order]
            )
            result: list[MicroTurnOutput] = [outs[0]] * len(outs)
            for o, i in zip(outs, order, strict=True):
                result[i] = o
            return result

    def step_isolated(self, inputs: list[MicroTurnInput]) -> StepResult:
        """Like `step`, but a session whose input or step raises is closed and reported in
        `StepResult.failed` while every other session is stepped as if it had not been there."""
        result = StepResult()
        t0 = time.perf_counter()
        with self._lock, torch.inference_mode():
            ready: list[tuple[SessionState, MicroTurnInput, Positions]] = []
            for inp in inputs:
                state = self._sessions.get(inp.session_id)
                if state is None or any(r[0] is state for r in ready):
                    continue  # closed meanwhile, or a duplicate: nothing to step
                try:
                    ready.append((state, inp, state.prepare(inp, self.tokenizer)))
                except Exception as e:
                    result.failed[inp.session_id] = _reason(e)
            ready.sort(key=lambda r: r[0].slot)  # slot order: attention reads the cache rows as one view
            try:
                outs = self._run(ready, t0)
            except Exception as e:
                if len(ready) == 1:
                    result.failed[ready[0][0].session_id] = _reason(e)
                    outs = []
                else:
                    # which one? run_batch changes no session state when it raises: rerun each alone
                    outs = []
                    for r in ready:
                        try:
                            outs += self._run([r], t0)
                        except Exception as e1:
                            result.failed[r[0].session_id] = _reason(e1)
            for sid in result.failed:
                if sid in self._sessions:
                    self._close_locked(sid)
        by_id = {o.session_id: o for o in outs}
        result.outputs = [by_id[i.session_id] for i in inputs if i.session_id in by_id]
        return result

    def _run(self, ready: list[tuple[SessionState, MicroTurnInput, Positions]], t0: float) -> list[MicroTurnOutput]:
        if not ready:
            return []
        states = [r[0] for r in ready]
        inputs = [r[1] for r in ready]
        chunks = [r[2] for r in ready]
        return run_batch(self.model, self.cache, self.tokenizer, states, inputs, chunks, t_start=t0)

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
