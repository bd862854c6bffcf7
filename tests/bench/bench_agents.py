"""Background-agent latency and throughput, memory bus vs Redis, printed as `name: value`.

    .venv/bin/python tests/bench/bench_agents.py [--tasks 200]

- first_delta_ms_p50_{memory,redis} / _p95_: a task created (BackgroundClient.submit, stamp
  in created_at) -> its first delta out of the session's ResultStream. One agent worker in
  this process with an instant echo backend, so what is measured is queue + bus + worker
  scheduling; tasks one at a time. Redis is a real redis-server on loopback.
- tools_tasks_per_s_{memory,redis}: tasks one agent (concurrency 4) finishes per second on
  the tools backend (exact arithmetic asks), all submitted at once.
- restart_to_retried_first_delta_ms: Redis killed and restarted (no persistence) while one
  short task streams and a second waits in bg:tasks; from the new server answering to the
  first delta of the second task, which the restart wiped and the client re-submitted
  (agent concurrency 1, so it waited behind the first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agents.backend import make_backend
from agents.client import BackgroundClient
from agents.settings import AgentSettings
from agents.worker import AgentWorker, BackendFactory
from infra.bus import Bus, MemoryBus
from infra.logging import configure_logging
from infra.messages import BackgroundTask, ChatMessage
from infra.redis_bus import RedisBus, RedisSettings
from infra.settings import Settings
from infra.taskqueue import MemoryTaskQueue, RedisTaskQueue, TaskQueue
from tests.agents.fake_backends import EchoBackend
from tests.redis_server import RedisServer


def ask(text: str, task_id: str) -> BackgroundTask:
    return BackgroundTask(task_id=task_id, session_id="s", messages=[ChatMessage("user", text)], created_at=time.time())


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


def stack(kind: str, url: str | None) -> tuple[Bus, TaskQueue]:
    if kind == "memory":
        return MemoryBus(), MemoryTaskQueue(max_tasks=100_000)
    assert url
    rs = RedisSettings.from_dsn(url, backoff_max_s=0.2)
    return RedisBus(rs), RedisTaskQueue(rs, max_tasks=100_000)


async def first_delta(kind: str, url: str | None, n: int) -> list[float]:
    bus, queue = stack(kind, url)
    backend = EchoBackend()
    w = AgentWorker(queue, bus, lambda fire: backend, AgentSettings(consumer="bench", read_block_s=1.0))
    client = BackgroundClient(bus, queue)
    await w.start()
    stream = client.results("s")
    await stream.ready()
    out = []
    for i in range(n + 10):
        t = ask("hello there", f"t{i}")
        await client.submit(t)
        async with asyncio.timeout(10):
            async for ev in stream:
                if ev.task_id == t.task_id and ev.kind == "delta":
                    if i >= 10:  # warm-up: connections, first-call costs
                        out.append((time.time() - t.created_at) * 1000)
                    break
        async with asyncio.timeout(10):
            async for ev in stream:
                if ev.kind == "done":
                    break
    await client.aclose()
    await w.stop()
    await bus.close()
    await queue.close()
    return out


async def tools_throughput(kind: str, url: str | None, n: int) -> float:
    bus, queue = stack(kind, url)
    settings = Settings(**{})

    def factory(fire):  # type: ignore[no-untyped-def]
        return make_backend(settings, fire, name="tools")

    w = AgentWorker(queue, bus, factory, AgentSettings(consumer="bench", concurrency=4))
    client = BackgroundClient(bus, queue)
    await w.start()
    stream = client.results("s")
    await stream.ready()
    t0 = time.perf_counter()
    for i in range(n):
        await client.submit(ask(f"what is {i} * 12345678987654321 + 7/9?", f"t{i}"))
    done = 0
    async with asyncio.timeout(120):
        async for ev in stream:
            if ev.kind in ("done", "failed"):
                done += 1
                if done == n:
                    break
    rate = n / (time.perf_counter() - t0)
    await client.aclose()
    await w.stop()
    await bus.close()
    await queue.close()
    return rate


async def restart_recovery(server: RedisServer) -> float:
    bus, queue = stack("redis", server.url)
    slow = EchoBackend(delay_s=0.05)
    factory: BackendFactory = lambda fire: slow  # noqa: E731
    w = AgentWorker(queue, bus, factory, AgentSettings(consumer="bench", concurrency=1, read_block_s=0.2))
    client = BackgroundClient(bus, queue, check_every_s=0.05)
    await w.start()
    stream = client.results("s")
    await stream.ready()
    # short enough to be over by the time the server is back: the agent is then free for the
    # re-submitted task, and what is measured is detection + re-submission + the agent's reconnect
    await client.submit(ask("one two three", "long"))
    await client.submit(ask("retried answer", "queued"))
    async with asyncio.timeout(10):
        async for ev in stream:
            if ev.task_id == "long" and ev.seq == 0:
                break
    await asyncio.to_thread(server.restart)
    up = time.perf_counter()
    async with asyncio.timeout(60):
        async for ev in stream:
            if ev.task_id == "queued" and ev.kind == "delta":
                break
    ms = (time.perf_counter() - up) * 1000
    await client.aclose()
    await w.stop(drain_s=0)
    await bus.close()
    await queue.close()
    return ms


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=200)
    args = p.parse_args()
    configure_logging("error")
    print(f"cpus: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            for kind in ("memory", "redis"):
                lat = await first_delta(kind, server.url, args.tasks)
                print(f"first_delta_ms_p50_{kind}: {pct(lat, 50):.3f}", flush=True)
                print(f"first_delta_ms_p95_{kind}: {pct(lat, 95):.3f}", flush=True)
            for kind in ("memory", "redis"):
                rate = await tools_throughput(kind, server.url, args.tasks)
                print(f"tools_tasks_per_s_{kind}: {rate:.1f}", flush=True)
            print(f"restart_to_retried_first_delta_ms: {await restart_recovery(server):.1f}", flush=True)
        finally:
            server.stop(kill=True)


if __name__ == "__main__":
    asyncio.run(main())
