"""`microturn agent --redis URL`: background agents in a process of their own.

Any number of these share the work through the consumer group on bg:tasks. SIGTERM or
SIGINT stops cleanly: no new tasks, running ones get `drain_s` to finish, the rest go back to
the queue for another agent. (`microturn serve` runs one in-process instead: agents/local.py.)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
from typing import TYPE_CHECKING, Any

from agents.settings import AgentSettings

if TYPE_CHECKING:
    from agents.worker import BackendFactory


def add_agent_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="run background agents against Redis (bg:tasks consumer group)")
    _add_arguments(p)
    p.set_defaults(func=run_agent)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis", metavar="URL", help="Redis URL, e.g. redis://127.0.0.1:6379/0 (MICROTURN_REDIS_URL)")
    p.add_argument(
        "--backend",
        help="tools | openai | package.module:factory (MICROTURN_AGENT_BACKEND, default tools)",
    )
    p.add_argument("--concurrency", type=int, help="tasks run at once (MICROTURN_AGENT_CONCURRENCY, default 4)")
    p.add_argument("--consumer", help="consumer name in the group (default host-pid)")
    p.add_argument("--port", type=int, help="serve /healthz and /metrics on this port (MICROTURN_AGENT_PORT)")


def backend_factory(name: str, backend_settings: Any) -> BackendFactory:
    """`tools`/`openai` from agents/backend.py, or `package.module:factory` called as
    factory(backend_settings, fire) -> Backend (a backend of your own, or a test double)."""
    from agents.backend import BACKENDS, Backend, FireCallback, make_backend

    if ":" in name:
        module, _, attr = name.partition(":")
        fn = getattr(importlib.import_module(module), attr)

        def custom(fire: FireCallback) -> Backend:
            backend: Backend = fn(backend_settings, fire)
            return backend

        return custom
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: expected one of {BACKENDS} or package.module:factory")

    def builtin(fire: FireCallback) -> Backend:
        return make_backend(backend_settings, fire, name=name)

    return builtin


def run_agent(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from agents.backend import BACKENDS
    from infra.logging import configure_logging
    from infra.settings import Settings

    try:
        settings = AgentSettings.from_env(
            redis_url=args.redis,
            backend=args.backend,
            concurrency=args.concurrency,
            consumer=args.consumer,
            port=args.port,
        )
        # a custom backend factory is not one of Settings' literal choices
        overrides: dict[str, Any] = {} if settings.backend in BACKENDS else {"agent_backend": "tools"}
        common = Settings(**overrides)
        factory = backend_factory(settings.backend, common)
    except (ValueError, ValidationError, ImportError, AttributeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not settings.redis_url:
        msg = "--redis URL (or MICROTURN_REDIS_URL) is required; `microturn serve` runs agents in-process"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    configure_logging(common.log_level, common.log_json)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # optional: only faster
        pass
    ops_key = common.ops_key.get_secret_value() if common.ops_key else None
    return asyncio.run(serve_agent(settings, factory, host=common.host, ops_key=ops_key))


async def serve_ops(host: str, port: int, ops_key: str | None = None) -> Any:
    """/healthz (always open) and /metrics (Bearer MICROTURN_OPS_KEY when set) for probes and
    Prometheus; returns the aiohttp AppRunner to clean up."""
    import hmac

    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(request: web.Request) -> web.Response:
        presented = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if ops_key is not None and not hmac.compare_digest(presented, f"Bearer {ops_key}".encode()):
            return web.json_response({"error": "unauthorized"}, status=401)
        resp = web.Response(body=generate_latest())
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def serve_agent(
    settings: AgentSettings,
    factory: BackendFactory,
    stop: asyncio.Event | None = None,
    *,
    host: str = "127.0.0.1",
    ops_key: str | None = None,
) -> int:
    """Run until `stop` is set (or, without one, until SIGTERM/SIGINT)."""
    from agents.worker import AgentWorker
    from infra.redis_bus import RedisBus, RedisSettings
    from infra.taskqueue import RedisTaskQueue

    assert settings.redis_url
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    redis = RedisSettings.from_dsn(settings.redis_url)
    bus, queue = RedisBus(redis), RedisTaskQueue(redis)
    worker = AgentWorker(queue, bus, factory, settings)
    ops = await serve_ops(host, settings.port, ops_key) if settings.port else None
    try:
        await worker.start()
        await stop.wait()
        await worker.stop()
    finally:
        await bus.close()
        await queue.close()
        if ops is not None:
            await ops.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agents.cli", description=__doc__)
    _add_arguments(p)
    return run_agent(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
