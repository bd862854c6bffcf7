"""Giving a long-running server's memory back after calls end.

A call leaves nothing reachable behind, but it does leave garbage the interpreter is slow to
free and memory the C allocator is slow to return:

- A call's object graph (aiortc's peer connection, transports, tracks, codecs, our `Call`)
  is full of reference cycles, so it is freed only by a *full* cyclic collection. CPython
  runs one when the long-lived heap has grown by a quarter since the last, which in a process
  holding a model (hundreds of thousands of long-lived objects) is dozens of calls apart,
  and the full collection then scans the whole heap: the best part of a second with the
  event loop stopped and every call's audio with it.
- What is freed goes back to glibc's heap, which returns pages to the OS only from its top;
  holes left between live allocations stay resident, so RSS ratchets up call after call
  (~100 KB a call measured with tests/bench/bench_soak.py) and never comes down.

So: `freeze_heap()` once the process has loaded everything it keeps for its lifetime (the
model, modules, the engine): those objects move to the collector's permanent generation, full
collections stop scanning them and become cheap (milliseconds), and CPython's own heuristic
runs them often. `Reclaimer` then collects and trims (`malloc_trim(0)`, glibc only) shortly
after calls end, at most once per `delay_s`, so an idle server sits at its warmed-up size.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

from infra.logging import get_logger

log = get_logger(__name__)


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim  # glibc; musl and macOS have none
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_malloc_trim = _load_malloc_trim()


def trim() -> bool:
    """Return free heap pages to the OS (glibc's `malloc_trim(0)`); False where unsupported."""
    if _malloc_trim is None:
        return False
    # ctypes releases the GIL for the call: other threads keep running while glibc walks its arenas
    return bool(_malloc_trim(0))


def freeze_heap() -> int:
    """Collect, then exempt every object alive now from future collections; returns their count."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def unfreeze_heap() -> None:
    """Undo `freeze_heap()` (a process that embeds the server and outlives it)."""
    gc.unfreeze()


class Reclaimer:
    """Collects cyclic garbage and trims the heap `delay_s` after `schedule()`, at most once
    per `delay_s` however many calls end meanwhile. Runs on the event loop (the collection
    holds the GIL wherever it runs); `close()` cancels a pending run."""

    def __init__(self, delay_s: float = 1.0) -> None:
        self.delay_s = delay_s
        self.runs = 0
        self.last_ms = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def schedule(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a registry used from sync code): nothing to defer to
            return
        self._timer = loop.call_later(self.delay_s, self.run)

    @property
    def pending(self) -> bool:
        return self._timer is not None

    def run(self) -> None:
        self._timer = None
        t0 = time.perf_counter()
        freed = gc.collect()
        t1 = time.perf_counter()
        trim()
        t2 = time.perf_counter()
        self.runs += 1
        self.last_ms = (t2 - t0) * 1000
        gc_ms, trim_ms = round((t1 - t0) * 1000, 2), round((t2 - t1) * 1000, 2)
        log.debug("memory.reclaimed", objects=freed, gc_ms=gc_ms, trim_ms=trim_ms)
        if self.last_ms > 250:  # the heap was not frozen, or something keeps a huge young heap
            log.warning("memory.reclaim_slow", objects=freed, gc_ms=gc_ms, trim_ms=trim_ms)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
