"""Edge cost and latency with N concurrent real WebRTC calls on loopback.

    .venv/bin/python tests/bench/bench_edge.py [--seconds 10] [--calls 1,4,8]

Runs `microturn serve` (edge + engine + in-process bus, uvloop, random-weights tiny model) as
a child process and N aiortc callers in this process, each streaming speech in real time
(Opus) and receiving the model's audio and events. For each N it prints `name: value` lines:

- server_cpu_s_per_call_s_N{n}: CPU seconds (user + system, all threads, from /proc) the
  server process spent per second of call, model compute included;
- edge_added_ms_p50_N{n} / _p95_N{n}: server-added latency per micro-turn, from the
  `metrics.latency` events: (last input sample of the turn in -> first output sample of that
  turn handed to the output track) minus the model's step time for that turn's batch. What is
  left is the edge, the bus and the worker's scheduling (its 5 ms gather window included);
- turn_latency_ms_p50_N{n}, step_ms_p50_N{n}: the same turn latency with the model compute,
  and the compute alone, for context;
- rx_max_gap_ms_N{n}: the largest gap between audio frames arriving at any caller.

Each line comes twice: with the model (`..._N{n}`) and with an echo stub in place of the
model's step (`..._stub_N{n}`: outputs are the inputs, computed in microseconds). The stub
rows are the edge's own cost and latency, free of model compute and of queueing behind a
model step that is slower than real time on a small CPU.

The callers (Opus encode + decode for N calls) share the machine with the server, so on a
small machine the numbers for large N include contention from the load generator itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.e2e.aiortc_client import Caller, read_wav, speech_wav  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a whole process (all threads) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_with_stub_model() -> None:
    """Child process: `microturn serve` with Engine.step replaced by an instant echo."""
    from infra.messages import MicroTurnInput, MicroTurnOutput
    from model.engine import Engine
    from signaling import cli

    def echo_step(self: Engine, inputs: list[MicroTurnInput]) -> list[MicroTurnOutput]:
        return [
            MicroTurnOutput(session_id=i.session_id, turn=i.turn, audio=i.audio, text="", caption="", step_ms=0.0)
            for i in inputs
        ]

    Engine.step = echo_step  # type: ignore[method-assign]
    sys.exit(cli.main(["serve"]))


def start_server(max_sessions: int, tmp: Path, *, stub: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "MICROTURN_PORT": str(port),
        "MICROTURN_CHECKPOINT": str(tmp / "none"),
        "MICROTURN_MAX_SESSIONS": str(max_sessions),
        "MICROTURN_MAX_CALLS_PER_CLIENT": str(max_sessions),
        "MICROTURN_LOG_LEVEL": "warning",
    }
    cmd = [sys.executable, __file__, "--stub-server"] if stub else [sys.executable, "-m", "signaling.cli", "serve"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1):
                return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("server did not start") from None
            time.sleep(0.2)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


async def run_n(url: str, pid: int, n: int, seconds: float, audio: np.ndarray) -> dict[str, float]:
    async with aiohttp.ClientSession() as http:
        callers = [Caller(url, http, audio, loop_audio=True) for _ in range(n)]
        try:
            for c in callers:
                await c.mint_token()
                r = await c.connect()
                if r.status != 201:
                    raise SystemExit(f"call refused: {r.status}")
            for c in callers:
                await c.wait_event(lambda e: e["type"] == "metrics.latency", timeout=20)
            await asyncio.sleep(1.0)  # settle: every call streaming, outputs flowing
            marks = [len(c.events) for c in callers]
            rx_marks = [len(c.received.arrivals) for c in callers]
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            await asyncio.sleep(seconds)
            cpu1, t1 = cpu_seconds(pid), time.monotonic()
            lat = [
                e for c, m in zip(callers, marks, strict=True) for e in c.events[m:] if e["type"] == "metrics.latency"
            ]
            gaps = [
                float(np.diff(c.received.arrivals[m:]).max() * 1000)
                for c, m in zip(callers, rx_marks, strict=True)
                if len(c.received.arrivals) - m > 1
            ]
            for c in callers:
                await c.hangup()
        finally:
            for c in callers:
                await c.close()
    edge = [e["server_ms"] - e["step_ms"] for e in lat]
    return {
        "server_cpu_s_per_call_s": (cpu1 - cpu0) / (n * (t1 - t0)),
        "edge_added_ms_p50": pct(edge, 50),
        "edge_added_ms_p95": pct(edge, 95),
        "turn_latency_ms_p50": pct([e["server_ms"] for e in lat], 50),
        "step_ms_p50": pct([e["step_ms"] for e in lat], 50),
        "rx_max_gap_ms": max(gaps) if gaps else float("nan"),
        "turns_measured": float(len(lat)),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured call time per N")
    ap.add_argument("--calls", default="1,4,8", help="comma-separated concurrent call counts")
    ap.add_argument("--no-stub", action="store_true", help="skip the echo-stub rows")
    ap.add_argument("--stub-server", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stub_server:
        serve_with_stub_model()
    ns = [int(x) for x in args.calls.split(",")]
    print(f"cpus: {os.cpu_count()}")
    print(f"seconds_per_n: {args.seconds:g}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        audio = read_wav(speech_wav(tmp / "speech.wav", 6.0))
        for stub in (False, True) if not args.no_stub else (False,):
            proc, url = start_server(max(ns), tmp, stub=stub)
            try:
                for n in ns:
                    res = await run_n(url, proc.pid, n, args.seconds, audio)
                    for k, v in res.items():
                        name = f"{k}{'_stub' if stub else ''}_N{n}"
                        print(f"{name}: {int(v)}" if k == "turns_measured" else f"{name}: {v:.3f}", flush=True)
                    await asyncio.sleep(1.0)  # let the server release the calls
            finally:
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    if "--stub-server" in sys.argv:
        serve_with_stub_model()
    asyncio.run(main())
