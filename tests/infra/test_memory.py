"""infra/memory.py: frozen startup heap, deferred collection of ended calls' garbage."""

from __future__ import annotations

import asyncio
import gc
import weakref

from infra import memory


class Node:
    """A reference cycle, the shape of an ended call's object graph."""

    def __init__(self) -> None:
        self.me = self


async def test_reclaimer_collects_cycles_once_per_delay(no_automatic_gc: None) -> None:
    r = memory.Reclaimer(delay_s=0.05)
    node = Node()
    ref = weakref.ref(node)
    del node
    r.schedule()
    r.schedule()  # a burst of ended calls: still one run
    assert r.pending and ref() is not None
    await asyncio.sleep(0.2)
    assert ref() is None and r.runs == 1 and not r.pending


async def test_close_cancels_a_pending_run(no_automatic_gc: None) -> None:
    r = memory.Reclaimer(delay_s=0.05)
    r.schedule()
    r.close()
    await asyncio.sleep(0.1)
    assert r.runs == 0 and not r.pending


def test_schedule_without_a_loop_is_a_no_op() -> None:
    r = memory.Reclaimer()
    r.schedule()
    assert not r.pending


def test_freeze_keeps_the_collector_off_startup_objects_until_unfrozen() -> None:
    node = Node()
    ref = weakref.ref(node)
    try:
        assert memory.freeze_heap() >= 1
        del node
        gc.collect()
        assert ref() is not None  # frozen: part of the process for its lifetime
    finally:
        memory.unfreeze_heap()
    gc.collect()
    assert ref() is None and gc.get_freeze_count() == 0


def test_trim_reports_support() -> None:
    assert memory.trim() in (True, False)  # glibc returns pages; elsewhere a no-op
