"""Many sessions per worker: a preallocated KV slot pool and a batched micro-turn step.

Moshi's server serves one conversation at a time behind a lock; the engine steps every
session that has input in one batch: one ragged prefill of all IN_k, then batched decode of
OUT_k (model/session.py:step_batch). Sessions join and leave between steps. Memory is fixed
at construction: `max_sessions` slots of `n_sinks + window` cache entries per layer, so a
full worker says so (CapacityError) instead of accepting a call that would stutter.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from infra.messages import InputError, MicroTurnInput, MicroTurnOutput
from model.attention import KVCache
from model.interaction import InteractionModel
from model.session import SessionState, step_batch
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
