from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import numpy as np
import pytest
import torch

from infra import keys
from infra.bus import MemoryBus
from infra.messages import TURN_SAMPLES, MicroTurnInput, MicroTurnOutput
from model.engine import CapacityError, Engine
from model.interaction import InteractionModel
from model.tokenizer import Tokenizer
from model.worker import Worker, WorkerSettings
from tests.model.conftest import micro_config

TURN_MS = 100.0  # faster than real time to keep the test short; the logic is rate-agnostic


@pytest.fixture
async def setup(tokenizer: Tokenizer) -> AsyncIterator[tuple[Worker, MemoryBus]]:
    torch.manual_seed(0)
    engine = Engine(InteractionModel(micro_config()), tokenizer, max_sessions=8)
    engine.warmup()  # as the service does: the first step's lazy init would make calls skip turns
    bus = MemoryBus()
    worker = Worker(engine, bus, WorkerSettings(turn_ms=TURN_MS, late_ms=150.0))
    await worker.start()
    yield worker, bus
    await worker.stop()
    await bus.close()


def audio(k: int) -> np.ndarray:
    t = (np.arange(TURN_SAMPLES) + k * TURN_SAMPLES) / 16000
    return (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


async def send(bus: MemoryBus, sid: str, turns: range, jitter_ms: float, rnd: random.Random) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for k in turns:
        # due at k * turn, arriving up to jitter late (and so sometimes bunched with the next)
        at = start + k * TURN_MS / 1000 + rnd.uniform(0, jitter_ms) / 1000
        await asyncio.sleep(max(0.0, at - loop.time()))
        await bus.publish_struct(keys.inputs("local"), MicroTurnInput.from_arrays(audio(k), session_id=sid, turn=k))


async def collect(bus: MemoryBus, sid: str, n: int) -> list[MicroTurnOutput]:
    sub = bus.subscribe(keys.outputs(sid))
    out = []
    async for data in sub:
        out.append(msgspec.msgpack.decode(data, type=MicroTurnOutput))
        if len(out) == n:
            break
    sub.close()
    return out


async def test_jittered_sessions_get_every_output_in_order(setup: tuple[Worker, MemoryBus]) -> None:
    worker, bus = setup
    n_turns, sids = 10, [f"call-{i}" for i in range(8)]
    for i, sid in enumerate(sids):
        await worker.open(sid, seed=i)
    collectors = [asyncio.create_task(collect(bus, sid, n_turns)) for sid in sids]
    await asyncio.sleep(0)
    rnd = random.Random(0)
    await asyncio.gather(*(send(bus, sid, range(n_turns), 60.0, rnd) for sid in sids))
    results = await asyncio.wait_for(asyncio.gather(*collectors), 30)
    for sid, outs in zip(sids, results, strict=True):
        assert [o.turn for o in outs] == list(range(n_turns)), (sid, worker.skipped_turns, worker.stale_inputs)
        assert all(o.session_id == sid and len(o.audio_array()) == TURN_SAMPLES for o in outs)
    # batching happened: fewer steps than session-turns
    assert len(worker.step_times) < len(sids) * n_turns
    # a turn is gap-stepped only if the machine fell behind; then its input was dropped, never stepped twice
    n_gaps = sum(o.gap for outs in results for o in outs)
    # (the worker keeps gap-stepping turns 10, 11, ... once the inputs stop, so not ==)
    assert n_gaps <= worker.gap_steps
    assert worker.stale_inputs <= n_gaps


async def test_missing_input_is_gap_stepped_and_late_arrival_dropped(setup: tuple[Worker, MemoryBus]) -> None:
    worker, bus = setup
    await worker.open("a")
    collector = asyncio.create_task(collect(bus, "a", 6))
    await asyncio.sleep(0)
    rnd = random.Random(1)
    await send(bus, "a", range(0, 3), 0.0, rnd)
    await asyncio.sleep(0.7)  # turn 3 never comes in time (due +100 ms, late +150 ms): worker must gap-step it
    await bus.publish_struct(keys.inputs("local"), MicroTurnInput.from_arrays(audio(3), session_id="a", turn=3))
    for k in (4, 5):
        await bus.publish_struct(keys.inputs("local"), MicroTurnInput.from_arrays(audio(k), session_id="a", turn=k))
        await asyncio.sleep(TURN_MS / 1000)
    outs = await asyncio.wait_for(collector, 10)
    assert [o.turn for o in outs] == list(range(6))
    gaps = [o.turn for o in outs if o.gap]
    assert 3 in gaps and 0 not in gaps
    assert worker.stale_inputs >= 1  # the late turn-3 input was dropped, not stepped twice


@pytest.mark.parametrize(
    ("estimate_s", "max_gather_ms", "together"),
    [
        (0.6, 1000.0, True),  # the next input is due before a step would end: one batch
        (0.0, 1000.0, False),  # no step has run yet (nothing to wait for): each steps at once
        (10.0, 60.0, False),  # a step estimate beyond the cap waits only max_gather_ms
    ],
)
async def test_a_ready_input_waits_for_inputs_due_before_its_step_would_end(
    tokenizer: Tokenizer, estimate_s: float, max_gather_ms: float, together: bool
) -> None:
    """Two calls whose turns are 0.3 s out of phase: with steps slower than that they share one
    step (the first input waits for the second), otherwise each input is stepped as it lands."""
    torch.manual_seed(0)
    engine = Engine(InteractionModel(micro_config()), tokenizer, max_sessions=2)
    engine.warmup()
    bus = MemoryBus()
    # 600 ms turns, the calls 300 ms apart; late_ms long: nothing may be gap-stepped while the test paces it
    settings = WorkerSettings(turn_ms=600.0, late_ms=5000.0, max_gather_ms=max_gather_ms)
    worker = Worker(engine, bus, settings)
    batches: list[list[str]] = []
    step = worker._step

    async def recording(batch: list[MicroTurnInput]) -> Any:
        batches.append(sorted(i.session_id for i in batch))
        return await step(batch)

    worker._step = recording  # type: ignore[method-assign]
    await worker.start()
    try:
        for sid in "ab":
            await worker.open(sid)
        collectors = [asyncio.create_task(collect(bus, sid, 2)) for sid in "ab"]
        await asyncio.sleep(0)
        for k in (0, 1):  # turn 0 sets when each call's next input is due; turn 1 is measured
            if k == 1:
                worker.step_times.clear()
                worker.step_times.extend([estimate_s] * 8)
            for sid in "ab":
                inp = MicroTurnInput.from_arrays(audio(k), session_id=sid, turn=k)
                await bus.publish_struct(keys.inputs("local"), inp)
                await asyncio.sleep(0.3)
        outs = await asyncio.wait_for(asyncio.gather(*collectors), 30)
    finally:
        await worker.stop()
        await bus.close()
    assert [[o.turn for o in o_s] for o_s in outs] == [[0, 1], [0, 1]]
    assert not any(o.gap for o_s in outs for o in o_s)
    turn1 = batches[-1:] if together else batches[-2:]
    assert turn1 == ([["a", "b"]] if together else [["a"], ["b"]]), batches
    if not together:
        assert worker.gather_waits[-1] <= max(0.0, min(estimate_s, max_gather_ms / 1000)) + 0.05


async def test_full_worker_refuses_and_close_frees(setup: tuple[Worker, MemoryBus]) -> None:
    worker, _ = setup
    for i in range(8):
        await worker.open(f"s{i}")
    with pytest.raises(CapacityError, match="max_sessions=8"):
        await worker.open("one-too-many")
    await worker.close("s0")
    await worker.open("one-too-many")
    assert worker.engine.stats().active == 8


async def test_turn_numbers_leaping_ahead_resync_instead_of_dropping_every_input(
    setup: tuple[Worker, MemoryBus],
) -> None:
    """A forward timestamp jump makes a session's turn numbers leap by thousands. Gap-stepping
    the missing turns one per pass never catches up (and drops every real input as stale);
    the worker must skip to the new numbering and step the real inputs."""
    worker, bus = setup
    await worker.open("a")
    base = 100_000
    wanted = [*range(5), *range(base, base + 10)]
    sub = bus.subscribe(keys.outputs("a"))
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, k in enumerate(wanted):
        await asyncio.sleep(max(0.0, start + i * TURN_MS / 1000 - loop.time()))
        await bus.publish_struct(keys.inputs("local"), MicroTurnInput.from_arrays(audio(k), session_id="a", turn=k))

    outs: list[MicroTurnOutput] = []

    async def until_last() -> None:
        async for data in sub:
            outs.append(msgspec.msgpack.decode(data, type=MicroTurnOutput))
            if outs[-1].turn >= base + 9:
                return

    await asyncio.wait_for(until_last(), 20)  # on the old worker: 100,000 gap steps away
    sub.close()
    assert worker.skipped_turns >= base - 5 - worker.settings.max_pending
    assert len(outs) < 40  # the missing turns were skipped, not stepped
    real = [o.turn for o in outs if o.turn >= base and not o.gap]
    # the later real inputs are stepped (all of them unless this machine is slower than real time)
    assert real, [(o.turn, o.gap) for o in outs]
    assert [o.turn for o in outs] == sorted({o.turn for o in outs})  # in order, none twice


@pytest.mark.parametrize("where", ["prepare", "batch"])
async def test_a_session_whose_step_raises_is_closed_and_its_batch_keeps_going(
    setup: tuple[Worker, MemoryBus], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """One poisoned session used to make every batch it joined raise, silencing every call
    batched with it. Now it is closed with a reason its call hears, and the others step on."""
    import model.engine as engine_mod
    from model.session import SessionState

    worker, bus = setup
    for sid in ("good-1", "bad", "good-2"):
        await worker.open(sid)
    if where == "prepare":  # the session's own input handling raises
        assert isinstance(worker.engine, Engine)
        bad_state = worker.engine.session("bad")
        real_prepare = SessionState.prepare

        def prepare(
            self: SessionState, inp: MicroTurnInput, tok: Tokenizer, bins: torch.Tensor | None = None
        ) -> object:
            if self is bad_state and inp.turn >= 2:
                raise RuntimeError("poisoned featurizer")
            return real_prepare(self, inp, tok, bins)

        monkeypatch.setattr(SessionState, "prepare", prepare)
    else:  # the batched compute raises whenever the bad session is in it
        real_run = engine_mod.compute_batch

        def compute_batch(
            model: object, cache: object, tok: object, states: list[SessionState], *a: object, **kw: object
        ) -> object:
            if any(s.session_id == "bad" and s.turn >= 2 for s in states):
                raise RuntimeError("poisoned batch")
            return real_run(model, cache, tok, states, *a, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(engine_mod, "compute_batch", compute_batch)

    n = 6
    collectors = {
        sid: asyncio.create_task(collect(bus, sid, n if sid != "bad" else 3)) for sid in ("good-1", "good-2", "bad")
    }
    await asyncio.sleep(0)
    rnd = random.Random(2)
    await asyncio.gather(*(send(bus, sid, range(n), 0.0, rnd) for sid in ("good-1", "bad", "good-2")))
    results = {sid: await asyncio.wait_for(c, 20) for sid, c in collectors.items()}
    for sid in ("good-1", "good-2"):
        assert [o.turn for o in results[sid]] == list(range(n)) and not any(o.error for o in results[sid])
    bad = results["bad"]
    assert [o.turn for o in bad] == [0, 1, 2] and not bad[0].error and not bad[1].error
    assert "poisoned" in bad[2].error  # the last message of the failed session says why
    assert worker.failed_sessions == 1 and "bad" not in worker.engine
    assert worker.engine.stats().active == 2  # its slot is free
    assert worker.stalled_s() == 0.0  # the engine is making progress for the others


async def test_stalled_s_reports_an_engine_thread_that_completes_no_step(
    setup: tuple[Worker, MemoryBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    worker, bus = setup
    release = threading.Event()
    real = worker.engine.step_isolated

    def hung(inputs: list[MicroTurnInput], **kw: bool) -> object:
        release.wait(30)
        return real(inputs, **kw)

    await worker.open("a")
    assert worker.stalled_s() == 0.0
    monkeypatch.setattr(worker.engine, "step_isolated", hung)
    await bus.publish_struct(keys.inputs("local"), MicroTurnInput.from_arrays(audio(0), session_id="a", turn=0))
    await asyncio.sleep(0.5)
    assert worker.stalled_s() >= 0.4  # one step in flight for that long
    release.set()
    for _ in range(100):
        await asyncio.sleep(0.05)
        if worker.stalled_s() == 0.0:
            break
    assert worker.stalled_s() == 0.0


async def test_vocoder_runs_on_its_own_thread_while_the_next_step_computes(
    setup: tuple[Worker, MemoryBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Turn 0's synthesis waits until turn 1's model step has started: only a vocoder off the
    engine thread lets that happen (inline, the second step could not begin). Outputs still
    arrive in order and with their audio."""
    import threading

    from model.session import PendingAudio

    worker, bus = setup
    second_step = threading.Event()
    overlapped: list[bool] = []
    threads: list[str] = []
    real_step, real_run = worker.engine.step_isolated, PendingAudio.run

    def step_isolated(inputs: list[MicroTurnInput], **kw: bool) -> object:
        if any(i.turn == 1 for i in inputs):
            second_step.set()
        return real_step(inputs, **kw)

    def run(self: PendingAudio) -> None:
        threads.append(threading.current_thread().name)
        if len(overlapped) == 0:
            overlapped.append(second_step.wait(10))
        real_run(self)

    monkeypatch.setattr(worker.engine, "step_isolated", step_isolated)
    monkeypatch.setattr(PendingAudio, "run", run)
    await worker.open("a")
    collector = asyncio.create_task(collect(bus, "a", 3))
    await asyncio.sleep(0)
    await send(bus, "a", range(3), 0.0, random.Random(0))
    outs = await asyncio.wait_for(collector, 30)
    assert overlapped == [True]
    assert threads and all(t.startswith("vocoder") for t in threads)
    assert [o.turn for o in outs] == [0, 1, 2]
    assert all(len(o.audio_array()) == TURN_SAMPLES for o in outs)
    assert all(o.step_ms > 0 for o in outs)


async def test_synthesis_starts_as_the_step_ends_even_while_the_event_loop_is_busy(
    setup: tuple[Worker, MemoryBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine thread hands a step's synthesis to the vocoder thread itself: with the event
    loop blocked from the moment the step ends, the synthesis still starts (handed over by the
    loop, it would wait for the loop to be free)."""
    import threading
    import time

    from model.session import PendingAudio

    worker, bus = setup
    step_done = threading.Event()
    synth_started = threading.Event()
    started_while_blocked: list[bool] = []
    real_step, real_run = worker.engine.step_isolated, PendingAudio.run

    def step_isolated(inputs: list[MicroTurnInput], **kw: bool) -> object:
        result = real_step(inputs, **kw)
        step_done.set()
        return result

    def run(self: PendingAudio) -> None:
        synth_started.set()
        real_run(self)

    def block_the_loop() -> None:  # a busy loop: stuck from the step's end until synthesis starts or 2 s
        step_done.wait(10)
        started_while_blocked.append(synth_started.wait(2))

    monkeypatch.setattr(worker.engine, "step_isolated", step_isolated)
    monkeypatch.setattr(PendingAudio, "run", run)
    await worker.open("a")
    collector = asyncio.create_task(collect(bus, "a", 1))
    await asyncio.sleep(0)
    await bus.publish_struct(keys.inputs("local"), MicroTurnInput.from_arrays(audio(0), session_id="a", turn=0))
    await asyncio.sleep(0)
    t0 = time.monotonic()
    while not step_done.is_set() and time.monotonic() - t0 < 10:
        await asyncio.sleep(0)  # yield until the step is in flight, then block below
        if worker._step_started is not None:
            block_the_loop()
            break
    outs = await asyncio.wait_for(collector, 10)
    assert started_while_blocked == [True]
    assert [o.turn for o in outs] == [0] and len(outs[0].audio_array()) == TURN_SAMPLES


def test_deferred_audio_is_the_audio_of_an_inline_step(tokenizer: Tokenizer) -> None:
    """Engine.step_isolated(defer_audio=True) leaves the audio out, and running its synthesis
    in order gives what the inline step gives, turn after turn (the vocoder's overlap state)."""
    engines = []
    for _ in range(2):
        torch.manual_seed(0)
        engines.append(Engine(InteractionModel(micro_config()), tokenizer, max_sessions=2))
    inline, deferred = engines
    for e in engines:
        e.open("a", seed=1)
        e.open("b", seed=2)
    for k in range(3):
        batch = [MicroTurnInput.from_arrays(audio(k + i), session_id=s, turn=k) for i, s in enumerate("ab")]
        want = inline.step_isolated(batch)
        got = deferred.step_isolated(batch, defer_audio=True)
        assert want.audio == [] and len(got.audio) == 1
        assert all(o.audio == b"" for o in got.outputs)
        got.audio[0].run()
        for w, g in zip(want.outputs, got.outputs, strict=True):
            assert (g.session_id, g.text_tokens) == (w.session_id, w.text_tokens)
            np.testing.assert_array_equal(g.audio_array(), w.audio_array())


async def test_stop_publishes_the_outputs_still_being_synthesized(
    setup: tuple[Worker, MemoryBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step has finished and its audio is on the vocoder thread when the worker stops: its
    output is still published (and stopping twice is harmless)."""
    import threading
    import time

    from model.session import PendingAudio

    worker, bus = setup
    started = threading.Event()
    real_run = PendingAudio.run

    def slow_run(self: PendingAudio) -> None:
        started.set()
        time.sleep(0.5)
        real_run(self)

    monkeypatch.setattr(PendingAudio, "run", slow_run)
    await worker.open("a")
    collector = asyncio.create_task(collect(bus, "a", 1))
    await asyncio.sleep(0)
    await bus.publish_struct(keys.inputs("local"), MicroTurnInput.from_arrays(audio(0), session_id="a", turn=0))
    while not started.is_set():
        await asyncio.sleep(0.01)
    await worker.stop()
    outs = await asyncio.wait_for(collector, 5)
    assert [o.turn for o in outs] == [0] and len(outs[0].audio_array()) == TURN_SAMPLES
    await worker.stop()


async def test_stop_mid_step_still_publishes_that_steps_outputs(
    setup: tuple[Worker, MemoryBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine thread queues a step's synthesis before the step returns to the loop: a stop
    that lands in between (here held open for 0.3 s) must not drop the step's outputs."""
    import threading
    import time

    from model.session import PendingAudio

    worker, bus = setup
    synthesizing = threading.Event()
    real_run, real_step = PendingAudio.run, Worker._step_and_synthesize

    def run(self: PendingAudio) -> None:
        synthesizing.set()
        real_run(self)

    def step_then_linger(self: Worker, batch: list[MicroTurnInput]) -> object:
        out = real_step(self, batch)
        synthesizing.wait(5)
        time.sleep(0.3)  # the engine thread still busy: the loop has not got the step back yet
        return out

    monkeypatch.setattr(PendingAudio, "run", run)
    monkeypatch.setattr(Worker, "_step_and_synthesize", step_then_linger)
    await worker.open("a")
    collector = asyncio.create_task(collect(bus, "a", 1))
    await asyncio.sleep(0)
    await bus.publish_struct(keys.inputs("local"), MicroTurnInput.from_arrays(audio(0), session_id="a", turn=0))
    while not synthesizing.is_set():
        await asyncio.sleep(0.01)
    await worker.stop()
    outs = await asyncio.wait_for(collector, 5)
    assert [o.turn for o in outs] == [0] and len(outs[0].audio_array()) == TURN_SAMPLES
