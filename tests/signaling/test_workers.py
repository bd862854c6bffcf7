"""RedisWorkers against a real Redis and stand-in workers that speak the control protocol
(registry + control stream + replies; no engine), and the edge's import hygiene."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import pytest
from prometheus_client import REGISTRY

from infra import keys
from infra.messages import ControlReply, ControlRequest, SessionClose, SessionOpen
from infra.redis_bus import RedisBus, RedisSettings, cancel_and_wait
from infra.registry import WorkerRegistry
from signaling.workers import Move, RedisWorkers, RedisWorkersSettings, WorkersFull
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)

Mode = Literal["ok", "full", "silent"]


@dataclass
class FakeWorker:
    """Registers, heartbeats and answers control requests like `microturn worker` would."""

    worker_id: str
    url: str
    capacity: int = 3
    mode: Mode = "ok"
    ttl_s: float = 1.0
    opened: list[SessionOpen] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    async def start(self) -> None:
        self.bus = RedisBus(RedisSettings.from_dsn(self.url, block_ms=200))
        self.client = RedisSettings.from_dsn(self.url).client()
        self.registry = WorkerRegistry(self.client, ttl_s=self.ttl_s)
        self.sub = self.bus.subscribe(keys.worker_ctl(self.worker_id))
        await self.sub.ready()
        await self.registry.register(self.worker_id, self.capacity)
        self.tasks = [asyncio.create_task(self._serve()), asyncio.create_task(self._beat())]

    async def die(self) -> None:
        """kill -9: no goodbye, the heartbeat just stops."""
        for t in self.tasks:
            await cancel_and_wait(t)
        await self.bus.close()
        await self.client.aclose()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            await self.registry.heartbeat(self.worker_id)

    async def _serve(self) -> None:
        decoder = msgspec.msgpack.Decoder(ControlRequest)
        async for data in self.sub:
            req = decoder.decode(data)
            if self.mode == "silent":
                continue
            if isinstance(req, SessionClose):
                self.closed.append(req.session_id)
                await self.registry.release(self.worker_id, req.session_id)
                ok, code = True, ""
            elif self.mode == "full":
                await self.registry.release(self.worker_id, req.session_id)
                ok, code = False, "full"
            else:
                self.opened.append(req)
                ok, code = True, ""
            reply = ControlReply(request_id=req.request_id, ok=ok, worker_id=self.worker_id, code=code)
            await self.bus.publish_struct(req.reply_to, reply)


class Listener:
    def __init__(self) -> None:
        self.moves: list[Move] = []
        self.lost: list[str] = []
        self.event = asyncio.Event()

    def session_moved(self, move: Move) -> None:
        self.moves.append(move)
        self.event.set()

    def session_lost(self, reason: str, message: str) -> None:
        self.lost.append(reason)
        self.event.set()


@contextlib.asynccontextmanager
async def cluster(
    redis_server: RedisServer, *modes: Mode, **kw: float
) -> AsyncIterator[tuple[RedisWorkers, list[FakeWorker]]]:
    workers = [FakeWorker(f"w{i}", redis_server.url, mode=m) for i, m in enumerate(modes)]
    for w in workers:
        await w.start()
    bus = RedisBus(RedisSettings.from_dsn(redis_server.url, block_ms=200))
    client = RedisSettings.from_dsn(redis_server.url).client()
    pool = RedisWorkers(
        bus, WorkerRegistry(client), "edge1", RedisWorkersSettings(reply_timeout_s=0.5, watch_s=0.1, **kw)
    )
    await pool.start()
    try:
        yield pool, workers
    finally:
        await pool.aclose()
        await bus.close()
        await client.aclose()
        for w in workers:
            with contextlib.suppress(Exception):
                await w.die()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_open_places_on_the_least_loaded_and_close_releases(redis_server: RedisServer) -> None:
    async with cluster(redis_server, "ok", "ok") as (pool, (w0, w1)):
        before = sample("microturn_placements_total", outcome="placed")
        placed = [await pool.open(f"s{i}", seed=i) for i in range(4)]
        assert sample("microturn_placements_total", outcome="placed") == before + 4
        assert sorted(placed) == ["w0", "w0", "w1", "w1"]
        assert pool.worker_of("s0") == placed[0] and pool.worker_of("nope") is None
        assert [o.session_id for o in w0.opened + w1.opened] != [] and all(not o.restore for o in w0.opened)
        await asyncio.sleep(0.3)  # the watcher's picture of the registry
        assert pool.stats().active == 4 and pool.stats().capacity == 6 and pool.stats().free == 2
        await pool.close("s0")
        await pool.close("s0")  # idempotent
        owner = w0 if placed[0] == "w0" else w1
        assert owner.closed == ["s0"] and pool.worker_of("s0") is None
        assert "s0" not in await owner.registry.sessions_of(owner.worker_id)


async def test_a_refusing_or_silent_worker_is_skipped(redis_server: RedisServer) -> None:
    async with cluster(redis_server, "full", "silent", "ok") as (pool, (w0, w1, _w2)):
        assert await pool.open("s", seed=1) == "w2"
        assert pool.counters.refusals == 1 and pool.counters.timeouts == 1
        # neither holds a reservation for it afterwards
        assert await w0.registry.sessions_of("w0") == set()
        await asyncio.sleep(0.2)  # the abandoned reservation is given back in the background
        assert await w1.registry.sessions_of("w1") == set()


async def test_no_worker_with_a_free_slot_is_workers_full(redis_server: RedisServer) -> None:
    async with cluster(redis_server, "full", retry_after_s=7.0) as (pool, _):
        with pytest.raises(WorkersFull) as e:
            await pool.open("s", seed=1)
        assert e.value.retry_after_s == 7.0 and "try again" in e.value.message


async def test_a_dead_workers_sessions_are_restored_elsewhere(redis_server: RedisServer) -> None:
    async with cluster(redis_server, "ok", "ok") as (pool, (w0, w1)):
        listener = Listener()
        first = await pool.open("s", seed=42, listener=listener)
        dead, alive = (w0, w1) if first == "w0" else (w1, w0)
        moves = sample("microturn_session_moves_total", reason="worker_lost", outcome="moved")
        await dead.die()
        await asyncio.wait_for(listener.event.wait(), 10)  # ttl 1 s + a watch tick
        assert listener.lost == []
        (move,) = listener.moves
        assert (move.from_worker, move.to_worker, move.reason) == (dead.worker_id, alive.worker_id, "worker_lost")
        assert pool.worker_of("s") == alive.worker_id
        (restored,) = alive.opened
        assert restored.restore and restored.seed == 42 and restored.session_id == "s"
        assert sample("microturn_session_moves_total", reason="worker_lost", outcome="moved") == moves + 1


async def test_a_handed_back_session_moves_and_a_lost_one_is_reported(redis_server: RedisServer) -> None:
    async with cluster(redis_server, "ok", "ok") as (pool, (w0, w1)):
        listener = Listener()
        first = await pool.open("s", seed=1, listener=listener)
        pool.move("s", "worker_draining")
        pool.move("s", "worker_draining")  # one move at a time
        await asyncio.wait_for(listener.event.wait(), 5)
        (move,) = listener.moves
        assert move.from_worker == first and move.to_worker != first and move.reason == "worker_draining"
        # the old worker is told to let go (idempotent there), so a worker that was only cut off
        # never steps the session next to its new one
        old = w0 if first == "w0" else w1
        async with asyncio.timeout(5):
            while old.closed != ["s"]:
                await asyncio.sleep(0.02)
        # now nowhere to go: the only other worker refuses
        listener.event.clear()
        for w in (w0, w1):
            w.mode = "full"
        pool.move("s", "worker_draining")
        await asyncio.wait_for(listener.event.wait(), 5)
        assert listener.lost == ["worker_lost"] and pool.worker_of("s") is None


def test_the_edge_and_agent_never_import_model_or_torch() -> None:
    code = (
        "import sys\n"
        "from infra.settings import Settings\n"
        "from signaling.edge import create_edge_app\n"
        "import signaling.cli\n"
        "app = create_edge_app(Settings(), redis_url='redis://127.0.0.1:1/0')\n"
        "signaling.cli.build_edge_parser().parse_args(['edge', '--redis', 'redis://x'])\n"
        # an agent process is as light: its subcommand, worker, backends and Redis queue
        "import contextlib, io\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    signaling.cli.main(['agent', '--help'])\n"
        "import agents.worker, agents.backends.tools, agents.backends.openai, infra.taskqueue\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m == 'model' or m.startswith(('torch.', 'model.')))\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "clean", r.stderr[-2000:]


async def test_two_edges_placing_50_sessions_at_once_never_overbook(redis_server: RedisServer) -> None:
    async with cluster(redis_server, "ok", "ok") as (pool_a, (w0, w1)):
        bus = RedisBus(RedisSettings.from_dsn(redis_server.url, block_ms=200))
        client = RedisSettings.from_dsn(redis_server.url).client()
        pool_b = RedisWorkers(bus, WorkerRegistry(client), "edge2", RedisWorkersSettings(reply_timeout_s=2.0))
        await pool_b.start()
        try:
            results = await asyncio.gather(
                *(pool.open(f"s{i}", seed=i) for i in range(50) for pool in [(pool_a, pool_b)[i % 2]]),
                return_exceptions=True,
            )
            placed = [r for r in results if isinstance(r, str)]
            assert sorted(placed) == ["w0"] * 3 + ["w1"] * 3
            assert all(isinstance(r, WorkersFull) for r in results if not isinstance(r, str))
            assert len(w0.opened) == 3 and len(w1.opened) == 3  # no worker was ever asked for a 4th
        finally:
            await pool_b.aclose()
            await bus.close()
            await client.aclose()
