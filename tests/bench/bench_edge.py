"""Edge cost and latency with N concurrent real WebRTC calls on loopback.

    .venv/bin/python tests/bench/bench_edge.py [--seconds 10] [--calls 1,4,8] [--torch-threads N]
        [--load encoded|full] [--codec opus|pcmu] [--no-stub | --no-model] [--stub-step-ms MS]
        [--random] [--playout-hold-ms MS] [--engine-nice N] [--no-align] [--no-steer]

Runs `microturn serve` (edge + engine + in-process bus, uvloop, the shipped checkpoint with its
trained vocoder, as `make run` serves it; `--random`: the tiny preset's random weights, which
speak through Griffin-Lim) as
a child process and N aiortc callers in this process, each streaming speech in real time
and receiving the model's audio and events. For each N it prints `name: value` lines:

- server_cpu_s_per_call_s_N{n}: CPU seconds (user + system, all threads, from /proc) the
  server process spent per second of call, model compute included;
- edge_added_ms_p50_N{n} / _p95_N{n}: server-added latency per micro-turn, from the
  `metrics.latency` events: (last input sample of the turn in -> first output sample of that
  turn handed to the output track) minus the model's step time for that turn's batch. What is
  left is the edge, the bus and the worker's scheduling (its 5 ms gather window included);
- turn_latency_ms_p50_N{n}, step_ms_p50_N{n}: the same turn latency with the model compute,
  and the compute alone, for context;
- playout_queued_ms_p50_N{n} / _p95_N{n}: the model audio queued ahead of each turn in its
  call's playout buffer when the turn arrived (`metrics.latency` `playout_ms`): it plays
  first, so the caller hears the turn this much after turn_latency; playout_steered_frames_N{n}:
  frames the calls' quiet steering added or skipped to keep it near its margin
  (media/output_track.py; `--no-steer` turns it off);
- step_ms_mean_N{n}: the mean of every step in the window from the server's own histogram
  (`microturn_step_seconds`), there even when no turn yields a latency event;
  realtime_ratio_N{n}: session-turns the engine stepped per call per 200 ms (1.0 = it keeps
  up with real time; below, turns are dropped and stepped as silence);
  batch_size_mean_N{n}: sessions per step; gather_ms_mean_N{n}: how long a ready batch waited
  for inputs due before its step would end (model/worker.py `_gather`);
  server_cpu_ms_per_session_turn_N{n}: the server's CPU per session-turn it stepped (edge
  included): the cost of a turn, comparable even when the engine is behind real time;
- playout_underruns_N{n}: times a call's output track ran dry while playing (the model's
  audio for the next turn was not there when its first frame was due), all calls, from the
  server's `microturn_playout_underruns_total` (the calls export it about once a second, so
  its window lags the measured one by up to a second); playout_resyncs_N{n}: times an output
  track was asked for a frame over 60 ms late (the event loop stalled) and skipped ahead;
- worker_behind_steps_N{n}: steps longer than one micro-turn; gap_steps_N{n}: turns the worker
  stepped with silence because their input was late or dropped; stale_inputs_N{n}: inputs it
  dropped because it was behind; input_gap_turns_N{n}: input turns the edge filled with silence
  because the caller's audio was missing (all server counters). A turn stepped as a gap has no
  latency event: when the engine is behind real time every turn may be one, and the latency
  rows read nan with turns_measured 0;
- rx_max_gap_ms_N{n}: the largest gap between audio packets (frames with `--load full`)
  arriving at any caller; rx_packet_rate_N{n}: packets received per call per 20 ms (1.0 = the
  server's output tracks held their pace; below, its event loop was too busy to send them);
  rx_lost_packets_N{n}: RTP sequence numbers that never arrived;
  rx_audio_share_N{n}: the share of call time whose packets carried sound rather than digital
  silence (the server's output track sends silence when it has no model audio to play; an
  echo stub echoes gap-stepped turns as silence too);
  rx_dropouts_N{n}: sound -> silence transitions, all calls: playout underruns as the callers
  hear them, but also a model turn quiet enough to round to zero (these three: `--load
  encoded` only, nan with `--load full`);
- loadgen_cpu_s_per_call_s_N{n}: CPU seconds this process (the callers) spent per second of
  call: the load generator's own cost, to compare with the server's.

Each line comes twice: with the model (`..._N{n}`) and with an echo stub in place of the
model's step (`..._stub_N{n}`: outputs are the inputs, computed in microseconds, or in
`--stub-step-ms`). The stub rows are the edge's own cost and latency, free of model compute and
of queueing behind a model step that is slower than real time on a small CPU; a stub step of
e.g. 600 ms shows what the rows read when the engine keeps up with a third of real time.

The callers share the machine with the server. With `--load encoded` (the default) they are
cheap: the speech is encoded once (`--codec`, default Opus) and every caller replays the
packets with fresh RTP sequence numbers and timestamps, and the model's audio is counted packet
by packet as it arrives instead of being decoded; what is left is aiortc's RTP, SRTP and ICE
in Python. `--load full` is a real aiortc caller (an encoder and a decoder per call), heavier
on a small machine than the server's edge work it is there to measure.

`--torch-threads N` starts the server with `microturn serve --torch-threads N` (default: the
serve default for this machine's cores, `infra/threads.py`); the line `torch_threads:` says
which ran.
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
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from infra.settings import DEFAULT_CHECKPOINT  # noqa: E402
from infra.threads import available_cores, torch_threads_for  # noqa: E402
from tests.e2e.aiortc_client import Caller, encode_packets, read_wav, speech_wav  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """user + system CPU of a process (all threads), with `children` also of its live children
    (the engine process `microturn serve` starts), from /proc/<pid>/stat."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # a process that exited meanwhile
            continue
        if stat.parent.name == str(pid) or (children and int(fields[1]) == pid):
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# server counters read before and after each measured window: row name -> Prometheus sample
COUNTERS = {
    "playout_underruns": "microturn_playout_underruns_total",
    "playout_resyncs": "microturn_playout_resyncs_total",
    "playout_steered_frames": "microturn_playout_steered_frames_total",
    "worker_behind_steps": "microturn_worker_behind_total",
    "gap_steps": "microturn_gap_steps_total",
    "stale_inputs": "microturn_stale_inputs_total",
    "input_gap_turns": "microturn_input_gap_turns_total",
}
STEPS = "microturn_step_seconds_count"
STEP_S = "microturn_step_seconds_sum"
SESSION_TURNS = "microturn_batch_size_sum"  # every session-turn stepped, gap steps included
GATHERS = "microturn_gather_seconds_count"
GATHER_S = "microturn_gather_seconds_sum"
TURNS_PER_S = 5.0  # 200 ms micro-turns
PACKETS_PER_S = 50.0  # the server's output track: one 20 ms frame per packet


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Every sample on the server's /metrics by name, summed over labels."""
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def serve_with_stub_model(step_ms: float, serve_args: list[str]) -> None:
    """Child process: `microturn serve` with the engine's step replaced by an echo (outputs are
    the inputs) that takes `step_ms` per batch (0: instant). `step_isolated` is what the worker
    calls (its keyword arguments, e.g. defer_audio, change nothing: the audio is already there)."""
    from infra.messages import MicroTurnInput, MicroTurnOutput
    from model.engine import Engine, StepResult
    from signaling import cli

    def echo_step(self: Engine, inputs: list[MicroTurnInput]) -> list[MicroTurnOutput]:
        if step_ms:
            time.sleep(step_ms / 1000)
        return [
            MicroTurnOutput(session_id=i.session_id, turn=i.turn, audio=i.audio, text="", caption="", step_ms=step_ms)
            for i in inputs
        ]

    def echo_step_isolated(self: Engine, inputs: list[MicroTurnInput], **_: object) -> StepResult:
        return StepResult(outputs=echo_step(self, inputs))

    Engine.step = echo_step  # type: ignore[method-assign]
    Engine.step_isolated = echo_step_isolated  # type: ignore[method-assign]
    sys.exit(cli.main(["serve", *serve_args]))


