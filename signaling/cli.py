"""The `microturn` command: one front door, each subcommand owned by its package."""

from __future__ import annotations

import argparse
import sys

from model import cli as model_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="microturn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    model_cli.add_info_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
