"""The `microturn` command: one front door, each subcommand owned by its package."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents.cli import add_agent_parser
from model import cli as model_cli
from model.eval.cli import add_eval_parser


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run edge + engine + worker in one process (embedded defaults)")
    p.add_argument("--host", help="listen address (MICROTURN_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (MICROTURN_PORT, default 8080)")
    p.add_argument("--preset", help="preset used when no checkpoint exists (MICROTURN_PRESET, default tiny)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint directory (MICROTURN_CHECKPOINT)")
    p.add_argument("--max-sessions", type=int, help="engine slots (MICROTURN_MAX_SESSIONS, default 8)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Edge + engine (worker thread) + in-process bus in one process, on uvloop when available.

    SIGINT and SIGTERM both stop it cleanly: aiohttp stops accepting, every call is closed
    (the peer is told why, its engine slot released), then the worker and the bus stop.
    """
    import logging

    from aiohttp import web
    from pydantic import ValidationError

    from infra.logging import configure_logging
    from infra.settings import Settings
    from signaling.app import create_app

    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "preset": args.preset,
            "checkpoint": args.checkpoint,
            "max_sessions": args.max_sessions,
        }.items()
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        print(f"error: invalid settings:\n{e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    if settings.log_level != "debug":
        # aioice logs every ICE candidate-pair check at INFO: several lines per call setup
        for name in ("aioice", "aiortc"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # optional: the asyncio loop works, only slower
        pass
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None, shutdown_timeout=10)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="microturn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    model_cli.add_info_parser(sub)
    model_cli.add_train_parser(sub)
    model_cli.add_worker_parser(sub)
    add_eval_parser(sub)
    add_agent_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
