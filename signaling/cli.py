"""The `microturn` command: one front door, each subcommand owned by its package.

`microturn edge ...` builds a parser of its own that never touches `model`: an edge process
must not load torch (DESIGN.md §2), and importing the model package's subcommands would.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents.cli import add_agent_parser


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run edge + engine + worker in one process (embedded defaults)")
    p.add_argument("--host", help="listen address (MICROTURN_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (MICROTURN_PORT, default 8080)")
    p.add_argument("--preset", help="preset used when no checkpoint exists (MICROTURN_PRESET, default tiny)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint directory (MICROTURN_CHECKPOINT)")
    p.add_argument("--max-sessions", type=int, help="engine slots (MICROTURN_MAX_SESSIONS, default 8)")
    p.add_argument(
        "--torch-threads",
        type=int,
        help="torch intra-op threads (MICROTURN_TORCH_THREADS, default: every core but one; infra/threads.py)",
    )
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Edge + engine (worker thread) + in-process bus in one process, on uvloop when available.

    SIGINT and SIGTERM both stop it cleanly: aiohttp stops accepting, every call is closed
    (the peer is told why, its engine slot released), then the worker and the bus stop.
    """
    from aiohttp import web

    from infra.logging import configure_logging, get_logger
    from infra.settings import SettingsError, settings_from
    from signaling.app import create_app

    try:
        settings = settings_from(
            host=args.host,
            port=args.port,
            preset=args.preset,
            checkpoint=args.checkpoint,
            max_sessions=args.max_sessions,
        )
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    _quiet_ice(settings.log_level)
    try:
        from infra.threads import apply_torch_threads

        threads, cores, source = apply_torch_threads(args.torch_threads)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    get_logger("signaling.cli").info("serve.threads", torch_threads=threads, cores=cores, source=source)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # optional: the asyncio loop works, only slower
        pass
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None, shutdown_timeout=10)
    return 0


def add_edge_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("edge", help="run signaling + media + page; the model runs on `microturn worker` processes")
    p.add_argument("--redis", help="Redis URL of the cluster (MICROTURN_REDIS_URL)")
    p.add_argument("--host", help="listen address (MICROTURN_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (MICROTURN_PORT, default 8080)")
    p.add_argument("--edge-id", help="this edge's name for control replies (default hostname-pid)")
    p.add_argument("--drain-s", type=float, default=30.0, help="SIGTERM: how long running calls may go on (default 30)")
    p.add_argument("--reply-timeout-s", type=float, default=3.0, help="wait for a worker's answer (default 3)")
    p.set_defaults(func=run_edge)


def _quiet_ice(level: str) -> None:
    import logging

    if level != "debug":
        # aioice logs every ICE candidate-pair check at INFO: several lines per call setup
        for name in ("aioice", "aiortc"):
            logging.getLogger(name).setLevel(logging.WARNING)


def run_edge(args: argparse.Namespace) -> int:
    """Signaling, media and the page over Redis; drains on SIGTERM (signaling/edge.py)."""
    import asyncio

    from infra.logging import configure_logging
    from infra.settings import SettingsError, settings_from
    from signaling.edge import create_edge_app, serve_edge
    from signaling.workers import RedisWorkersSettings

    try:
        settings = settings_from(host=args.host, port=args.port, redis_url=args.redis)
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not settings.redis_url:
        print("error: microturn edge needs --redis URL (or MICROTURN_REDIS_URL)", file=sys.stderr)
        return 2
    if args.drain_s < 0 or args.reply_timeout_s <= 0:
        print("error: --drain-s must be >= 0 and --reply-timeout-s > 0", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    _quiet_ice(settings.log_level)
    app = create_edge_app(
        settings,
        redis_url=settings.redis_url,
        edge_id=args.edge_id,
        workers=RedisWorkersSettings(reply_timeout_s=args.reply_timeout_s),
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(serve_edge(app, settings.host, settings.port, args.drain_s))


# Subcommands whose processes must not load torch (an edge, an agent): parsed on their own so
# that building the full parser (which imports the model package's subcommands) never happens.
_LIGHT = {"edge": add_edge_parser, "agent": add_agent_parser}


def build_light_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="microturn", description=__doc__)
    _LIGHT[command](parser.add_subparsers(dest="command", required=True))
    return parser


def build_edge_parser() -> argparse.ArgumentParser:
    return build_light_parser("edge")


def build_parser() -> argparse.ArgumentParser:
    from model import cli as model_cli
    from model.eval.cli import add_eval_parser

    parser = argparse.ArgumentParser(prog="microturn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    add_edge_parser(sub)
    model_cli.add_info_parser(sub)
    model_cli.add_train_parser(sub)
    model_cli.add_worker_parser(sub)
    add_eval_parser(sub)
    add_agent_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = (build_light_parser(argv[0]) if argv[:1] and argv[0] in _LIGHT else build_parser()).parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
