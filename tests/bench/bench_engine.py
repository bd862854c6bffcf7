"""Engine throughput on the tiny preset, all measured side by side in one run.

    .venv/bin/python tests/bench/bench_engine.py [--repeats 5]

Prints `name: value` lines:
- step_ms_B{1,4,16,32}: one batched micro-turn for B sessions;
- max_sessions_within_100ms: the largest B whose step stays under 100 ms (half a micro-turn:
  the sessions one CPU worker serves in real time with margin);
- batched_speedup_B16: 16 sessions stepped one at a time (the one-conversation-at-a-time server)
  over the same 16 stepped as one batch;
- deterministic_cost_B16: batch-invariant mode step time over normal mode;
- append_speedup_full_window: re-prefilling the whole window every micro-turn (one cache-less
  forward over `window` positions, then the turn) over streaming append, with the window full.
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
from model.engine import Engine
from model.interaction import InteractionModel
from model.positions import concat
from model.session import InteractionSession
from model.tokenizer import Tokenizer

RS = np.random.RandomState(0)
FRAME = RS.randint(0, 256, (120, 160, 3), dtype=np.uint8)


def inputs(sids: list[str], turn: int) -> list[MicroTurnInput]:
    # one session in five sends a video frame each turn: ~1 fps per session
    return [
        MicroTurnInput.from_arrays(
            (0.1 * RS.randn(3200)).astype(np.float32),
            video=FRAME if (i + turn) % 5 == 0 else None,
            session_id=sid,
            turn=turn,
        )
        for i, sid in enumerate(sids)
    ]


def time_steps(engine: Engine, B: int, repeats: int, one_at_a_time: bool = False) -> float:
    sids = [f"s{i}" for i in range(B)]
    for sid in sids:
        engine.open(sid)
    times = []
    for k in range(repeats + 2):
        batch = inputs(sids, k)
        t0 = time.perf_counter()
        if one_at_a_time:
            for inp in batch:
                engine.step([inp])
        else:
            engine.step(batch)
        if k >= 2:
            times.append(time.perf_counter() - t0)
    for sid in sids:
        engine.close(sid)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    tok = Tokenizer.default(cfg.vocab_size)
    model = InteractionModel(cfg).eval()
    engine = Engine(model, tok, max_sessions=64)
    engine.warmup()
    print(f"preset: {cfg.name}")
    print(f"threads: {torch.get_num_threads()}")

    step = {}
    for B in (1, 4, 16, 32):
        step[B] = time_steps(engine, B, args.repeats)
        print(f"step_ms_B{B}: {step[B]:.1f}")

    best = 0
    for B in (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64):
        ms = step[B] if B in step else time_steps(engine, B, args.repeats)
        if ms > 100:
            break
        best = B
    print(f"max_sessions_within_100ms: {best}")

    serial = time_steps(engine, 16, args.repeats, one_at_a_time=True)
    print(f"step_ms_B16_one_at_a_time: {serial:.1f}")
    print(f"batched_speedup_B16: {serial / step[16]:.2f}")

    det = Engine(model, tok, max_sessions=16, deterministic=True)
    det_ms = time_steps(det, 16, args.repeats)
    model.set_batch_invariant(False)
    print(f"step_ms_B16_deterministic: {det_ms:.1f}")
    print(f"deterministic_cost_B16: {det_ms / step[16]:.2f}")

    # streaming append vs re-prefill of the whole window, once the window is full
    sess = InteractionSession(model, tok, seed=0, trace=True)
    k = 0
    while sess.state.next_pos < cfg.window + cfg.n_sinks + 50:
        sess.step(inputs(["local"], k)[0])
        k += 1
    window_chunks = concat([c for t in sess.trace for c in t.chunks])
    tail = slice(window_chunks.shape[1] - cfg.window, window_chunks.shape[1])
    append, reprefill = [], []
    for _ in range(args.repeats):
        inp = inputs(["local"], k)[0]
        k += 1
        t0 = time.perf_counter()
        sess.step(inp)
        append.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            p = window_chunks
            model(type(p)(**{f: getattr(p, f)[:, tail] if f != "patches" else p.patches for f in p.__dict__}))
        reprefill.append(time.perf_counter() - t0 + append[-1])
    a, r = statistics.median(append) * 1000, statistics.median(reprefill) * 1000
    print(f"step_ms_append_full_window: {a:.1f}")
    print(f"step_ms_reprefill_full_window: {r:.1f}")
    print(f"append_speedup_full_window: {r / a:.2f}")


if __name__ == "__main__":
    main()
