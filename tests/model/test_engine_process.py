from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from infra.bus import MemoryBus
from infra.messages import TURN_SAMPLES, MicroTurnInput
from model.engine import CapacityError, Engine, UnknownSession
from model.engine_process import EngineProcess, EngineProcessError, set_priority
from model.interaction import InteractionModel
from model.neural_vocoder import NeuralVocoder, attach, get_preset
from model.tokenizer import Tokenizer
from model.worker import Worker, WorkerSettings
from tests.model.conftest import micro_config
from tests.model.test_engine import session_inputs
from tests.model.test_worker import TURN_MS, collect, send


@pytest.fixture
def model() -> InteractionModel:
    torch.manual_seed(0)
    return InteractionModel(micro_config(deterministic=True))


@pytest.fixture
def process(model: InteractionModel, tokenizer: Tokenizer) -> Iterator[EngineProcess]:
    engine = EngineProcess(model, tokenizer, 3, torch_threads=1)
    yield engine
    engine.shutdown()


def test_steps_in_the_engine_process_are_an_engine_s_steps(model: InteractionModel, tokenizer: Tokenizer) -> None:
    """Same sessions, inputs (audio, camera frames, typed text) and seeds: the child's outputs,
    audio included, are bitwise those of an engine in this process (deterministic mode; the
    trained vocoder the checkpoint attached to the config is the one the child speaks with)."""
    torch.manual_seed(1)
    net = NeuralVocoder(get_preset("test")).eval()
    attach(model.cfg, net)
    try:
        local = Engine(model, tokenizer, 3)
        remote = EngineProcess(model, tokenizer, 3, torch_threads=torch.get_num_threads())
        try:
            for e in (local, remote):
                for i in range(3):
                    e.open(f"s{i}", seed=i)
            for k in range(4):
                batch = [session_inputs(i, 4)[k] for i in range(3)]
                want = local.step_isolated(batch).outputs
                got = remote.step_isolated(batch, defer_audio=True)
                assert all(o.audio == b"" for o in got.outputs)  # deferred: filled in when the job runs
                for job in got.audio:
                    job.run()
                assert [o.session_id for o in got.outputs] == [o.session_id for o in want]
                for a, b in zip(got.outputs, want, strict=True):
                    assert (a.text_tokens, a.caption_tokens, a.turn) == (b.text_tokens, b.caption_tokens, b.turn)
                    assert a.audio == b.audio and len(a.audio) == 4 * TURN_SAMPLES
        finally:
            remote.shutdown()
    finally:
        attach(model.cfg, None)


def test_the_engine_s_errors_cross_the_pipe(process: EngineProcess) -> None:
    for sid in ("a", "b", "c"):
        process.open(sid)
    assert "a" in process and process.stats().active == 3 and process.stats().free == 0
    with pytest.raises(CapacityError, match="all 3 session slots"):
        process.open("d")
    with pytest.raises(ValueError, match="already open"):
        process.open("a")
    process.close("b")
    assert "b" not in process and process.stats().active == 2
    with pytest.raises(UnknownSession):
        process.close("b")
    process.open("d")  # the freed slot is usable
    assert process.stats().active == 3


def test_a_session_whose_input_fails_is_closed_and_the_rest_step(process: EngineProcess) -> None:
    for sid in ("a", "b"):
        process.open(sid)
    good = MicroTurnInput.from_arrays(np.zeros(TURN_SAMPLES, np.float32), session_id="a")
    bad = MicroTurnInput(audio=b"\x00" * 12, session_id="b")  # not a turn of float32 audio
    result = process.step_isolated([good, bad])
    assert list(result.failed) == ["b"] and "b" not in process and "a" in process
    assert [o.session_id for o in result.outputs] == ["a"] and len(result.outputs[0].audio) == 4 * TURN_SAMPLES


def test_ctrl_c_is_the_parent_s_to_handle(process: EngineProcess) -> None:
    """Ctrl-C reaches the whole process group; the child leaves it to the parent, which stops it."""
    process.open("a")
    os.kill(process.pid, signal.SIGINT)
    inp = MicroTurnInput.from_arrays(np.zeros(TURN_SAMPLES, np.float32), session_id="a")
    assert [o.session_id for o in process.step_isolated([inp]).outputs] == ["a"]


