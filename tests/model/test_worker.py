from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

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
        assert [o.turn for o in outs] == list(range(n_turns)), sid
        assert all(o.session_id == sid and len(o.audio_array()) == TURN_SAMPLES for o in outs)
    # batching happened: fewer steps than session-turns
    assert len(worker.step_times) < len(sids) * n_turns
    # a turn is gap-stepped only if the machine fell behind; then its input was dropped, never stepped twice
    n_gaps = sum(o.gap for outs in results for o in outs)
    assert n_gaps == worker.gap_steps
    assert worker.stale_inputs <= n_gaps


async def test_missing_input_is_gap_stepped_and_late_arrival_dropped(setup: tuple[Worker, MemoryBus]) -> None:
    worker, bus = setup
    await worker.open("a")
    collector = asyncio.create_task(collect(bus, "a", 6))
    await asyncio.sleep(0)
    rnd = random.Random(1)
    await send(bus, "a", range(0, 3), 0.0, rnd)
    await asyncio.sleep(0.45)  # turn 3 never comes in time: worker must gap-step it
    await bus.publish_struct(keys.inputs("local"), MicroTurnInput.from_arrays(audio(3), session_id="a", turn=3))
    for k in (4, 5):
        await bus.publish_struct(keys.inputs("local"), MicroTurnInput.from_arrays(audio(k), session_id="a", turn=k))
        await asyncio.sleep(TURN_MS / 1000)
    outs = await asyncio.wait_for(collector, 10)
    assert [o.turn for o in outs] == list(range(6))
    gaps = [o.turn for o in outs if o.gap]
    assert 3 in gaps and 0 not in gaps
    assert worker.stale_inputs >= 1  # the late turn-3 input was dropped, not stepped twice


async def test_full_worker_refuses_and_close_frees(setup: tuple[Worker, MemoryBus]) -> None:
    worker, _ = setup
    for i in range(8):
        await worker.open(f"s{i}")
    with pytest.raises(CapacityError, match="max_sessions=8"):
        await worker.open("one-too-many")
    await worker.close("s0")
    await worker.open("one-too-many")
    assert worker.engine.stats().active == 8
