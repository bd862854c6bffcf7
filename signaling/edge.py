"""`microturn edge`: signaling, media and the call page, with the model on `microturn worker`
processes reached over Redis (DESIGN.md §9).

The same app as `microturn serve` (signaling/app.py) around a different runtime: micro-turns
ride a `RedisBus`, sessions are placed by `RedisWorkers`, background tasks go to
`microturn agent` processes over Redis. Nothing here imports `model`, so torch never loads in
an edge process.

SIGTERM drains: new calls get 503 `shutting_down` with Retry-After at once (and /readyz says
"stopping", so a load balancer stops sending), running calls go on until they end or the
drain deadline passes, then whatever is left is closed (`server_shutdown`) and the process
exits 0. A second SIGTERM/SIGINT cuts the drain short.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

from aiohttp import web

from infra import memory
from infra.logging import get_logger
from infra.redis_bus import RedisBus, RedisSettings
from infra.registry import WorkerRegistry
from infra.settings import Settings
from signaling.app import background_agents, base_app, drain, new_authenticator
from signaling.auth import RateLimiter
from signaling.exposure import exposure_warnings
from signaling.registry import CallRegistry
from signaling.runtime import BACKGROUND, RUNTIME, SETTINGS, Runtime
from signaling.workers import RedisWorkers, RedisWorkersSettings

log = get_logger(__name__)

DEFAULT_DRAIN_S = 30.0


@dataclass(frozen=True)
class EdgeConfig:
    redis_url: str
    edge_id: str
    workers: RedisWorkersSettings


EDGE = web.AppKey("edge", EdgeConfig)


def default_edge_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def create_edge_app(
    settings: Settings,
    *,
    redis_url: str,
    edge_id: str | None = None,
    workers: RedisWorkersSettings | None = None,
) -> web.Application:
    """The edge app; `settings.redis_url` is set to `redis_url` (the agents' queue lives there too)."""
    settings = settings.model_copy(update={"redis_url": redis_url})
    app = base_app(settings, _edge_runtime)
    app[EDGE] = EdgeConfig(redis_url, edge_id or default_edge_id(), workers or RedisWorkersSettings())
    return app


async def _edge_runtime(app: web.Application) -> AsyncIterator[None]:
    settings, cfg = app[SETTINGS], app[EDGE]
    redis = RedisSettings.from_dsn(cfg.redis_url)
    bus = RedisBus(redis)
    registry_client = redis.client()
    pool = RedisWorkers(bus, WorkerRegistry(registry_client), cfg.edge_id, cfg.workers)
    stack = AsyncExitStack()  # unwound in reverse: agents, pool, clients
    try:
        stack.push_async_callback(bus.close)
        stack.push_async_callback(registry_client.aclose)
        await pool.start()
        stack.push_async_callback(pool.aclose)
        background = app.get(BACKGROUND) or await stack.enter_async_context(background_agents(settings, bus))
        for warning in exposure_warnings(settings):
            log.warning("serve.exposed", message=warning)
        rt = Runtime(
            bus=bus,
            workers=pool,
            calls=CallRegistry(),
            auth=new_authenticator(settings),
            limiter=RateLimiter(settings.rate_limit_per_min),
            # the edge does not see the weights; each worker logs whether its are trained
            model_name=settings.preset,
            trained=True,
            model_source="microturn worker processes",
            background=background,
        )
        app[RUNTIME] = rt
        frozen = memory.freeze_heap()
        stats = pool.stats()
        log.info("edge.ready", edge_id=cfg.edge_id, frozen_objects=frozen, workers_capacity=stats.capacity)
    except BaseException:
        await stack.aclose()
        raise
    try:
        yield
    finally:
        try:
            await rt.calls.close_all("server_shutdown")  # normally already done in on_shutdown
        finally:
            await stack.aclose()
            memory.unfreeze_heap()
            log.info("edge.stopped", edge_id=cfg.edge_id)


async def serve_edge(app: web.Application, host: str, port: int, drain_s: float) -> int:
    """Serve until SIGTERM/SIGINT, drain for up to `drain_s`, close what is left; 0 = clean."""
    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        (hurry if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=10)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("edge.listening", host=host, port=port)
        await stop.wait()
        await drain(app, drain_s, abort=hurry)
    finally:
        await runner.cleanup()  # closes calls still up (server_shutdown), then the runtime
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