def start_server(
    max_sessions: int,
    tmp: Path,
    *,
    stub: float | None,
    serve_args: list[str],
    engine_thread: bool = False,
    checkpoint: Path | None = DEFAULT_CHECKPOINT,
) -> tuple[subprocess.Popen[bytes], str]:
    """`stub`: None = the model; else the echo stub's step time in ms. `checkpoint` None: random
    weights."""
    port = free_port()
    env = {
        **os.environ,
        "MICROTURN_PORT": str(port),
        "MICROTURN_CHECKPOINT": str(checkpoint or tmp / "none"),
        "MICROTURN_MAX_SESSIONS": str(max_sessions),
        "MICROTURN_MAX_CALLS_PER_CLIENT": str(max_sessions),
        # every caller is one anonymous client on 127.0.0.1: lift the per-client limits
        "MICROTURN_ANONYMOUS_SLOT_SHARE": "1.0",
        "MICROTURN_RATE_LIMIT_PER_MIN": "10000",
        "MICROTURN_LOG_LEVEL": "warning",
        # the echo stub replaces the engine's step in this process; the model runs in its own
        # process unless --engine-thread asks for the worker's thread
        "MICROTURN_ENGINE_PROCESS": "0" if stub is not None or engine_thread else "1",
    }
    cmd = (
        [sys.executable, "-m", "signaling.cli", "serve"]
        if stub is None
        else [sys.executable, __file__, "--stub-server", str(stub)]
    )
    cmd += serve_args
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


async def run_n(
    url: str, pid: int, n: int, seconds: float, audio: np.ndarray, *, codec: str, packets: list[bytes] | None
) -> dict[str, float]:
    """N calls at once; measure `seconds` of them once every call has its model output flowing."""
    cheap = packets is not None
    async with aiohttp.ClientSession() as http:
        callers = [
            Caller(url, http, audio, codec=codec, loop_audio=True, packets=packets, decode=not cheap) for _ in range(n)
        ]
        try:
            for c in callers:
                await c.mint_token()
                r = await c.connect()
                if r.status != 201:
                    raise SystemExit(f"call refused: {r.status} {await r.text()}")
            for c in callers:
                await c.wait_event(lambda e: e["type"] == "metrics.latency", timeout=20)
            await asyncio.sleep(1.0)  # settle: every call streaming, outputs flowing
            marks = [len(c.events) for c in callers]
            rx_marks = [len(c.received.arrivals) for c in callers]
            lost_marks = [c.received.lost for c in callers]
            counts0 = await scrape(http, url)
            cpu0, me0, t0 = cpu_seconds(pid, children=True), cpu_seconds(os.getpid()), time.monotonic()
            await asyncio.sleep(seconds)
            cpu1, me1, t1 = cpu_seconds(pid, children=True), cpu_seconds(os.getpid()), time.monotonic()
            rx_ends = [len(c.received.arrivals) for c in callers]
            counts1 = await scrape(http, url)
            lost = sum(c.received.lost - m for c, m in zip(callers, lost_marks, strict=True))
            silent = [
                np.array(c.received.silent[m:e], bool) for c, m, e in zip(callers, rx_marks, rx_ends, strict=True)
            ]
            rx_packets = sum(e - m for m, e in zip(rx_marks, rx_ends, strict=True))
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
    call_s = n * (t1 - t0)
    nan = float("nan")

    def delta(name: str) -> float:
        return counts1.get(name, 0.0) - counts0.get(name, 0.0)

    return {
        "server_cpu_s_per_call_s": (cpu1 - cpu0) / call_s,
        "loadgen_cpu_s_per_call_s": (me1 - me0) / call_s,
        "edge_added_ms_p50": pct(edge, 50),
        "edge_added_ms_p95": pct(edge, 95),
        "turn_latency_ms_p50": pct([e["server_ms"] for e in lat], 50),
        "step_ms_p50": pct([e["step_ms"] for e in lat], 50),
        "playout_queued_ms_p50": pct([e["playout_ms"] for e in lat], 50),
        "playout_queued_ms_p95": pct([e["playout_ms"] for e in lat], 95),
        "step_ms_mean": 1000 * delta(STEP_S) / delta(STEPS) if delta(STEPS) else float("nan"),
        "server_cpu_ms_per_session_turn": 1000 * (cpu1 - cpu0) / delta(SESSION_TURNS)
        if delta(SESSION_TURNS)
        else float("nan"),
        "realtime_ratio": delta(SESSION_TURNS) / (TURNS_PER_S * call_s),
        "batch_size_mean": delta(SESSION_TURNS) / delta(STEPS) if delta(STEPS) else float("nan"),
        "gather_ms_mean": 1000 * delta(GATHER_S) / delta(GATHERS) if delta(GATHERS) else float("nan"),
        **{k: delta(name) for k, name in COUNTERS.items()},
        "rx_max_gap_ms": max(gaps) if gaps else float("nan"),
        "rx_lost_packets": float(lost) if cheap else float("nan"),
        "rx_packet_rate": rx_packets / (PACKETS_PER_S * call_s),
        "rx_audio_share": sum(int((~x).sum()) for x in silent) / (PACKETS_PER_S * call_s) if cheap else nan,
        "rx_dropouts": float(sum(int((x[:-1] < x[1:]).sum()) for x in silent)) if cheap else nan,
        "turns_measured": float(len(lat)),
    }


