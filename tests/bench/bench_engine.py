"""Engine throughput on the tiny preset, all measured side by side in one run.

    .venv/bin/python tests/bench/bench_engine.py [--repeats 5] [--threads N] [--compile] [--device cuda]
        [--checkpoint DIR | --random] [--vocoder auto|griffin-lim]

Measures what `microturn serve` runs: the shipped checkpoint (checkpoints/tiny: its weights and
its trained vocoder) and the serve's torch thread budget for this machine's cores
(infra/threads.py: every core but one, the other left to the vocoder's thread, the event loop
and the codecs). `--random` is the tiny preset with random weights (no trained vocoder, so
Griffin-Lim), `--threads N` any other budget; `model:`, `vocoder:` and `threads:` say which ran.

Prints `name: value` lines:
- step_ms_B{1,4,16,32}: one batched micro-turn for B sessions, run as model/worker.py runs it:
  the vocoder on its own thread, synthesizing a step's audio while the next step computes;
- step_ms_B{16,32}_vocoder_inline, vocoder_overlap_speedup_B{16,32}: the vocoder inside the
  step instead (as before it had a thread), and the ratio;
- model_ms_B32, vocoder_ms_B32_{neural,griffin_lim}: a B=32 step's model work alone and its
  audio through each vocoder alone, alternated step by step (the neural row only when the
  checkpoint ships one): with one torch thread the two run side by side on two cores, and the
  slower one sets the step;
- max_sessions_within_100ms: the largest B whose step stays under 100 ms (half a micro-turn:
  the sessions one CPU worker serves in real time with margin);
- step_ms_B32_prefill_one_forward, prefill_groups_speedup_B32: the prefill as one forward padded
  to the longest chunk against one forward per length bucket (model/step.py `length_groups`),
  alternated step by step;
- step_ms_B32_featurize_per_session, featurize_batched_speedup_B32: each session's audio
  featurized on its own against the batch's at once (model/session.py `prepare_batch`),
  alternated step by step;
- audible_share_B32, step_ms_B32_flow_every_row, flow_audible_rows_speedup_B32: the share of
  output positions that played sound, and the step with the flow head sampling every row
  against the audible ones alone (model/step.py `sample_audible`), alternated step by step;
- torch_calls_per_step_B32: torch functions and tensor methods one B=32 step calls from Python
  (its dispatch count, the same on a busy machine or a quiet one);
- batched_speedup_B{16,32}: B sessions stepped one at a time (the one-conversation-at-a-time
  server, its vocoder pipelined the same way) over the same B stepped as one batch;
- decode_step: which steps the engine runs (eager, or prefill and decode compiled with --compile);
- kv_bytes_per_session_{tiny,small,tml-small}: the KV pool memory one session slot holds (fp32
  for tiny, bf16 for the GPU presets);
- tml_small_layer_ms_B32: one decode position through one tml-small-shaped layer (attention over
  2048 cached entries, MoE with 32 of the 256 experts resident so it fits in RAM, bf16) for 32
  sessions: a scale check of this CPU, not a target;
- step_ms_B32_full_window, full_window_cost_B32: 32 sessions whose attention window is full
  (a call older than ~26 s; the rows above step sessions a few turns old), and over step_ms_B32;
- step_ms_B32_full_window_decode_sdpa, decode_gemm_speedup_B32_full_window: the same full-window
  sessions with decode attention through SDPA instead of two GEMMs (model/attention.py
  `attend_gemm`), alternated step by step (model work alone);
- deterministic_cost_B16: batch-invariant mode step time over normal mode;
- append_speedup_full_window: re-prefilling the whole window every micro-turn (one cache-less
  forward over `window` positions, then the turn) over streaming append, with the window full.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import model.attention as attention_mod
import model.engine as engine_mod
import model.step as step_mod
from infra.messages import MicroTurnInput
from infra.settings import DEFAULT_CHECKPOINT
from infra.threads import apply_torch_threads
from model.attention import CacheContext, KVCache, rope_angles
from model.checkpoint import load_or_random
from model.config import ModelConfig, get_preset
from model.engine import Engine
from model.interaction import Block
from model.neural_vocoder import ENV as VOCODER_ENV
from model.neural_vocoder import StreamingNeuralVocoder, Vocoder, attached, new_vocoder, vocode_batch
from model.positions import Positions, concat
from model.session import AudioJob, InteractionSession, PendingAudio
from model.vocoder import StreamingGriffinLim

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


def time_steps(engine: Engine, B: int, repeats: int, one_at_a_time: bool = False, pipelined: bool = True) -> float:
    """Median ms per micro-turn for B fresh sessions. `pipelined`: as model/worker.py runs it,
    the vocoder on a thread of its own taking each step's audio while the next step computes (a
    turn then costs the slower of the two); otherwise the vocoder runs inside the step."""
    sids = [f"s{i}" for i in range(B)]
    for sid in sids:
        engine.open(sid)
    try:
        return time_open_sessions(engine, sids, repeats, one_at_a_time=one_at_a_time, pipelined=pipelined)
    finally:
        for sid in sids:
            engine.close(sid)


def time_open_sessions(
    engine: Engine, sids: list[str], repeats: int, *, first_turn: int = 0, one_at_a_time: bool = False,
    pipelined: bool = True,
) -> float:  # fmt: skip
    """`time_steps` for sessions already open (`first_turn`: their next turn number)."""
    jobs: queue.Queue[list[AudioJob] | None] = queue.Queue(maxsize=1)  # the worker's one-step queue

    def vocoder() -> None:
        while (batch := jobs.get()) is not None:
            for job in batch:
                job.run()

    thread = threading.Thread(target=vocoder, name="vocoder")
    thread.start()
    times = []
    for k in range(first_turn, first_turn + repeats + 2):
        batch = inputs(sids, k)
        t0 = time.perf_counter()
        for group in [[inp] for inp in batch] if one_at_a_time else [batch]:
            jobs.put(engine.step_isolated(group, defer_audio=pipelined).audio)  # waits while the vocoder is behind
        if k >= first_turn + 2:
            times.append(time.perf_counter() - t0)
    jobs.put(None)
    thread.join()
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: the serve's budget, infra/threads.py)"
    )
    ap.add_argument("--compile", action="store_true", help="the engine's compiled decode step")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="the checkpoint to serve")
    ap.add_argument("--random", action="store_true", help="the tiny preset with random weights instead")
    ap.add_argument(
        "--vocoder", choices=("auto", "griffin-lim"), default="auto", help="griffin-lim: not the checkpoint's"
    )
    args = ap.parse_args()
    threads, cores, source = apply_torch_threads(args.threads)
    if args.vocoder == "griffin-lim":
        os.environ[VOCODER_ENV] = "griffin-lim"
    ck = load_or_random(None if args.random else args.checkpoint, "tiny", device=args.device)
    cfg, tok, model = ck.config, ck.tokenizer, ck.model.eval()
    engine = Engine(model, tok, max_sessions=64, compile=args.compile)
    engine.warmup()
    print(f"preset: {cfg.name}")
    print(f"model: {ck.source}")
    print(f"vocoder: {type(new_vocoder(cfg)).__name__}")
    print(f"device: {args.device}")
    print(f"threads: {threads} ({source}, {cores} cores)")
    print(f"decode_step: {engine.decode_step}")
    for name, dtype in (("tiny", torch.float32), ("small", torch.bfloat16), ("tml-small", torch.bfloat16)):
        print(f"kv_bytes_per_session_{name}: {kv_bytes_per_session(get_preset(name), dtype)}")

    step = {}
    for B in (1, 4, 16, 32):
        step[B] = time_steps(engine, B, args.repeats)
        print(f"step_ms_B{B}: {step[B]:.1f}")
    for B in (16, 32):
        inline = time_steps(engine, B, args.repeats, pipelined=False)
        print(f"step_ms_B{B}_vocoder_inline: {inline:.1f}")
        print(f"vocoder_overlap_speedup_B{B}: {inline / step[B]:.2f}")
    for name, ms in model_and_vocoders_ms(engine, 32, args.repeats * 2).items():
        print(f"{name}: {ms:.1f}")

    best = 0
    for B in (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64):
        ms = step[B] if B in step else time_steps(engine, B, args.repeats)
        if ms > 100:
            break
        best = B
    print(f"max_sessions_within_100ms: {best}")
    print(f"torch_calls_per_step_B32: {torch_calls_per_step(engine, 32)}")
    grouped, one = prefill_groups_ab(engine, 32, args.repeats * 2)
    print(f"step_ms_B32_prefill_one_forward: {one:.1f}")
    print(f"prefill_groups_speedup_B32: {one / grouped:.2f}")
    fast, dense, share = audible_ab(engine, 32, args.repeats * 2)
    print(f"audible_share_B32: {share:.2f}")
    print(f"step_ms_B32_flow_every_row: {dense:.1f}")
    print(f"flow_audible_rows_speedup_B32: {dense / fast:.2f}")
    batched, alone = featurize_ab(engine, 32, args.repeats * 2)
    print(f"step_ms_B32_featurize_per_session: {alone:.1f}")
    print(f"featurize_batched_speedup_B32: {alone / batched:.2f}")

    for B in (16, 32):
        serial = time_steps(engine, B, max(1, args.repeats // 2), one_at_a_time=True)
        print(f"step_ms_B{B}_one_at_a_time: {serial:.1f}")
        print(f"batched_speedup_B{B}: {serial / step[B]:.2f}")

    # the rows above step young sessions (a few turns old: short attention); a call fills its
    # window (1024 positions, ~26 s) and then every step attends over all of it
    sids = [f"old{i}" for i in range(32)]
    for sid in sids:
        engine.open(sid)
    k = 0
    while engine.session(sids[0]).next_pos < cfg.window + cfg.n_sinks + 8:
        engine.step_isolated(inputs(sids, k))
        k += 1
    full = time_open_sessions(engine, sids, args.repeats, first_turn=k)
    k += args.repeats + 2
    gemm, sdpa = decode_attention_ab(engine, sids, args.repeats * 2, first_turn=k)
    for sid in sids:
        engine.close(sid)
    print(f"step_ms_B32_full_window: {full:.1f}")
    print(f"full_window_cost_B32: {full / step[32]:.2f}")
    print(f"step_ms_B32_full_window_decode_sdpa: {sdpa:.1f}")
    print(f"decode_gemm_speedup_B32_full_window: {sdpa / gemm:.2f}")

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
    print(f"tml_small_layer_ms_B32: {tml_small_layer_ms(args.device, args.repeats):.1f}")


def prefill_groups_ab(engine: Engine, B: int, repeats: int) -> tuple[float, float]:
    """Median step ms of B sessions with the prefill in length groups and as one padded forward."""
    real = step_mod.length_groups

    def one(chunks: list[Positions], cfg: ModelConfig) -> list[list[int]]:
        return [list(range(len(chunks)))]

    return alternated(engine, B, repeats, lambda on: setattr(step_mod, "length_groups", real if on else one))


def featurize_ab(engine: Engine, B: int, repeats: int) -> tuple[float, float]:
    """Median step ms of B sessions with their audio featurized as one batch and one session at a
    time (model/session.py `prepare_batch`)."""
    real = engine_mod.prepare_batch

    def per_session(states: Any, inputs: Any, tokenizer: Any, *, batched: bool) -> Any:
        return real(states, inputs, tokenizer, batched=False)

    return alternated(engine, B, repeats, lambda on: setattr(engine_mod, "prepare_batch", real if on else per_session))


def audible_ab(engine: Engine, B: int, repeats: int) -> tuple[float, float, float]:
    """Median step ms of B sessions with the flow head sampling the audible rows alone and every
    row (model/step.py `sample_audible`), alternated step by step, and the share of output
    positions that were audible (what the first saves on: it grows with the quiet share)."""
    real = step_mod.sample_audible
    seen = [0, 0]

    def counting(model: Any, cond: torch.Tensor, noise: torch.Tensor, audible: torch.Tensor) -> torch.Tensor:
        seen[0] += int(audible.sum())
        seen[1] += len(audible)
        return real(model, cond, noise, audible)

    fast, dense = alternated(
        engine,
        B,
        repeats,
        lambda on: setattr(step_mod, "sample_audible", counting if on else step_mod.sample_every_row),
    )
    return fast, dense, seen[0] / max(seen[1], 1)


def alternated(
    engine: Engine, B: int, repeats: int, use: Callable[[bool], None], *, open_sids: list[str] | None = None,
    first_turn: int = 0,
) -> tuple[float, float]:  # fmt: skip
    """Median step ms of B sessions with a variant on (`use(True)`) and off, the two alternated
    step by step in this process (so the machine's drift hits both alike); left on.
    `open_sids`: sessions already open (their next turn `first_turn`), else B fresh ones."""
    sids = open_sids or [f"g{i}" for i in range(B)]
    for sid in [] if open_sids else sids:
        engine.open(sid)
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for k in range(2 * (repeats + 1)):
            on = k % 2 == 0
            use(on)
            t0 = time.perf_counter()
            engine.step_isolated(inputs(sids, first_turn + k), defer_audio=True)
            if k >= 2:
                times[on].append(time.perf_counter() - t0)
    finally:
        use(True)
        for sid in [] if open_sids else sids:
            engine.close(sid)
    return statistics.median(times[True]) * 1000, statistics.median(times[False]) * 1000


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def decode_attention_ab(engine: Engine, sids: list[str], repeats: int, first_turn: int) -> tuple[float, float]:
    """Median ms of a step of the open sessions `sids` with decode attention as two GEMMs
    (`attend_gemm`) and through SDPA, alternated step by step."""
    real = attention_mod.attend_gemm
    return alternated(
        engine,
        len(sids),
        repeats,
        lambda on: setattr(attention_mod, "attend_gemm", real if on else _sdpa),
        open_sids=sids,
        first_turn=first_turn,
    )


def model_and_vocoders_ms(engine: Engine, B: int, repeats: int) -> dict[str, float]:
    """Median ms of a B-session step's model work alone (`defer_audio`), and of its audio through
    each vocoder the sessions can have, one after the other on this thread, each step alternating
    which vocoder goes first."""
    sids = [f"v{i}" for i in range(B)]
    for sid in sids:
        engine.open(sid)
    cfg = engine.model.cfg
    kinds: dict[str, list[Vocoder]] = {"griffin_lim": [StreamingGriffinLim(cfg) for _ in sids]}
    if (net := attached(cfg)) is not None:
        kinds["neural"] = [StreamingNeuralVocoder(cfg, net) for _ in sids]
    times: dict[str, list[float]] = {f"model_ms_B{B}": [], **{f"vocoder_ms_B{B}_{k}": [] for k in kinds}}
    try:
        for k in range(repeats + 1):
            t0 = time.perf_counter()
            jobs = engine.step_isolated(inputs(sids, k), defer_audio=True).audio
            model_s = time.perf_counter() - t0
            for kind in list(kinds) if k % 2 else list(reversed(kinds)):
                t0 = time.perf_counter()
                for job in jobs:
                    assert isinstance(job, PendingAudio)  # an in-process engine's
                    vocode_batch(kinds[kind], job.mel, exact=job.exact)  # as the engine's mode runs it
                if k:
                    times[f"vocoder_ms_B{B}_{kind}"].append(time.perf_counter() - t0)
            if k:
                times[f"model_ms_B{B}"].append(model_s)
    finally:
        for sid in sids:
            engine.close(sid)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def torch_calls_per_step(engine: Engine, B: int) -> int:
    """Torch functions and tensor methods called from Python in one step of B sessions (its
    dispatch count: on a CPU at small batch each costs more than its arithmetic; a figure that
    does not depend on how busy the machine is)."""

    class Count(TorchFunctionMode):
        calls = 0

        def __torch_function__(
            self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
        ) -> Any:
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    sids = [f"c{i}" for i in range(B)]
    for sid in sids:
        engine.open(sid)
    try:
        for k in range(3):
            engine.step_isolated(inputs(sids, k))
        with Count():
            engine.step_isolated(inputs(sids, 3), defer_audio=True)
    finally:
        for sid in sids:
            engine.close(sid)
    return Count.calls


def kv_bytes_per_session(cfg: ModelConfig, dtype: torch.dtype) -> int:
    """One slot of the KV pool: K and V of every layer, plus the entry positions."""
    with torch.device("meta"):
        return KVCache.allocate(cfg, 1, device="meta", dtype=dtype).bytes_per_slot()


@torch.inference_mode()
def tml_small_layer_ms(device: str, repeats: int, B: int = 32, kv_len: int = 2048, experts: int = 32) -> float:
    full = get_preset("tml-small")
    cfg = dataclasses.replace(full, n_layers=1, n_experts=experts, window=kv_len, n_sinks=0)
    dtype = torch.bfloat16
    block = Block(cfg, 0).to(device, dtype).eval()
    cache = KVCache.allocate(cfg, B, device=device, dtype=dtype)
    cache.pos[:, :kv_len] = torch.arange(kv_len)  # a full window of history
    pos = torch.full((B, 1), kv_len, device=device)
    valid = torch.ones(B, 1, dtype=torch.bool, device=device)
    slots = torch.arange(B, device=device)
    x = torch.randn(B, 1, cfg.d_model, device=device, dtype=dtype)
    rope = rope_angles(pos, cfg.head_dim, cfg.rope_theta)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        ctx = CacheContext.begin(cache, slots, pos, valid, rows=slice(0, B))
        block(x, rope, pos, valid, ctx)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) * 1000


if __name__ == "__main__":
    main()
