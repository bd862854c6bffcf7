"""`microturn info` (and, as they land, worker/train/eval): the model package's subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.checkpoint import CheckpointError, load_config
from model.config import ConfigError, ModelConfig, count_params, get_preset


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
    p.add_argument("--export", type=Path, help="also write the final model here as a bf16 checkpoint")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--crop-turns", type=int, default=d.crop_turns)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from infra.logging import configure_logging
    from model.checkpoint import save_checkpoint
    from model.train.dataset import DatasetError
    from model.train.trainer import TrainConfig, Trainer

    configure_logging()
    tcfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        crop_turns=args.crop_turns,
        lr=args.lr,
        seed=args.seed,
        ckpt_every=args.ckpt_every,
    )
    try:
        cfg = get_preset(args.preset)
        trainer = Trainer(cfg, tcfg, args.data, args.out, init=args.init)
    except (ConfigError, CheckpointError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.resume and not trainer.try_resume():
        print(f"error: --resume given but {args.out}/train_state.pt does not exist", file=sys.stderr)
        return 2
    print(f"training {trainer.cfg.name} on {len(trainer.clips)} clips -> {args.out}", file=sys.stderr)
    trainer.run()
    if args.export:
        save_checkpoint(args.export, trainer.model, trainer.tokenizer, dtype=torch.bfloat16)
        print(f"exported {args.export}", file=sys.stderr)
    return 0
