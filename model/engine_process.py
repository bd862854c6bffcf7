"""An Engine in a process of its own: what `microturn serve` runs by default.

Why a process and not the worker's thread: the engine thread and the event loop (aiohttp,
aiortc: RTP, SRTP, jitter buffers, codecs' Python side) share one interpreter. Every torch op
releases the GIL while it computes and must take it back to return; a step is about a thousand
small ops, and while the loop runs Python each of them waits for the loop to let go of the GIL
(the convoy effect: an interpreter switch is only forced after `sys.getswitchinterval()`).
Alone on a core a step takes what the engine bench says; next to a busy loop it took several
times that (tests/bench/bench_gil.py measures both side by side). In its own process the engine
has an interpreter of its own, and the edge's loop has one too.

`EngineProcess` is the part of `Engine`'s surface the worker uses (model/worker.py): open,
close, restore, step_isolated with deferred audio, `in`, stats. The worker calls it from its
one engine thread, as it calls an `Engine`; each call is one request and one reply over a
pipe. The child runs the step's synthesis on a vocoder thread of its own while it computes
the next step (as the worker does in-process) and sends each job's audio over a second pipe;
`RemoteAudio.run`, which the worker's publisher calls in step order, waits for it. What
crosses the pipes is the inputs (200 ms of audio, a frame) and the outputs (text, 200 ms of
audio): a few tens of KB per session and turn.

Priority (`nice`, `microturn serve`'s MICROTURN_ENGINE_NICE, -10 by default): the step is on the
critical path of every call's turn, and the edge has a core of its own by the thread budget
(infra/threads.py), so where the two meet on a core the step should win. At 16 calls on 2 cores
the step's p50 went from 116 to 62 ms and the edge-added p95 latency from 202 to 134 ms, with the
callers' packet rate unchanged (tests/bench/bench_edge.py). Raising a priority needs
CAP_SYS_NICE (or RLIMIT_NICE); without it the child keeps the parent's and `nice_error` says why.

The child dies with its parent (daemon, and a closed pipe ends its loop); a child that dies
first fails every later call with `EngineProcessError`, which the worker reports like any
failing step (a stalled engine on /readyz).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.multiprocessing as tmp

from infra.messages import MicroTurnInput, MicroTurnOutput, TurnRecord
from model.engine import CapacityError, Engine, EngineStats, StepResult, UnknownSession
from model.interaction import InteractionModel
from model.neural_vocoder import NeuralVocoder, attach, attached
from model.session import AudioJob
from model.tokenizer import Tokenizer

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # importing torch and warming up a model on a loaded machine
STOP_TIMEOUT_S = 10.0


class EngineProcessError(RuntimeError):
    """The engine process is gone (or never started)."""


@dataclass
class RemoteAudio:
    """One synthesis job the child runs after a step: fills in its outputs' audio when run."""

    engine: EngineProcess
    job_id: int
    outputs: list[MicroTurnOutput] = field(default_factory=list)

    def run(self) -> None:
        self.engine._receive_audio(self)


