"""Call lifecycle corners that HTTP alone can't reach: closing mid-setup, teardown idempotence."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from model.engine_process import EngineProcess
from signaling.auth import Principal
from signaling.call import Call, CallClosedError, CallDeps
from signaling.runtime import Runtime
from tests.e2e.aiortc_server import assert_released, edge_settings, make_offer, running_edge

pytestmark = pytest.mark.timeout(30)


def new_call(rt: Runtime, **overrides: Any) -> Call:
    settings = edge_settings(**overrides)
    deps = CallDeps(
        bus=rt.bus,
        workers=rt.workers,
        settings=settings,
        model_name="tiny",
        trained=False,
        on_closed=rt.calls.remove,
    )
    call = Call(Call.new_id(), Principal("anon:test", "anonymous"), deps)
    rt.calls.add(call)
    return call


async def test_close_while_the_slot_is_being_reserved_leaks_nothing() -> None:
    async with running_edge(edge_settings()) as edge:
        rt = edge.rt
        pc, sdp = await make_offer()
        try:
            for _ in range(5):  # the race window is a thread hop; try it a few times
                call = new_call(rt)
                await call.apply_offer(sdp)
                opening = asyncio.create_task(call.open_session())
                await asyncio.sleep(0)
                await call.close("server_shutdown")
                with pytest.raises(CallClosedError):
                    await opening
                    await call.answer()
                assert_released(rt, call)
                assert rt.engine.stats().active == 0
        finally:
            await pc.close()


async def test_close_is_idempotent_and_first_reason_wins() -> None:
    async with running_edge(edge_settings()) as edge:
        rt = edge.rt
        pc, sdp = await make_offer()
        try:
            call = new_call(rt)
            await call.apply_offer(sdp)
            await call.open_session()
            await call.answer()
            call.start()
            assert rt.engine.stats().active == 1
            await asyncio.gather(call.close("hangup"), call.close("idle_timeout"), call.close("hangup"))
            assert call.end_reason == "hangup"
            assert_released(rt, call)
            with pytest.raises(CallClosedError):
                call.start()
        finally:
            await pc.close()


async def test_a_call_plays_out_with_the_configured_jitter_hold_and_steering() -> None:
    async with running_edge(edge_settings()) as edge:
        default = new_call(edge.rt)
        held = new_call(edge.rt, playout_hold_ms=40, playout_max_hold_ms=80, playout_margin_ms=60)
        unsteered = new_call(edge.rt, playout_steer=False)
        try:
            assert (default.output.hold_ms, default.output.max_hold_frames) == (0, 5)
            assert (held.output.hold_ms, held.output.max_hold_frames) == (40, 4)
            assert (default.output.margin_samples, held.output.margin_samples) == (640, 960)  # 40, 60 ms
            assert unsteered.output.margin_samples is None
        finally:
            for call in (default, held, unsteered):
                await call.close("server_shutdown")


async def test_calls_cut_their_turns_on_the_wall_clock_grid_unless_told_not_to() -> None:
    async with running_edge(edge_settings()) as edge:
        aligned, free = new_call(edge.rt), new_call(edge.rt, align_turns=False)
        try:
            assert aligned.transport.assembler.align_clock is time.time  # shared across edges
            assert free.transport.assembler.align_clock is None
        finally:
            await aligned.close("server_shutdown")
            await free.close("server_shutdown")


async def test_the_engine_process_runs_at_the_configured_priority() -> None:
    """MICROTURN_ENGINE_NICE is relative to the serving process: +4 always applies (a lower
    priority needs no privilege); 0 leaves the child at the server's own."""
    here = os.getpriority(os.PRIO_PROCESS, 0)
    for delta in (4, 0):
        async with running_edge(edge_settings(engine_nice=delta)) as edge:
            engine = edge.rt.engine
            assert isinstance(engine, EngineProcess)
            assert engine.nice == min(here + delta, 19) and engine.nice_error is None
