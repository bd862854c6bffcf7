"""Vocoder cost per micro-turn: the trained vocoder next to streaming Griffin-Lim, in one run.

    .venv/bin/python tests/bench/bench_vocoder.py [--checkpoint checkpoints/tiny] [--repeats 20] [--threads 1]

Prints `name: value` lines, for B in (1, 32) sessions pushed as one batch (the engine's path):
- griffin_lim_ms_B{B}, neural_ms_B{B}: median time of one push of a 200 ms turn (8 mel frames)
  per session, for the whole batch;
- neural_over_griffin_lim_B{B}: their ratio (< 1: the trained vocoder is cheaper);
- neural_params: the trained vocoder's parameter count.
Uses the checkpoint's vocoder if it ships one, else the `tiny` preset with random weights (the
cost does not depend on the weights).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from model import neural_vocoder
from model.config import ModelConfig
from model.neural_vocoder import NeuralVocoder, StreamingNeuralVocoder, get_preset
from model.neural_vocoder import push_batch as neural_push
from model.vocoder import StreamingGriffinLim
from model.vocoder import push_batch as griffin_push


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("checkpoints/tiny"))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig()
    if (args.checkpoint / neural_vocoder.WEIGHTS).is_file():
        net = neural_vocoder.load(args.checkpoint)
    else:
        torch.manual_seed(0)
        net = NeuralVocoder(get_preset("tiny")).eval().requires_grad_(False)
    print(f"neural_params: {sum(p.numel() for p in net.parameters())}")
    gen = torch.Generator().manual_seed(0)
    for B in (1, 32):
        mel = cfg.log_mel_min + torch.rand(B, cfg.frames_per_turn, cfg.n_mels, generator=gen) * 6.0
        gl = [StreamingGriffinLim(cfg) for _ in range(B)]
        nv = [StreamingNeuralVocoder(cfg, net) for _ in range(B)]
        g_ms = timed(functools.partial(griffin_push, gl, mel), args.repeats)
        n_ms = timed(functools.partial(neural_push, nv, mel), args.repeats)
        print(f"griffin_lim_ms_B{B}: {g_ms:.2f}")
        print(f"neural_ms_B{B}: {n_ms:.2f}")
        print(f"neural_over_griffin_lim_B{B}: {n_ms / g_ms:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