def test_a_dead_engine_process_fails_every_later_call_clearly(process: EngineProcess) -> None:
    process.open("a")
    os.kill(process.pid, signal.SIGKILL)
    inp = MicroTurnInput.from_arrays(np.zeros(TURN_SAMPLES, np.float32), session_id="a")
    with pytest.raises(EngineProcessError, match="exited with code -9"):
        process.step_isolated([inp])
    with pytest.raises(EngineProcessError, match="gone"):
        process.open("b")
    process.shutdown()  # idempotent on a dead child


async def test_the_worker_serves_calls_from_an_engine_process(process: EngineProcess) -> None:
    """The worker runs the child's synthesis jobs on its vocoder thread, in step order: every
    turn of every call arrives, in order, with its audio."""
    bus = MemoryBus()
    worker = Worker(process, bus, WorkerSettings(turn_ms=TURN_MS, late_ms=1000.0))
    await worker.start()
    try:
        sids = ["a", "b"]
        for i, sid in enumerate(sids):
            await worker.open(sid, seed=i)
        collectors = [asyncio.create_task(collect(bus, sid, 5)) for sid in sids]
        await asyncio.sleep(0)
        await asyncio.gather(*(send(bus, sid, range(5), 0.0, random.Random(0)) for sid in sids))
        outs = await asyncio.wait_for(asyncio.gather(*collectors), 60)
    finally:
        await worker.stop()
        await bus.close()
    for sid, o in zip(sids, outs, strict=True):
        assert [x.turn for x in o] == list(range(5)) and all(x.session_id == sid for x in o)
        assert all(len(x.audio) == 4 * TURN_SAMPLES for x in o)


def _thread_nices(pid: int) -> dict[int, int]:
    return {int(t): os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread priorities are Linux's")
def test_the_engine_process_runs_every_thread_at_the_priority_asked(
    model: InteractionModel, tokenizer: Tokenizer
) -> None:
    """A lower priority is always allowed: the child's threads all run at it, those it started
    after (the vocoder's, torch's) included. A higher one needs CAP_SYS_NICE: with it the same,
    without it every thread keeps the parent's and `nice_error` says why."""
    here = os.getpriority(os.PRIO_PROCESS, 0)
    lower = EngineProcess(model, tokenizer, 3, torch_threads=1, nice=min(here + 3, 19))
    try:
        lower.open("s0")
        lower.step_isolated([session_inputs(0, 1)[0]])
        nices = _thread_nices(lower.pid)
        assert len(nices) >= 2  # the engine's thread and the vocoder's at least
        assert set(nices.values()) == {min(here + 3, 19)} and lower.nice == min(here + 3, 19)
        assert lower.nice_error is None
    finally:
        lower.shutdown()
    higher = EngineProcess(model, tokenizer, 3, torch_threads=1, nice=here - 5)
    try:
        nices = _thread_nices(higher.pid)
        if higher.nice_error is None:
            assert set(nices.values()) == {here - 5} and higher.nice == here - 5
        else:
            assert "CAP_SYS_NICE" in higher.nice_error
            assert set(nices.values()) == {here} and higher.nice == here
    finally:
        higher.shutdown()
    assert os.getpriority(os.PRIO_PROCESS, 0) == here  # the parent's own is untouched


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread priorities are Linux's")
def test_a_priority_that_cannot_be_raised_leaves_every_thread_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel refuses a raise without CAP_SYS_NICE, perhaps after other threads were set:
    every thread is set back to its own, and the reason is returned."""
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)  # a second thread: one is set before the refusal
    other.start()
    try:
        before = _thread_nices(os.getpid())
        real = os.setpriority
        calls: list[tuple[int, int]] = []

        def refuse_the_second(which: int, who: int, value: int) -> None:
            calls.append((who, value))
            if len(calls) == 2:
                raise PermissionError(1, "Operation not permitted")
            real(which, who, os.getpriority(os.PRIO_PROCESS, who))  # this test changes no priority for real

        monkeypatch.setattr(os, "setpriority", refuse_the_second)
        error = set_priority(-20)
        monkeypatch.setattr(os, "setpriority", real)
        assert error is not None and "CAP_SYS_NICE" in error
        assert calls[:2] == [(t, -20) for t in list(before)[:2]]
        assert set(before.items()) <= set(calls[2:])  # each thread put back to its own
        assert _thread_nices(os.getpid()) == before
    finally:
        stop.set()
        other.join()