class EngineProcess:
    """An `Engine` in a child process; see the module docstring."""

    def __init__(
        self,
        model: InteractionModel,
        tokenizer: Tokenizer,
        max_sessions: int,
        *,
        deterministic: bool | None = None,
        torch_threads: int | None = None,
        nice: int | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        """`nice`: the child's scheduling priority (-20..19, lower runs first; None = the parent's)."""
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.model = model  # the worker reads the config; the child has its own copy
        self.max_sessions = max_sessions
        self.log_turns = False  # the failover log is the Redis worker's (model/service.py), not serve's
        self._sessions: set[str] = set()  # mirrors the child's: read from the event loop without a round trip
        self._lock = threading.Lock()  # one request in flight
        self._audio_lock = threading.Lock()
        self._dead: str | None = None
        ctx = tmp.get_context("spawn")  # never fork a process that holds OpenMP and BLAS threads
        self._conn, child_conn = ctx.Pipe()
        self._audio, child_audio = ctx.Pipe(duplex=False)
        threads = torch_threads or torch.get_num_threads()
        # the trained vocoder is attached to the config object (model/neural_vocoder.py); the
        # child's unpickled config is another object, so it is handed over and attached there
        vocoder = attached(model.cfg)
        args = (child_conn, child_audio, model, vocoder, tokenizer, max_sessions, deterministic, threads, nice)
        self._proc = ctx.Process(
            target=_child_main,
            args=args,
            name="microturn-engine",
            daemon=True,
        )
        self._proc.start()
        child_conn.close()  # ours are the only ends left: the child's exit shows as EOF
        child_audio.close()
        if not self._conn.poll(start_timeout_s):
            self.shutdown()
            raise EngineProcessError(f"engine process did not start within {start_timeout_s:.0f} s")
        try:
            status, detail = self._conn.recv()
        except EOFError:
            self._proc.join(STOP_TIMEOUT_S)
            raise EngineProcessError(f"engine process exited at start (code {self._proc.exitcode})") from None
        if status != "ready":
            self.shutdown()
            raise EngineProcessError(f"engine process failed to start: {detail}")
        self.decode_step: str
        self.nice: int  # the child's nice value, as it runs
        self.nice_error: str | None  # why it is not the one asked for
        self.decode_step, self.nice, self.nice_error = detail
        self.pid: int = self._proc.pid or 0  # started: the OS gave it one
        log.info(
            "engine process %s started: %d slots, decode step %s, nice %d",
            self.pid, max_sessions, self.decode_step, self.nice,
        )  # fmt: skip
        if self.nice_error:
            log.warning("engine process %s runs at nice %d: %s", self.pid, self.nice, self.nice_error)

    # the Engine surface the worker uses -------------------------------------------------------
    def open(self, session_id: str, seed: int = 0) -> None:
        self._request("open", session_id, seed)
        self._sessions.add(session_id)

    def close(self, session_id: str) -> None:
        try:
            self._request("close", session_id)
        finally:
            self._sessions.discard(session_id)

    def restore(self, session_id: str, seed: int, records: list[TurnRecord]) -> None:
        self._request("restore", session_id, seed, records)
        self._sessions.add(session_id)

    def step_isolated(self, inputs: list[MicroTurnInput], *, defer_audio: bool = False) -> StepResult:
        outputs, failed, records, jobs = self._request("step", inputs)
        for sid in failed:
            self._sessions.discard(sid)  # the child's engine closed them
        audio: list[AudioJob] = [RemoteAudio(self, job_id, [outputs[i] for i in idx]) for job_id, idx in jobs]
        result = StepResult(outputs=outputs, failed=failed, records=records, audio=audio)
        if not defer_audio:
            for job in audio:
                job.run()
            result.audio = []
        return result

    def warmup(self) -> None:
        """The child warmed its engine up before it reported ready."""

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def stats(self) -> EngineStats:
        return EngineStats(max_sessions=self.max_sessions, active=len(self._sessions))

    def shutdown(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the child (it finishes the request in flight), then release the pipes."""
        with self._lock:
            if self._proc.is_alive():
                with contextlib.suppress(OSError, EOFError):
                    self._conn.send(("stop", ()))
                self._drain_audio(timeout_s)  # a child blocked sending audio no one ran could not stop
                self._proc.join(timeout_s)
                if self._proc.is_alive():
                    log.warning("engine process %s did not stop in %.0f s: terminated", self._proc.pid, timeout_s)
                    self._proc.terminate()
                    self._proc.join(timeout_s)
            self._dead = self._dead or "stopped"
            self._conn.close()
            self._audio.close()

    # plumbing ------------------------------------------------------------------------------
    def _drain_audio(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._audio_lock:
            while self._proc.is_alive() and time.monotonic() < deadline:
                try:
                    if self._audio.poll(0.05):
                        self._audio.recv()
                except (EOFError, OSError):
                    return

    def _request(self, op: str, *args: object) -> Any:
        with self._lock:
            if self._dead is not None:
                raise EngineProcessError(f"engine process is gone ({self._dead})")
            try:
                self._conn.send((op, args))
                reply = self._conn.recv()
            except (EOFError, OSError) as e:
                self._proc.join(1.0)
                self._dead = f"exited with code {self._proc.exitcode}"
                raise EngineProcessError(f"engine process {self._dead}") from e
        if reply[0] == "ok":
            return reply[1]
        _, kind, message = reply
        if kind == "CapacityError":
            raise CapacityError(self.max_sessions)
        if kind == "UnknownSession":
            raise UnknownSession(message)
        if kind == "ValueError":
            raise ValueError(message)
        raise RuntimeError(f"{kind}: {message}")

    def _receive_audio(self, job: RemoteAudio) -> None:
        """The worker runs jobs in step order and the child sends them in that order, so the
        next message is this job's, or an older one whose run was skipped (passed over)."""
        with self._audio_lock:
            while True:
                try:
                    job_id, audio, step_ms, error = self._audio.recv()
                except (EOFError, OSError) as e:
                    raise EngineProcessError("engine process is gone: no audio for its last step") from e
                if job_id == job.job_id:
                    break
                if job_id > job.job_id:
                    raise RuntimeError(f"engine process: audio of job {job_id} came before job {job.job_id}'s")
        if error is not None or audio is None or step_ms is None:
            raise RuntimeError(f"engine process: synthesis failed: {error}")
        for out, a, ms in zip(job.outputs, audio, step_ms, strict=True):
            out.audio = a
            out.step_ms = ms


def set_priority(nice: int) -> str | None:
    """Run every thread of this process at `nice`, and the threads they start after (Linux sets
    it per thread, and a new thread takes its creator's). Returns None, or why not (then every
    thread keeps its own): raising a priority needs CAP_SYS_NICE or a RLIMIT_NICE allowing it."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the process's priority is the one there is
        tids = [0]
    before = {tid: os.getpriority(os.PRIO_PROCESS, tid) for tid in tids}
    try:
        for tid in tids:
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.setpriority(os.PRIO_PROCESS, tid, nice)
    except PermissionError:
        for tid, value in before.items():  # all or none: lowering back is always allowed
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, value)
        return f"nice {nice} needs CAP_SYS_NICE or RLIMIT_NICE (MICROTURN_ENGINE_NICE=0 asks for none)"
    except OSError as e:
        return f"nice {nice}: {e}"
    return None


def _child_main(
    conn: Connection,
    audio_conn: Connection,
    model: InteractionModel,
    vocoder: NeuralVocoder | None,
    tokenizer: Tokenizer,
    max_sessions: int,
    deterministic: bool | None,
    threads: int,
    nice: int | None,
) -> None:
    # Ctrl-C reaches the whole process group: the parent shuts down and stops us over the pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    nice_error = set_priority(nice) if nice is not None else None  # before any thread of ours starts
    torch.set_num_threads(threads)
    try:
        attach(model.cfg, vocoder)
        engine = Engine(model, tokenizer, max_sessions, deterministic=deterministic)
        engine.warmup()
    except Exception as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", (engine.decode_step, os.getpriority(os.PRIO_PROCESS, 0), nice_error)))
    # one step's audio queued while the next computes, as the in-process worker does
    jobs: queue.Queue[tuple[int, Any] | None] = queue.Queue(maxsize=1)

    def vocode() -> None:
        while (item := jobs.get()) is not None:
            job_id, job = item
            try:
                job.run()
                audio_conn.send((job_id, [o.audio for o in job.outputs], [o.step_ms for o in job.outputs], None))
            except (BrokenPipeError, EOFError):
                return  # the parent is gone
            except Exception as e:
                audio_conn.send((job_id, None, None, f"{type(e).__name__}: {e}"))

    synth = threading.Thread(target=vocode, name="vocoder", daemon=True)
    synth.start()
    next_job = 0
    try:
        while True:
            try:
                op, args = conn.recv()
            except (EOFError, OSError):
                break  # the parent is gone
            if op == "stop":
                break
            pending: list[tuple[int, Any]] = []
            try:
                value = _handle(engine, op, args)
                if op == "step":
                    result: StepResult = value
                    where = {id(o): i for i, o in enumerate(result.outputs)}
                    pending = [(next_job + n, job) for n, job in enumerate(result.audio)]
                    next_job += len(pending)
                    ids = [(job_id, [where[id(o)] for o in job.outputs]) for job_id, job in pending]
                    value = (result.outputs, result.failed, result.records, ids)
                reply: tuple[object, ...] = ("ok", value)
            except Exception as e:
                reply = ("err", type(e).__name__, e.args[0] if isinstance(e, KeyError) and e.args else str(e))
            try:
                conn.send(reply)  # before the synthesis touches these outputs
            except (BrokenPipeError, OSError):
                break
            for item in pending:
                jobs.put(item)  # waits while the vocoder is a step behind
    finally:
        jobs.put(None)
        synth.join(STOP_TIMEOUT_S)


def _handle(engine: Engine, op: str, args: tuple[Any, ...]) -> Any:
    if op == "open":
        return engine.open(*args)
    if op == "close":
        return engine.close(*args)
    if op == "restore":
        engine.restore(*args)
        return None
    if op == "step":
        return engine.step_isolated(args[0], defer_audio=True)
    raise ValueError(f"engine process: unknown request {op!r}")