INTS = {"turns_measured", "rx_lost_packets", "rx_dropouts", *COUNTERS}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured call time per N")
    ap.add_argument("--calls", default="1,4,8", help="comma-separated concurrent call counts")
    ap.add_argument("--no-stub", action="store_true", help="skip the echo-stub rows")
    ap.add_argument("--no-model", action="store_true", help="skip the model rows")
    ap.add_argument("--stub-step-ms", type=float, default=0.0, help="the echo stub's step time (default 0)")
    ap.add_argument("--torch-threads", type=int, help="`microturn serve --torch-threads N` (default: serve's own)")
    ap.add_argument(
        "--engine-thread", action="store_true", help="the model in serve's own process (MICROTURN_ENGINE_PROCESS=0)"
    )
    ap.add_argument("--load", choices=("encoded", "full"), default="encoded", help="cheap callers or real ones")
    ap.add_argument("--codec", choices=("opus", "pcmu"), default="opus", help="the callers' audio codec")
    ap.add_argument("--random", action="store_true", help="the tiny preset's random weights, not the checkpoint")
    ap.add_argument("--playout-hold-ms", type=int, help="MICROTURN_PLAYOUT_HOLD_MS of the server (default: serve's)")
    ap.add_argument("--engine-nice", type=int, help="MICROTURN_ENGINE_NICE of the server (default: serve's, -10)")
    ap.add_argument(
        "--no-align", action="store_true", help="turns at each call's own phase (MICROTURN_ALIGN_TURNS=false)"
    )
    ap.add_argument("--no-steer", action="store_true", help="no quiet steering (MICROTURN_PLAYOUT_STEER=false)")
    args = ap.parse_args()
    if args.no_steer:
        os.environ["MICROTURN_PLAYOUT_STEER"] = "false"
    if args.no_align:
        os.environ["MICROTURN_ALIGN_TURNS"] = "false"
    if args.playout_hold_ms is not None:
        os.environ["MICROTURN_PLAYOUT_HOLD_MS"] = str(args.playout_hold_ms)  # the server inherits it
    if args.engine_nice is not None:
        os.environ["MICROTURN_ENGINE_NICE"] = str(args.engine_nice)
    ns = [int(x) for x in args.calls.split(",")]
    serve_args = [] if args.torch_threads is None else ["--torch-threads", str(args.torch_threads)]
    threads = torch_threads_for(available_cores(), args.torch_threads)
    print(f"cpus: {os.cpu_count()}")
    print(f"torch_threads: {threads} ({'flag' if args.torch_threads else 'serve default'})")
    print(f"engine: {'thread of serve' if args.engine_thread else 'own process (serve default)'}")
    print(f"model: {'random:tiny' if args.random else DEFAULT_CHECKPOINT}")
    print(f"playout_hold_ms: {os.environ.get('MICROTURN_PLAYOUT_HOLD_MS', '0 (serve default)')}")
    print(f"engine_nice: {os.environ.get('MICROTURN_ENGINE_NICE', '-10 (serve default)')}")
    print(f"align_turns: {os.environ.get('MICROTURN_ALIGN_TURNS', 'true (serve default)')}")
    print(f"playout_steer: {os.environ.get('MICROTURN_PLAYOUT_STEER', 'true (serve default)')}")
    print(f"load: {args.load}")
    print(f"codec: {args.codec}")
    print(f"seconds_per_n: {args.seconds:g}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        audio = read_wav(speech_wav(tmp / "speech.wav", 6.0))
        packets = encode_packets(audio, args.codec) if args.load == "encoded" else None
        for stub in [x for x, skip in ((None, args.no_model), (args.stub_step_ms, args.no_stub)) if not skip]:
            proc, url = start_server(
                max(ns), tmp, stub=stub, serve_args=serve_args, engine_thread=args.engine_thread,
                checkpoint=None if args.random else DEFAULT_CHECKPOINT,
            )  # fmt: skip
            try:
                for n in ns:
                    res = await run_n(url, proc.pid, n, args.seconds, audio, codec=args.codec, packets=packets)
                    for k, v in res.items():
                        name = f"{k}{'' if stub is None else '_stub'}_N{n}"
                        ok = k in INTS and np.isfinite(v)
                        print(f"{name}: {int(v)}" if ok else f"{name}: {v:.3f}", flush=True)
                    await asyncio.sleep(1.0)  # let the server release the calls
            finally:
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--stub-server"]:
        serve_with_stub_model(float(sys.argv[2]), sys.argv[3:])
    asyncio.run(main())
