"""The aiohttp application: health, readiness, metrics, and the engine behind them.

This is the seam the WebRTC edge (POST /v1/calls, the call page) plugs into: the app owns
one in-process bus, one engine and its worker thread, started on startup and released on
cleanup, whichever way the process stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infra.bus import MemoryBus
from infra.logging import get_logger
from infra.settings import Settings
from model.checkpoint import Checkpoint, load_or_random
from model.engine import Engine
from model.worker import Worker, WorkerSettings

log = get_logger(__name__)


@dataclass
class Runtime:
    checkpoint: Checkpoint
    engine: Engine
    bus: MemoryBus
    worker: Worker


RUNTIME = web.AppKey("runtime", Runtime)
SETTINGS = web.AppKey("settings", Settings)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[SETTINGS] = settings
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(_runtime)
    return app


async def _runtime(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    loop = asyncio.get_running_loop()
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
    engine = Engine(ckpt.model, ckpt.tokenizer, settings.max_sessions, deterministic=settings.deterministic)
    await loop.run_in_executor(None, engine.warmup)
    bus = MemoryBus()
    worker = Worker(engine, bus, WorkerSettings())
    await worker.start()
    app[RUNTIME] = Runtime(checkpoint=ckpt, engine=engine, bus=bus, worker=worker)
    log.info("serve.ready", max_sessions=settings.max_sessions, preset=ckpt.config.name)
    try:
        yield
    finally:
        await worker.stop()
        await bus.close()
        log.info("serve.stopped")


async def index(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    stats = rt.engine.stats()
    warning = "" if rt.checkpoint.trained else "<p><strong>Random weights: no trained checkpoint loaded.</strong></p>"
    html = (
        "<!doctype html><meta charset=utf-8><title>microturn</title>"
        f"<h1>microturn</h1>{warning}<p>model: {rt.checkpoint.config.name} ({rt.checkpoint.source})</p>"
        f"<p>sessions: {stats.active} / {stats.max_sessions}</p>"
    )
    return web.Response(text=html, content_type="text/html")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    rt = request.app.get(RUNTIME)
    if rt is None:
        return web.json_response({"status": "starting"}, status=503)
    stats = rt.engine.stats()
    body = {
        "status": "ready" if stats.free else "full",
        "sessions": stats.active,
        "max_sessions": stats.max_sessions,
        "trained": rt.checkpoint.trained,
    }
    return web.json_response(body, status=200 if stats.free else 503)


async def metrics(request: web.Request) -> web.Response:
    resp = web.Response(body=generate_latest())
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp
