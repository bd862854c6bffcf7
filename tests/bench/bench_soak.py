"""Soak: what a long-running `microturn serve` keeps per call, N real WebRTC calls in a row.

    .venv/bin/python tests/bench/bench_soak.py [--calls 60] [--concurrency 3] [--seconds 2]

Starts `microturn serve` as a child process (random-weights tiny model, in-process bus, an
API key, uvloop: what an integrator runs) and places `--calls` real aiortc calls against it,
`--concurrency` at a time, each streaming speech for `--seconds` and hanging up with DELETE.
The first `--warmup` calls are not measured: they fill allocator pools, codec tables, import
caches and the like, which a server pays once. Prints `name: value` lines:

- rss_mb_start / rss_mb_after_warmup / rss_mb_end: the server's resident set (VmRSS) at
  start, after the warm-up calls and after the last call (every call released, 2 s later);
- rss_kb_per_call: (rss_end - rss_after_warmup) / measured calls, the number that says
  whether a server that runs for weeks needs restarts. A few KB is noise (allocator
  fragmentation, caches that fill up to their cap); a steady tens of KB or more is a leak;
- calls_ok / calls_failed, calls_active_end (from /readyz: must be 0);
- seconds: wall time of the measured part.

`--stub` replaces the model's step with an instant echo, to tell the edge's share from the
engine's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_edge import free_port  # noqa: E402
from tests.e2e.aiortc_client import Caller, read_wav, speech_wav  # noqa: E402

API_KEY = "soak-key"


def rss_mb(pid: int) -> float:
    """Resident set of a process, from /proc/<pid>/status (VmRSS is in kB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def start_server(concurrency: int, tmp: Path, *, stub: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MICROTURN_PORT": str(port),
        "MICROTURN_CHECKPOINT": str(tmp / "none"),
        "MICROTURN_MAX_SESSIONS": str(max(2, concurrency)),
        "MICROTURN_API_KEYS": API_KEY,
        "MICROTURN_LOG_LEVEL": "warning",
    }
    bench_edge = ROOT / "tests" / "bench" / "bench_edge.py"
    cmd = (
        [sys.executable, str(bench_edge), "--stub-server"] if stub else [sys.executable, "-m", "signaling.cli", "serve"]
    )
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
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


def ready(url: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
            body: dict[str, object] = json.loads(r.read())
    except urllib.error.HTTPError as e:  # 503 while full still has the body
        body = json.loads(e.read())
    return body


async def one_call(http: aiohttp.ClientSession, url: str, audio: np.ndarray, seconds: float) -> bool:
    caller = Caller(url, http, audio, loop_audio=True)
    try:
        r = await caller.connect(token=API_KEY)
        if r.status != 201:
            return False
        await asyncio.wait_for(caller.connected.wait(), 20)
        await asyncio.sleep(seconds)
        return await caller.hangup() == 204
    except (TimeoutError, aiohttp.ClientError):
        return False
    finally:
        await caller.close()


async def run_calls(url: str, n: int, concurrency: int, seconds: float, audio: np.ndarray) -> tuple[int, int]:
    ok = failed = 0
    todo = iter(range(n))

    async def lane(http: aiohttp.ClientSession) -> None:
        nonlocal ok, failed
        for _ in todo:  # the lanes share one iterator: n calls in all
            if await one_call(http, url, audio, seconds):
                ok += 1
            else:
                failed += 1

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(lane(http) for _ in range(concurrency)))
    return ok, failed


async def settle(url: str) -> None:
    """Wait until the server holds no call, then a little for deferred frees."""
    for _ in range(100):
        if ready(url).get("calls") == 0:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.0)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=60, help="measured calls")
    ap.add_argument("--warmup", type=int, default=12, help="calls before the measurement starts")
    ap.add_argument("--concurrency", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0, help="media time per call")
    ap.add_argument("--stub", action="store_true", help="echo stub instead of the model's step")
    args = ap.parse_args()
    print(f"calls: {args.calls}")
    print(f"warmup_calls: {args.warmup}")
    print(f"concurrency: {args.concurrency}")
    print(f"seconds_per_call: {args.seconds:g}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        audio = read_wav(speech_wav(tmp / "speech.wav", 6.0))
        proc, url = start_server(args.concurrency, tmp, stub=args.stub)
        try:
            print(f"rss_mb_start: {rss_mb(proc.pid):.1f}", flush=True)
            ok0, failed0 = await run_calls(url, args.warmup, args.concurrency, args.seconds, audio)
            await settle(url)
            rss_warm = rss_mb(proc.pid)
            print(f"rss_mb_after_warmup: {rss_warm:.1f}", flush=True)
            t0 = time.monotonic()
            ok, failed = await run_calls(url, args.calls, args.concurrency, args.seconds, audio)
            elapsed = time.monotonic() - t0
            await settle(url)
            rss_end = rss_mb(proc.pid)
            print(f"rss_mb_end: {rss_end:.1f}")
            print(f"rss_kb_per_call: {(rss_end - rss_warm) * 1024 / max(1, args.calls):.1f}")
            print(f"calls_ok: {ok0 + ok}")
            print(f"calls_failed: {failed0 + failed}")
            print(f"calls_active_end: {ready(url).get('calls')}")
            print(f"seconds: {elapsed:.1f}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
