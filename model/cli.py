"""`microturn info`, `worker` and `train` (and, as they land, eval): the model package's subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from model.checkpoint import CheckpointError, load_config
from model.config import ConfigError, ModelConfig, count_params, get_preset

if TYPE_CHECKING:
    from infra.settings import Settings
    from model.service import ServiceSettings


def add_info_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a preset's or checkpoint's config and parameter counts")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="tiny, small or tml-small")
    src.add_argument("--checkpoint", help="checkpoint directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    try:
        cfg: ModelConfig = get_preset(args.preset) if args.preset else load_config(args.checkpoint)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = count_params(cfg)
    info = {**cfg.to_dict(), "total_params": counts.total, "active_params": counts.active}
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        for k, v in info.items():
            print(f"{k:>32}: {v}")
        print(f"{'':>32}  = {counts.total / 1e9:.3f} B total, {counts.active / 1e9:.3f} B active")
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from model.train.trainer import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train (or fine-tune) an interaction model on dialogue clips")
    p.add_argument("--preset", default="tiny", help="architecture for a new model (ignored with --init)")
    p.add_argument("--data", required=True, type=Path, help="directory of clips (model/data layout)")
    p.add_argument("--out", required=True, type=Path, help="run directory: state, checkpoint/, log.jsonl, loss.png")
    p.add_argument("--init", type=Path, help="checkpoint to fine-tune from")
    p.add_argument("--resume", action="store_true", help="continue from --out/train_state.pt")
    p.add_argument("--val-data", type=Path, help="directory of validation clips: val_* losses, --out/best/")
    p.add_argument("--val-every", type=int, default=d.val_every, help="steps between validations (0: only at the end)")
    p.add_argument(
        "--select", default=d.select, help="validation loss that picks the best checkpoint: total, turn, text, ..."
    )
    p.add_argument("--export", type=Path, help="also write a bf16 checkpoint here: best-validation model, else final")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--crop-turns", type=int, default=d.crop_turns)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument(
        "--hold-weight",
        type=float,
        default=d.hold_weight,
        help="loss weight of <pad> inside a user's pause (default: that of any <pad>; see model/train/dataset.py)",
    )
    p.add_argument(
        "--augment-voices",
        action="store_true",
        help="draw each training crop's user a new voice: formant warp, level, tilt, noise, a band mask "
        "(model/train/augment.py)",
    )
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from infra.logging import configure_logging
    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.train.augment import VoiceAugment
    from model.train.dataset import DatasetError
    from model.train.trainer import BEST, TrainConfig, Trainer

    configure_logging()
    tcfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        crop_turns=args.crop_turns,
        lr=args.lr,
        seed=args.seed,
        ckpt_every=args.ckpt_every,
        val_every=args.val_every,
        select=args.select,
        hold_weight=args.hold_weight,
        augment=VoiceAugment() if args.augment_voices else None,
    )
    if args.val_every < 0:
        print("error: --val-every must be >= 0", file=sys.stderr)
        return 2
    if not args.hold_weight >= 0:
        print(f"error: --hold-weight must be >= 0, got {args.hold_weight}", file=sys.stderr)
        return 2
    try:
        cfg = get_preset(args.preset)
        trainer = Trainer(cfg, tcfg, args.data, args.out, init=args.init, val_dir=args.val_data)
    except (ConfigError, CheckpointError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.resume and not trainer.try_resume():
        print(f"error: --resume given but {args.out}/train_state.pt does not exist", file=sys.stderr)
        return 2
    val = f", validating on {len(trainer.val_clips)}" if trainer.val_clips else ""
    print(f"training {trainer.cfg.name} on {len(trainer.clips)} clips{val} -> {args.out}", file=sys.stderr)
    trainer.run()
    if args.export:
        if trainer.best is not None:
            best = load_checkpoint(trainer.out / BEST)
            save_checkpoint(args.export, best.model, best.tokenizer, dtype=torch.bfloat16)
            what = f"best checkpoint (step {trainer.best.step}, val_{trainer.tcfg.select} {trainer.best.value:.4f})"
        else:
            save_checkpoint(args.export, trainer.model, trainer.tokenizer, dtype=torch.bfloat16)
            what = f"final model (step {trainer.step})"
        print(f"exported {what} -> {args.export}", file=sys.stderr)
    return 0


def add_worker_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run an engine that serves sessions placed on it over Redis")
    p.add_argument("--redis", metavar="URL", help="Redis URL, e.g. redis://127.0.0.1:6379/0 (MICROTURN_REDIS_URL)")
    p.add_argument("--worker-id", help="id in the registry (MICROTURN_WORKER_ID, default hostname-pid)")
    p.add_argument("--max-sessions", type=int, help="engine slots (MICROTURN_MAX_SESSIONS, default 8)")
    p.add_argument("--host", help="/healthz and /metrics address (MICROTURN_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="/healthz and /metrics port (default 8081; 0 = none)")
    p.add_argument("--preset", help="preset used when no checkpoint exists (MICROTURN_PRESET, default tiny)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint directory (MICROTURN_CHECKPOINT)")
    p.add_argument("--drain-s", type=float, default=20.0, help="SIGTERM: seconds running sessions go on (20)")
    p.add_argument("--ttl-s", type=float, default=3.0, help="heartbeat TTL in the registry (3)")
    p.add_argument(
        "--torch-threads", type=int, help="torch intra-op threads (MICROTURN_TORCH_THREADS; default every core but one)"
    )
    p.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    """SIGTERM/SIGINT: drain (no new sessions, running ones until --drain-s, then handed
    back to their edges), leave the registry, exit 0."""
    import asyncio
    import os
    import socket

    from infra.logging import configure_logging, get_logger
    from infra.settings import SettingsError, settings_from
    from infra.threads import apply_torch_threads
    from model.service import ServiceSettings

    try:
        settings = settings_from(
            redis_url=args.redis,
            max_sessions=args.max_sessions,
            host=args.host,
            preset=args.preset,
            checkpoint=args.checkpoint,
        )
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not settings.redis_url:
        print("error: --redis URL (or MICROTURN_REDIS_URL) is required; `microturn serve` runs the engine in-process",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.drain_s < 0 or args.ttl_s <= 0:
        print("error: --drain-s must be >= 0 and --ttl-s > 0", file=sys.stderr)
        return 2
    worker_id = args.worker_id or os.environ.get("MICROTURN_WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}"
    port = 8081 if args.port is None else args.port
    service = ServiceSettings(
        worker_id=worker_id, ttl_s=args.ttl_s, drain_s=args.drain_s, stall_s=settings.engine_stall_s
    )
    configure_logging(settings.log_level, settings.log_json)
    try:
        # the core left over runs the vocoder thread (model/worker.py) and the Redis loop
        threads, cores, source = apply_torch_threads(args.torch_threads)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    get_logger(__name__).info("worker.threads", torch_threads=threads, cores=cores, source=source)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # optional: only faster
        pass
    return asyncio.run(serve_worker(settings, service, port))


async def serve_worker(settings: Settings, service: ServiceSettings, port: int) -> int:
    """Load the model, serve until SIGTERM/SIGINT, drain, exit."""
    import asyncio
    import functools
    import signal

    from aiohttp import web

    from infra.logging import get_logger
    from infra.redis_bus import RedisBus, RedisSettings
    from infra.registry import WorkerRegistry
    from model.checkpoint import load_or_random
    from model.engine import Engine
    from model.service import WorkerService

    log = get_logger("model.cli")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    load = functools.partial(load_or_random, settings.checkpoint, settings.preset, device=settings.device)
    ckpt = await loop.run_in_executor(None, load)
    if not ckpt.trained:
        log.warning("model.random_weights", preset=settings.preset, looked_in=str(settings.checkpoint))
    engine = Engine(ckpt.model, ckpt.tokenizer, settings.max_sessions, deterministic=settings.deterministic)
    await loop.run_in_executor(None, engine.warmup)
    assert settings.redis_url
    rs = RedisSettings.from_dsn(settings.redis_url)
    bus = RedisBus(rs)
    registry_redis = rs.client()
    svc = WorkerService(engine, bus, WorkerRegistry(registry_redis, ttl_s=service.ttl_s), service)
    runner: web.AppRunner | None = None
    try:
        if port:
            ops_key = settings.ops_key.get_secret_value() if settings.ops_key else None
            runner = web.AppRunner(svc.http_app(ops_key), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, settings.host, port).start()
        await svc.start()
        log.info("worker.ready", worker_id=service.worker_id, port=port, checkpoint=ckpt.source)
        await stop.wait()
        await svc.drain()
        await svc.stop()
    finally:
        if runner is not None:
            await runner.cleanup()
        await bus.close()
        await registry_redis.aclose()
    return 0
