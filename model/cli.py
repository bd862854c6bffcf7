"""`microturn info` (and, as they land, worker/train/eval): the model package's subcommands."""

from __future__ import annotations

import argparse
import json
import sys

from model.checkpoint import CheckpointError, load_config
from model.config import ConfigError, ModelConfig, count_params, get_preset


def add_info_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
