"""What splitting edge and workers over Redis costs (issue 12), printed as `name: value` lines.

    .venv/bin/python tests/bench/bench_scale.py [--turns 50] [--placements 30] [--kills 10]
                                                [--calls 2] [--seconds 10]

Starts its own redis-server (tests/redis_server.py) and a pool of `microturn worker`
processes (tiny preset, random weights, heartbeat TTL 1.5 s), each in its own process group,
all killed at the end whatever happens.

- rtt_{memory,redis}_ms_p50 / _p95: one micro-turn, input published -> its output received, on
  the same engine and model.worker.Worker in this process, once on the MemoryBus and once on
  a RedisBus (separate connections for the sending and the worker side, real redis-server on
  loopback); turns paced at 200 ms like a call, in alternating blocks so drift hits both.
  rtt_redis_over_memory_p50 is the ratio, rtt_redis_added_ms_p50 the difference; rtt_step_ms_p50
  is the model compute inside each round trip, and rtt_{memory,redis}_minus_step_ms_p50 / _p95
  each round trip less its own step: transport plus the worker's scheduling (its 5 ms gather
  window included), free of the compute's noise.
- placement_ms_p50 / _p95: RedisWorkers.open (registry reserve + SessionOpen + reply) against
  the live worker processes; each placement closed again before the next.
- failover_gap_ms_p50 / _max over --kills: a session stepping on worker A through RedisWorkers,
  `kill -9` A, time from A's last output to the first output after RedisWorkers re-placed it
  (restore=True) on another worker. Most of it is the heartbeat TTL. The killed worker is
  replaced in the background (a worker takes ~10 s to start), so the pool has one to move to.
  failover_restored counts the moves whose new worker rebuilt the session from its turn log.
- edge_cpu_s_per_call_s: `microturn edge` alone in a subprocess, --calls aiortc callers in
  this process streaming speech for --seconds, the model on the worker pool; CPU seconds
  (user + system, /proc/<pid>/stat) of the edge process per second of call.

Progress goes to stderr. Not part of `make test`; numbers on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import msgspec

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from infra import keys  # noqa: E402
from infra.bus import Bus, BusUnavailable, MemoryBus  # noqa: E402
from infra.logging import configure_logging  # noqa: E402
from infra.messages import MicroTurnOutput  # noqa: E402
from infra.redis_bus import RedisBus, RedisSettings  # noqa: E402
from infra.registry import WorkerRegistry  # noqa: E402
from signaling.workers import Move, RedisWorkers, RedisWorkersSettings  # noqa: E402
from tests.bench.bench_edge import cpu_seconds, pct  # noqa: E402
from tests.e2e.aiortc_client import Caller, synthetic_speech  # noqa: E402
from tests.model.test_service import turn_input  # noqa: E402
from tests.redis_server import RedisServer, free_port  # noqa: E402

if TYPE_CHECKING:
    from model.engine import Engine

TTL_S = 1.5  # worker heartbeat TTL: most of a failover gap
TURN_S = 0.2
POOL_SIZE = 3  # one to kill, one to move to, one starting up
API_KEY = "bench-scale-key"
OUT = msgspec.msgpack.Decoder(MicroTurnOutput)


def progress(msg: str) -> None:
    print(f"[bench_scale] {msg}", file=sys.stderr, flush=True)


def line(name: str, value: float | int | str) -> None:
    print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}", flush=True)


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL, wait_s: float = 10) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "signaling.cli", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as one
        )


class WorkerPool:
    """`microturn worker` processes; a killed one is replaced by a fresh id at once (it starts
    in the background while the benchmark goes on)."""

    def __init__(self, redis_url: str, logdir: Path, capacity: int) -> None:
        self.redis_url, self.logdir, self.capacity = redis_url, logdir, capacity
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.spawned = 0

    def spawn(self) -> str:
        wid = f"w{self.spawned}"
        self.spawned += 1
        self.procs[wid] = spawn(
            ["worker", "--redis", self.redis_url, "--worker-id", wid, "--max-sessions", str(self.capacity),
             "--port", "0", "--drain-s", "1", "--ttl-s", str(TTL_S)],
            self.logdir / f"worker-{wid}.log",
            {"MICROTURN_CHECKPOINT": str(self.logdir / "no-checkpoint"), "MICROTURN_PRESET": "tiny"},
        )  # fmt: skip
        return wid

    def kill(self, wid: str) -> None:
        kill_group(self.procs.pop(wid))

    def close(self) -> None:
        for proc in self.procs.values():
            kill_group(proc)
        self.procs.clear()

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logdir.glob("worker-*.log")))

    async def wait_live(self, registry: WorkerRegistry, n: int, timeout: float = 240) -> None:
        async with asyncio.timeout(timeout):
            while len(set(self.procs) & {w.worker_id for w in await registry.live()}) < n:
                for wid, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker {wid} exited {proc.returncode}; see {self.logdir}")
                await asyncio.sleep(0.2)


# round trip: memory vs redis ---------------------------------------------------------------------
async def round_trips(worker_bus: Bus, edge_bus: Bus, engine: Engine, turns: int) -> tuple[list[float], list[float]]:
    from model.worker import Worker, WorkerSettings

    worker = Worker(engine, worker_bus, WorkerSettings(worker_id="bench"))
    await worker.start()
    sid = f"rtt-{time.monotonic_ns()}"
    outs = edge_bus.subscribe(keys.outputs(sid))
    rtts, steps = [], []
    try:
        await worker.open(sid)
        await outs.ready()
        await worker._sub.ready()  # inputs published from another connection must not be missed
        warmup = 3
        t0 = time.monotonic()
        for k in range(turns + warmup):
            await asyncio.sleep(max(0.0, t0 + k * TURN_S - time.monotonic()))
            sent = time.perf_counter()
            await edge_bus.publish_struct(keys.inputs("bench"), turn_input(sid, k))
            out = OUT.decode(await outs.get(timeout=30))
            took = (time.perf_counter() - sent) * 1000
            assert out.turn == k and not out.error, out
            if k >= warmup:
                rtts.append(took)
                steps.append(out.step_ms)
    finally:
        outs.close()
        await worker.close(sid)
        await worker.stop()
    return rtts, steps


async def bench_round_trip(redis_url: str, turns: int) -> None:
    from model.checkpoint import load_or_random
    from model.engine import Engine

    ckpt = await asyncio.to_thread(load_or_random, None, "tiny")
    engine = Engine(ckpt.model, ckpt.tokenizer, max_sessions=2)
    await asyncio.to_thread(engine.warmup)
    memory = MemoryBus()
    rs = RedisSettings.from_dsn(redis_url)
    worker_bus, edge_bus = RedisBus(rs), RedisBus(rs)
    got: dict[str, tuple[list[float], list[float]]] = {"memory": ([], []), "redis": ([], [])}
    try:
        for block in range(2):
            for kind, wb, eb in (("memory", memory, memory), ("redis", worker_bus, edge_bus)):
                progress(f"round trip on {kind}, block {block + 1}/2")
                rtts, steps = await round_trips(wb, eb, engine, (turns + 1) // 2)
                got[kind][0].extend(rtts)
                got[kind][1].extend(steps)
    finally:
        await worker_bus.close()
        await edge_bus.close()
        await memory.close()
    for kind, (rtts, steps) in got.items():
        line(f"rtt_{kind}_ms_p50", pct(rtts, 50))
        line(f"rtt_{kind}_ms_p95", pct(rtts, 95))
        # without the model compute, whose noise on a busy machine swamps the transport's share
        overhead = [r - s for r, s in zip(rtts, steps, strict=True)]
        line(f"rtt_{kind}_minus_step_ms_p50", pct(overhead, 50))
        line(f"rtt_{kind}_minus_step_ms_p95", pct(overhead, 95))
    mem, red = pct(got["memory"][0], 50), pct(got["redis"][0], 50)
    line("rtt_redis_over_memory_p50", red / mem)
    line("rtt_redis_added_ms_p50", red - mem)
    line("rtt_step_ms_p50", pct(got["memory"][1] + got["redis"][1], 50))
    line("rtt_turns", len(got["memory"][0]))


# placement and failover --------------------------------------------------------------------------
async def bench_placement(ws: RedisWorkers, n: int) -> None:
    took = []
    for i in range(n + 3):
        sid = f"place-{i}"
        t = time.perf_counter()
        await ws.open(sid, seed=i)
        if i >= 3:
            took.append((time.perf_counter() - t) * 1000)
        await ws.close(sid)
    line("placement_ms_p50", pct(took, 50))
    line("placement_ms_p95", pct(took, 95))


class Listener:
    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.move: Move | None = None
        self.at = 0.0
        self.lost = ""

    def session_moved(self, move: Move) -> None:
        self.move, self.at = move, time.monotonic()
        self.done.set()

    def session_lost(self, reason: str, message: str) -> None:
        self.lost = f"{reason}: {message}"
        self.done.set()


async def wait_for(pred: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


async def one_failover(ws: RedisWorkers, bus: RedisBus, pool: WorkerPool, sid: str) -> float:
    """Seconds between the killed worker's last output and the new worker's first."""
    listener = Listener()
    outs = bus.subscribe(keys.outputs(sid))
    await outs.ready()
    arrivals: list[float] = []

    async def send() -> None:  # a call's clock: turn numbers go on while the session moves
        t0 = time.monotonic()
        for k in range(1_000_000):
            await asyncio.sleep(max(0.0, t0 + k * TURN_S - time.monotonic()))
            if (w := ws.worker_of(sid)) is not None:
                with contextlib.suppress(BusUnavailable):
                    await bus.publish_struct(keys.inputs(w), turn_input(sid, k))

    async def receive() -> None:
        async for data in outs:
            out = OUT.decode(data)
            if out.error:
                raise RuntimeError(f"session {sid} failed: {out.error}")
            arrivals.append(time.monotonic())

    victim = await ws.open(sid, seed=1, listener=listener)
    tasks = [asyncio.create_task(send()), asyncio.create_task(receive())]
    try:
        await wait_for(lambda: len(arrivals) >= 10 or any(t.done() for t in tasks), 60)  # a turn log to restore
        pool.kill(victim)
        pool.spawn()
        progress(f"{sid}: killed {victim}")
        async with asyncio.timeout(30):
            await listener.done.wait()
        if listener.move is None:
            raise RuntimeError(f"{sid} not moved: {listener.lost}")
        moved_at = listener.at
        await wait_for(lambda: arrivals[-1] > moved_at or any(t.done() for t in tasks), 30)
        for t in tasks:
            if t.done():
                t.result()
        gap = min(t for t in arrivals if t > moved_at) - max(t for t in arrivals if t <= moved_at)
        progress(f"{sid}: {victim} -> {listener.move.to_worker}, gap {gap * 1000:.0f} ms")
        return gap
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        outs.close()
        await ws.close(sid)


async def bench_failover(ws: RedisWorkers, bus: RedisBus, pool: WorkerPool, kills: int) -> None:
    gaps = []
    for i in range(kills):
        await pool.wait_live(ws.registry, 2)  # one to kill, one to move to
        await wait_for(lambda: ws.stats().capacity >= 2 * pool.capacity, 10)
        gaps.append(await one_failover(ws, bus, pool, f"fo-{i}") * 1000)
    logs = pool.logs().splitlines()
    restored = sum(any("session_restored" in ln and f"fo-{i}" in ln for ln in logs) for i in range(kills))
    line("failover_gap_ms_p50", pct(gaps, 50))
    line("failover_gap_ms_max", max(gaps))
    line("failover_kills", kills)
    line("failover_restored", restored)
    line("failover_heartbeat_ttl_s", TTL_S)


# edge CPU ----------------------------------------------------------------------------------------
def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("microturn edge did not become ready") from None
            time.sleep(0.2)


async def bench_edge_cpu(redis_url: str, logdir: Path, calls: int, seconds: float) -> None:
    port = free_port()
    env = {
        "MICROTURN_API_KEYS": API_KEY,
        "MICROTURN_ALLOW_LOOPBACK_CANDIDATES": "true",
        "MICROTURN_LOG_LEVEL": "warning",
    }
    proc = spawn(["edge", "--redis", redis_url, "--port", str(port), "--drain-s", "1"], logdir / "edge.log", env)
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_ready, url, proc)
        async with aiohttp.ClientSession() as http:
            speech = synthetic_speech(4.0)
            callers = [Caller(url, http, speech, loop_audio=True) for _ in range(calls)]
            try:
                for c in callers:
                    r = await c.connect(token=API_KEY)
                    if r.status != 201:
                        raise RuntimeError(f"call refused: {r.status} {await r.text()}")
                for c in callers:
                    await c.wait_event(lambda e: e["type"] == "metrics.latency", timeout=60)
                await asyncio.sleep(1.0)  # settle: every call streaming, outputs flowing
                progress(f"edge: {calls} calls up, measuring {seconds:g} s")
                marks = [len(c.received.arrivals) for c in callers]
                cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
                await asyncio.sleep(seconds)
                cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
                frames = sum(len(c.received.arrivals) - m for c, m in zip(callers, marks, strict=True))
                for c in callers:
                    await c.hangup()
            finally:
                for c in callers:
                    await c.close()
    finally:
        kill_group(proc, signal.SIGTERM)
    line("edge_cpu_s_per_call_s", (cpu1 - cpu0) / (calls * (t1 - t0)))
    line("edge_calls", calls)
    line("edge_rx_frames_per_call_s", frames / (calls * (t1 - t0)))


async def main(args: argparse.Namespace, tmp: Path) -> None:
    configure_logging("warning")  # stdout carries only the `name: value` lines
    line("cpus", os.cpu_count() or 0)
    redis = RedisServer(tmp)
    pool = WorkerPool(redis.url, tmp, capacity=max(2, args.calls))
    try:
        redis.start()
        for _ in range(POOL_SIZE):
            pool.spawn()
        progress(f"redis on {redis.port}; {POOL_SIZE} workers starting (logs in {tmp})")
        rs = RedisSettings.from_dsn(redis.url, block_ms=200, backoff_max_s=0.2)
        bus, client = RedisBus(rs), rs.client()
        registry = WorkerRegistry(client, ttl_s=TTL_S)
        ws = RedisWorkers(bus, registry, "bench-edge", RedisWorkersSettings(watch_s=0.25))
        try:
            await pool.wait_live(registry, POOL_SIZE)  # idle workers while this process measures
            await bench_round_trip(redis.url, args.turns)
            await ws.start()
            progress("placement")
            await bench_placement(ws, args.placements)
            progress("failover")
            await bench_failover(ws, bus, pool, args.kills)
            progress("edge CPU: waiting for the pool to be whole again")
            await pool.wait_live(registry, POOL_SIZE)
            await bench_edge_cpu(redis.url, tmp, args.calls, args.seconds)
        finally:
            await ws.aclose()
            await bus.close()
            await client.aclose()
    finally:
        pool.close()
        redis.stop(kill=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=50, help="measured micro-turns per transport")
    ap.add_argument("--placements", type=int, default=30, help="measured placements")
    ap.add_argument("--kills", type=int, default=10, help="workers killed with -9, one at a time")
    ap.add_argument("--calls", type=int, default=2, help="concurrent aiortc calls for the edge CPU figure")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured call time for the edge CPU figure")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temp dir with worker and edge logs")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale-"))
    try:
        asyncio.run(main(args, tmp))
    finally:
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
