"""The aiohttp application: the call API, the call page, health, readiness and metrics.

`create_app` is `microturn serve`: the app owns one in-process bus, one engine with its worker
thread (behind `LocalWorkers`), the background agents' queue (the tools agent in-process on
that bus, or Redis when MICROTURN_REDIS_URL is set), and the table of calls, all started on
startup and released on cleanup whichever way the process stops. Shutdown order matters:
calls are closed first (each releases its peer connection and engine slot, tells the agents
its session ended, and the peer hears why), then the agents, then the worker stops, then the
bus closes. `microturn edge` (signaling/edge.py) builds the same app around Redis workers.

Model code is imported inside `_runtime` only: this module is shared with the edge, whose
process never loads torch.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.client import BackgroundClient
from agents.local import start_local_agent
from agents.settings import AgentSettings
from infra import memory
from infra.bus import Bus, MemoryBus
from infra.logging import get_logger
from infra.redis_bus import RedisBus, RedisSettings
from infra.settings import Settings
from infra.taskqueue import RedisTaskQueue
from signaling.auth import Authenticator, RateLimiter
from signaling.exposure import check_ops_key, exposure_warnings, install_access_log_redaction, security_headers
from signaling.registry import CallRegistry
from signaling.routes import add_routes, json_errors
from signaling.runtime import BACKGROUND, CHECKPOINT, RUNTIME, SETTINGS, Runtime
from signaling.workers import LocalWorkers

if TYPE_CHECKING:
    from model.checkpoint import Checkpoint

__all__ = ["RUNTIME", "SETTINGS", "Runtime", "create_app", "drain"]

RuntimeContext = Callable[[web.Application], AsyncIterator[None]]

log = get_logger(__name__)


def create_app(
    settings: Settings, *, background: BackgroundClient | None = None, checkpoint: Checkpoint | None = None
) -> web.Application:
    """`background`: the queue background tasks go to, instead of the one the settings call
    for (an in-process tools agent, or Redis); the caller runs its agents and closes it.
    `checkpoint`: an already loaded model to serve instead of loading `settings.checkpoint`
    (tests and embedders that start many apps in one process)."""
    app = base_app(settings, _runtime)
    if checkpoint is not None:
        app[CHECKPOINT] = checkpoint
    if background is not None:
        app[BACKGROUND] = background
    return app


def base_app(settings: Settings, runtime: RuntimeContext) -> web.Application:
    """Routes, page, health and metrics around `runtime`, the cleanup context that puts a
    `Runtime` under RUNTIME (the in-process one above, or the edge's)."""
    app = web.Application(client_max_size=64 * 1024, middlewares=[json_errors])
    app[SETTINGS] = settings
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    add_routes(app)
    web_dir = Path(settings.web_dir)
    if web_dir.is_dir():
        app.router.add_static("/static", web_dir, follow_symlinks=False)
    app.on_response_prepare.append(security_headers)
    install_access_log_redaction()
    app.cleanup_ctx.append(runtime)
    app.on_shutdown.append(_close_calls)
    return app


async def drain(
    app: web.Application, deadline_s: float, *, abort: asyncio.Event | None = None, poll_s: float = 0.1
) -> int:
    """Take no new calls (503 shutting_down, Retry-After) and let running calls end by
    themselves for up to `deadline_s` (or until `abort` is set); returns how many are still up
    (the caller's shutdown closes them)."""
    rt = app.get(RUNTIME)
    if rt is None:
        return 0
    rt.calls.accepting = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    log.info("edge.draining", calls=len(rt.calls), deadline_s=deadline_s)
    while len(rt.calls) and loop.time() < deadline and not (abort is not None and abort.is_set()):
        await asyncio.sleep(poll_s)
    left = len(rt.calls)
    log.info("edge.drained", calls_left=left)
    return left


async def _runtime(app: web.Application) -> AsyncIterator[None]:
    from model.checkpoint import load_or_random
    from model.engine import Engine
    from model.engine_process import EngineProcess
    from model.worker import Worker, WorkerSettings

    settings = app[SETTINGS]
    loop = asyncio.get_running_loop()
    ckpt = app.get(CHECKPOINT)
    if ckpt is None:
        ckpt = await loop.run_in_executor(None, load_or_random, settings.checkpoint, settings.preset)
    if not ckpt.trained:
        log.warning(
            "model.random_weights",
            message="NO TRAINED CHECKPOINT: serving the preset with RANDOM weights; it will babble, not talk",
            preset=settings.preset,
            looked_in=str(settings.checkpoint),
        )
    else:
        log.info("model.loaded", checkpoint=ckpt.source)
    engine: Engine | EngineProcess
    if settings.engine_process:
        start = functools.partial(EngineProcess, ckpt.model, ckpt.tokenizer, settings.max_sessions)
        nice = os.getpriority(os.PRIO_PROCESS, 0) + settings.engine_nice if settings.engine_nice else None
        engine = await loop.run_in_executor(
            None, functools.partial(start, deterministic=settings.deterministic, nice=nice)
        )
    else:
        engine = Engine(ckpt.model, ckpt.tokenizer, settings.max_sessions, deterministic=settings.deterministic)
        await loop.run_in_executor(None, engine.warmup)
    bus = MemoryBus()
    worker = Worker(engine, bus, WorkerSettings())
    await worker.start()
    agents = AsyncExitStack()  # the background agents we started (none when one was given)
    try:
        background = app.get(BACKGROUND) or await agents.enter_async_context(background_agents(settings, bus))
    except BaseException:
        await worker.stop()
        await _stop_engine(engine)
        raise
    for warning in exposure_warnings(settings):
        log.warning("serve.exposed", message=warning)
    rt = Runtime(
        bus=bus,
        workers=LocalWorkers(worker),
        calls=CallRegistry(),
        auth=new_authenticator(settings),
        limiter=RateLimiter(settings.rate_limit_per_min),
        model_name=ckpt.config.name,
        trained=ckpt.trained,
        model_source=str(ckpt.source),
        background=background,
        engine=engine,
        worker=worker,
    )
    app[RUNTIME] = rt
    # what is alive now lives as long as the process: keep the collector off it (infra/memory.py)
    frozen = memory.freeze_heap()
    log.info(
        "serve.ready",
        frozen_objects=frozen,
        max_sessions=settings.max_sessions,
        preset=ckpt.config.name,
        loop=type(loop).__module__.split(".")[0],  # "uvloop" under `microturn serve`
    )
    try:
        yield
    finally:
        try:
            await rt.calls.close_all("server_shutdown")  # normally already done in on_shutdown
        finally:
            try:
                await agents.aclose()
            except Exception as e:  # the worker and bus must still stop
                log.error("serve.agents_close_failed", error=repr(e))
            await worker.stop()
            await _stop_engine(engine)
            await bus.close()
            memory.unfreeze_heap()
            log.info("serve.stopped")


async def _stop_engine(engine: object) -> None:
    from model.engine_process import EngineProcess

    if isinstance(engine, EngineProcess):
        await asyncio.get_running_loop().run_in_executor(None, engine.shutdown)


def new_authenticator(settings: Settings) -> Authenticator:
    secret = settings.token_secret.get_secret_value().encode() if settings.token_secret else None
    return Authenticator(settings.api_keys, secret, settings.token_ttl_s)


@asynccontextmanager
async def background_agents(settings: Settings, bus: Bus) -> AsyncIterator[BackgroundClient]:
    """Where background tasks go. Default: the tools agent in this process on the memory bus,
    nothing to configure. With MICROTURN_REDIS_URL: Redis, worked by `microturn agent`
    processes (plus one in here when MICROTURN_AGENT_IN_PROCESS is set)."""
    if settings.redis_url is None:
        local = await start_local_agent(bus, backend_settings=settings, settings=AgentSettings(consumer="local"))
        log.info("serve.agents", mode="in-process", backend=settings.agent_backend)
        try:
            yield local.client
        finally:
            await local.aclose()
        return
    redis = RedisSettings.from_dsn(settings.redis_url)
    rbus, queue = RedisBus(redis), RedisTaskQueue(redis)
    try:
        if settings.agent_in_process:
            local = await start_local_agent(rbus, queue, backend_settings=settings)
            log.info("serve.agents", mode="redis+in-process", backend=settings.agent_backend)
            try:
                yield local.client
            finally:
                await local.aclose()  # closes the queue too
        else:
            client = BackgroundClient(rbus, queue)
            log.info("serve.agents", mode="redis")
            try:
                yield client
            finally:
                await client.aclose()
                await queue.close()
    finally:
        await rbus.close()


async def _close_calls(app: web.Application) -> None:
    rt = app.get(RUNTIME)
    if rt is not None:
        await rt.calls.close_all("server_shutdown")


async def index(request: web.Request) -> web.StreamResponse:
    """The call page from web/; a plain status page when it is not there."""
    page = Path(request.app[SETTINGS].web_dir) / "index.html"
    if page.is_file():
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})
    rt = request.app[RUNTIME]
    stats = rt.workers.stats()
    warning = "" if rt.trained else "<p><strong>Random weights: no trained checkpoint loaded.</strong></p>"
    html = (
        "<!doctype html><meta charset=utf-8><title>microturn</title>"
        f"<h1>microturn</h1>{warning}<p>model: {rt.model_name} ({rt.model_source})</p>"
        f"<p>sessions: {stats.active} / {stats.capacity}</p>"
    )
    return web.Response(text=html, content_type="text/html")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    check_ops_key(request, request.app[SETTINGS])
    rt = request.app.get(RUNTIME)
    if rt is None:
        return web.json_response({"status": "starting"}, status=503)
    stats = rt.workers.stats()
    # a hung or always-failing engine thread must not look ready (model/worker.py stalled_s)
    stalled_s = rt.workers.stalled_s()
    stalled = stalled_s > request.app[SETTINGS].engine_stall_s
    ready = stats.free > 0 and rt.calls.accepting and not stalled
    body = {
        "status": "ready" if ready else ("stalled" if stalled else "full" if rt.calls.accepting else "stopping"),
        "engine_stalled_s": round(stalled_s, 1),
        "sessions": stats.active,
        "max_sessions": stats.capacity,
        "calls": len(rt.calls),
        "trained": rt.trained,
    }
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    check_ops_key(request, request.app[SETTINGS])
    resp = web.Response(body=generate_latest())
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp
