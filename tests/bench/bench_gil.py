"""The engine next to a busy event loop: in a thread of the loop's process, or in its own process.

    .venv/bin/python tests/bench/bench_gil.py [--sessions 4] [--busy 0.3,0.6] [--steps 10]

A thread stands in for `microturn serve`'s event loop: it runs pure Python for a share of every
10 ms (`--busy`, what aiortc and aiohttp do with packets; 0.3 is about 4 calls) and sleeps the
rest. Next to it the tiny model steps B sessions, either as an `Engine` driven from a thread of
this process (serve's engine before model/engine_process.py) or as an `EngineProcess`. Prints,
per busy share, the median step time of each and their ratio:

- step_ms_alone_{thread,process}: no busy thread (the IPC's own cost shows here);
- step_ms_busy{share}_{thread,process}, gil_slowdown_busy{share}: in-thread over in-process.

Each torch op releases the GIL and takes it back: next to a thread that holds the GIL, every
one of a step's ~1,000 ops waits for it. The child process has a GIL of its own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from infra.messages import MicroTurnInput
from model.config import get_preset
from model.engine import Engine
from model.engine_process import EngineProcess
from model.interaction import InteractionModel
from model.tokenizer import Tokenizer

RS = np.random.RandomState(0)


def busy_loop(share: float, stop: threading.Event) -> None:
    period = 0.010
    while not stop.is_set():
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < share * period:
            pass
        time.sleep(period * (1 - share))


def step_ms(engine: Engine | EngineProcess, sids: list[str], steps: int) -> float:
    times = []
    for k in range(steps + 2):
        batch = [
            MicroTurnInput.from_arrays((0.1 * RS.randn(3200)).astype(np.float32), session_id=s, turn=k) for s in sids
        ]
        t0 = time.perf_counter()
        result = engine.step_isolated(batch, defer_audio=True)
        for job in result.audio:  # the worker's vocoder thread would; keeps the child's pipe flowing
            job.run()
        if k >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--busy", default="0.3,0.6", help="comma-separated busy shares of the stand-in loop")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    tok = Tokenizer.default(cfg.vocab_size)
    model = InteractionModel(cfg).eval()
    engines: dict[str, Engine | EngineProcess] = {
        "thread": Engine(model, tok, args.sessions),
        "process": EngineProcess(model, tok, args.sessions, torch_threads=1),
    }
    engines["thread"].warmup()
    sids = [f"s{i}" for i in range(args.sessions)]
    for e in engines.values():
        for s in sids:
            e.open(s)
    print(f"sessions: {args.sessions}")
    try:
        for name, e in engines.items():
            print(f"step_ms_alone_{name}: {step_ms(e, sids, args.steps):.1f}", flush=True)
        for share in (float(x) for x in args.busy.split(",")):
            ms = {}
            for name, e in engines.items():
                stop = threading.Event()
                loop = threading.Thread(target=busy_loop, args=(share, stop), name="stand-in loop")
                loop.start()
                try:
                    ms[name] = step_ms(e, sids, args.steps)
                finally:
                    stop.set()
                    loop.join()
                print(f"step_ms_busy{share:g}_{name}: {ms[name]:.1f}", flush=True)
            print(f"gil_slowdown_busy{share:g}: {ms['thread'] / ms['process']:.2f}", flush=True)
    finally:
        process = engines["process"]
        assert isinstance(process, EngineProcess)
        process.shutdown()


if __name__ == "__main__":
    main()
