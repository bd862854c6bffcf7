"""Single-session step time of the tiny preset and its real-time factor on this machine.

    .venv/bin/python tests/bench/bench_model.py [--turns 50]

Prints `name: value` lines. Not part of `make test` (timings on shared machines are noisy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from infra.messages import MicroTurnInput
from model.config import get_preset
from model.interaction import InteractionModel
from model.session import InteractionSession
from model.tokenizer import Tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=50)
    ap.add_argument("--preset", default="tiny")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    sess = InteractionSession(InteractionModel(cfg), Tokenizer.default(cfg.vocab_size), seed=0)
    rs = np.random.RandomState(0)
    frame = rs.randint(0, 256, (120, 160, 3), dtype=np.uint8)
    times = []
    for k in range(args.turns + 5):
        audio = (0.1 * rs.randn(cfg.turn_samples)).astype(np.float32)
        inp = MicroTurnInput.from_arrays(audio, video=frame if k % 5 == 0 else None, turn=k)
        t0 = time.perf_counter()
        sess.step(inp)
        if k >= 5:  # warm-up excluded
            times.append(time.perf_counter() - t0)
    p50 = statistics.median(times) * 1000
    p95 = sorted(times)[int(0.95 * len(times))] * 1000
    print(f"preset: {cfg.name}")
    print(f"threads: {torch.get_num_threads()}")
    print(f"step_ms_p50: {p50:.2f}")
    print(f"step_ms_p95: {p95:.2f}")
    print(f"real_time_factor_p50: {p50 / cfg.micro_turn_ms:.3f}")
    print(f"real_time_factor_p95: {p95 / cfg.micro_turn_ms:.3f}")


if __name__ == "__main__":
    main()
