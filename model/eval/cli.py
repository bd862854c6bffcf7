"""`microturn eval`: run the interaction model (and the harness baseline) over an FD-bench root
and write the report.

    microturn eval --root DIR [--checkpoint DIR | --preset tiny] [--tasks T ...] [--out REPORT_DIR]
                   [--baseline/--no-baseline] [--seed N] [--silence-ms 600] [--barge-in/--no-barge-in]
                   [--vad-threshold DBFS] [--vad-adaptive MARGIN_DB] [--score-only]

Outputs land beside each input (output.wav/.json for the model, output_baseline.* for the
baseline); the report goes to --out (default ROOT/eval_report). Clips exported from generated
dialogues (model/eval/dialogues.py) carry output_reference.*, scored as the `reference` column.
--score-only scores outputs already on disk (e.g. written by a live runner or another model's
inference script).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from model.eval.layout import BASELINE_STEM, MODEL_STEM, REFERENCE_STEM, LayoutError, discover

REFERENCE_NAME = "reference"


def _have(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="Full-Duplex-Bench v1 metrics for the model and a harness baseline")
    p.add_argument("--root", required=True, type=Path, help="FD-bench layout: ROOT/<task>/<clip_id>/input.wav")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="checkpoint directory")
    src.add_argument("--preset", default="tiny", help="random weights of this preset when no checkpoint (default tiny)")
    src.add_argument("--live", metavar="URL", help="call a running `microturn serve` at URL over WebRTC, in real time")
    p.add_argument("--api-key", help="with --live: Bearer API key (default: mint a page token)")
    p.add_argument("--tasks", nargs="+", help="task directories to run (default: all under ROOT)")
    p.add_argument("--out", type=Path, help="report directory (default ROOT/eval_report)")
    p.add_argument(
        "--baseline", action=argparse.BooleanOptionalAction, default=True, help="also run the harness baseline"
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the model session")
    p.add_argument("--silence-ms", type=float, default=600.0, help="baseline endpoint silence (500-700 typical)")
    p.add_argument(
        "--barge-in", action=argparse.BooleanOptionalAction, default=True, help="baseline stops when talked over"
    )
    p.add_argument("--vad-threshold", type=float, default=-40.0, help="energy VAD threshold, dBFS (default -40)")
    p.add_argument(
        "--vad-adaptive",
        type=float,
        metavar="MARGIN_DB",
        help="baseline endpointing on noisy input: VAD threshold = input noise floor + MARGIN_DB (e.g. 10); "
        "output scoring always uses the fixed threshold (a system that talks throughout has no noise floor)",
    )
    p.add_argument("--score-only", action="store_true", help="score existing outputs; run nothing")
    p.add_argument(
        "--smart-turn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the Silero VAD + Smart Turn v3.2 harness (pipecat; default: when the eval extra is installed)",
    )
    p.add_argument(
        "--fdbench-scoring",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="score with ASR words (pocketsphinx) and Silero VAD segments of the output audio, as FD-bench does, "
        "plus the text-stream + energy-VAD cross-check (default: when the eval extra is installed)",
    )
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError, load_or_random
    from model.config import ConfigError
    from model.eval.baselines import (
        SMART_TURN_STEM,
        HarnessBaseline,
        HarnessConfig,
        SmartTurnBaseline,
        with_flite_voice,
    )
    from model.eval.report import write_report
    from model.eval.runner import ClipRun, run_offline, run_responder
    from model.eval.scoring import SystemScores, score_system
    from model.eval.vad import VadConfig

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    try:
        clips = discover(args.root, args.tasks)
    except LayoutError as e:
        return fail(str(e))
    if args.checkpoint is not None and not args.checkpoint.exists():
        return fail(f"{args.checkpoint}: no such checkpoint directory")
    vad = VadConfig(threshold_dbfs=args.vad_threshold)
    try:
        input_vad = dataclasses.replace(vad, adaptive_margin_db=args.vad_adaptive)
        harness = HarnessConfig(silence_ms=args.silence_ms, barge_in=args.barge_in, vad=input_vad)
    except ValueError as e:
        return fail(str(e))
    strict = (
        _have("pocketsphinx", "silero_vad", "onnxruntime") if args.fdbench_scoring is None else args.fdbench_scoring
    )
    smart_turn = _have("pipecat", "onnxruntime") if args.smart_turn is None else args.smart_turn
    smart_turn = smart_turn and args.baseline
    if strict and args.baseline:
        harness = with_flite_voice(harness)  # a spoken reply, so ASR scores the harness like the model
    n_tasks = len({c.task for c in clips})
    print(f"eval: {len(clips)} clips in {n_tasks} tasks under {args.root}", file=sys.stderr)

    runs: dict[str, list[ClipRun]] = {}
    meta: dict[str, object] = {"root": str(args.root), "tasks": ", ".join(sorted({c.task for c in clips}))}
    model_name, baseline_name, smart_name = "interaction model", "harness baseline", "smart turn harness"
    try:
        if not args.score_only and args.live:
            from model.eval.live import LiveResponder

            meta["model"] = f"live over WebRTC: {args.live}"
            if any((c.path / "frames").is_dir() or (c.path / "input.mp4").is_file() for c in clips):
                meta["video"] = (
                    "clip frames sent as a VP8 camera at 5 fps (one per micro-turn); the server keeps "
                    "MICROTURN_VIDEO_FPS of them per second (default 5: every micro-turn carries its frame)"
                )
            live = LiveResponder(args.live, api_key=args.api_key, vad=vad, name=model_name)
            try:
                runs[model_name] = run_responder(live, args.root, args.tasks)
            except (RuntimeError, OSError) as e:  # LiveError, connection refused, ...
                return fail(f"live eval against {args.live}: {e}")
            if args.baseline:
                runs[baseline_name] = run_responder(HarnessBaseline(harness, baseline_name), args.root, args.tasks)
            if smart_turn:
                runs[smart_name] = run_responder(SmartTurnBaseline(harness, smart_name), args.root, args.tasks)
        elif not args.score_only:
            try:
                ck = load_or_random(args.checkpoint, args.preset, seed=args.seed)
            except (CheckpointError, ConfigError) as e:
                return fail(str(e))
            meta["model"] = ck.source + ("" if ck.trained else " (RANDOM WEIGHTS: numbers are meaningless)")
            meta["gate"] = (
                "argmax (no calibrated gate)"
                if ck.config.gate.greedy
                else f"start {ck.config.gate.start:g}, keep {ck.config.gate.keep_threshold:g}, "
                f"temperature {ck.config.gate.temperature:g}"
            )
            runs[model_name] = run_offline(ck, args.root, args.tasks, seed=args.seed, vad=vad)
            if args.baseline:
                runs[baseline_name] = run_responder(HarnessBaseline(harness, baseline_name), args.root, args.tasks)
            if smart_turn:
                runs[smart_name] = run_responder(SmartTurnBaseline(harness, smart_name), args.root, args.tasks)
        else:
            meta["model"] = "scored from existing output.wav/output.json"
        meta["seed"] = args.seed
        meta["vad"] = (
            f"energy, {vad.frame_ms:g} ms frames, {vad.threshold_dbfs:g} dBFS, "
            f"hangover {vad.hangover_ms:g} ms, min segment {vad.min_segment_ms:g} ms"
        )
        if args.baseline:
            meta["harness baseline"] = (
                f"endpoint after {harness.silence_ms:g} ms silence, {harness.reply_s:g} s reply, "
                f"barge-in {'on (' + format(harness.barge_in_ms, 'g') + ' ms)' if harness.barge_in else 'off'}"
                + ("" if args.vad_adaptive is None else f", input VAD at noise floor + {args.vad_adaptive:g} dB")
            )
        if smart_turn:
            meta["smart turn harness"] = (
                "pipecat SileroVADAnalyzer (defaults) + LocalSmartTurnAnalyzerV3 (smart-turn-v3.2-cpu.onnx), "
                f"{harness.reply_s:g} s reply, barge-in {'on' if harness.barge_in else 'off'}"
            )
        if args.baseline:
            meta["harness reply voice"] = harness.voice
        stems = [(MODEL_STEM, model_name)]
        if args.baseline:
            stems.append((BASELINE_STEM, baseline_name))
        if smart_turn:
            stems.append((SMART_TURN_STEM, smart_name))
        if all(c.output_wav(REFERENCE_STEM).is_file() for c in clips):
            stems.append((REFERENCE_STEM, REFERENCE_NAME))
            meta[REFERENCE_NAME] = "the generated dialogue's own assistant, exported beside each input (ceiling)"
        systems: list[SystemScores] = []
        if strict:
            meta["scoring"] = (
                "FD-bench style: words from pocketsphinx ASR of the output audio, segments from Silero VAD; "
                "columns marked (stream) are the cross-check: words from the system's own text, energy VAD"
            )
            for stem, name in stems:
                systems.append(score_system(args.root, stem, name, args.tasks, vad, asr=True, silero=True))
        for stem, name in stems:
            systems.append(score_system(args.root, stem, name + (" (stream)" if strict else ""), args.tasks, vad))
    except LayoutError as e:
        return fail(str(e))
    runs.update({n + " (stream)": r for n, r in list(runs.items())} if strict else {})
    paths = write_report(args.out or Path(args.root) / "eval_report", systems, meta, runs)
    print(f"report: {paths.markdown} ({paths.json.name}, {paths.plot.name})", file=sys.stderr)
    return 0
