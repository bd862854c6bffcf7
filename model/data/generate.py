"""Write synthetic dialogue clips in the moshi-finetune layout.

    python -m model.data.generate --out DIR --n 100 --split train --seed 0

For each clip ``DIR/<split>/<clip_id>``:

- ``.wav``: stereo, 16 kHz, PCM16; channel 0 (left) = the assistant / model, channel 1
  (right) = the user — moshi-finetune's convention (left = Moshi).
- ``.json``: ``{"alignments": [[word, [start, end], "SPEAKER_MAIN" | "SPEAKER_USER"], ...]}``,
  seconds, sorted by start (moshi-finetune's interleaver binary-searches it).
- ``.events.json``: ``{"scenario", "events": [{"type", "time", "text", ...}], "voices":
  {"user", "assistant"}, ...}``; event types are listed in ``model.data.scenarios``.
- ``.frames.npz`` (visual scenarios only): ``frames``, uint8 (n_turns, 120, 160, 3), frame k
  is what the camera shows during micro-turn k, [0.2k, 0.2(k+1)) s (``model.data.visual``).

plus ``DIR/<split>/manifest.jsonl``: one ``{"path", "duration", "scenario", "id"}`` line per
clip, ``path`` absolute (moshi-finetune opens ``splitext(path) + ".json"`` from the cwd).

Clips are deterministic for (seed, split, index): clip i does not depend on how many clips are
generated, on ``workers``, or on anything the calling process did before. espeak-ng carries
state between utterances within a process (see ``model.data.espeak``), so clips are built by
a clip server: a fresh interpreter (``python -m model.data.generate --serve``) that imports
the generator but never synthesizes, and forks one child per clip. Unlike a multiprocessing
pool, it never re-imports the caller's ``__main__`` in the children.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from model.data import scenarios as sc

_SPLIT_CODES = {"train": 0, "valid": 1, "heldout": 2}  # fixed: part of every clip's seed
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding model/


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def clip_scenario(seed: int, index: int, names: Sequence[str]) -> str:
    """Scenarios rotate, so any run of len(names) consecutive clips covers them all."""
    return names[(index + seed) % len(names)]


def make_clip(task: tuple[str, str, int, int, str]) -> dict[str, object]:
    """Build and write one clip; returns its manifest entry (plus build seconds)."""
    split_dir, split, seed, index, scenario = task
    t0 = time.perf_counter()
    clip = sc.build_clip(split, scenario, clip_rng(seed, split, index))
    clip_id = f"{index:06d}"
    base = Path(split_dir) / clip_id
    sf.write(base.with_suffix(".wav"), clip.audio, sc.SAMPLE_RATE, subtype="PCM_16")
    _write_json(base.with_suffix(".json"), {"alignments": clip.alignments})
    meta = {
        "scenario": clip.scenario,
        "events": clip.events,
        "voices": {role: clip.voices[role].to_dict() for role in (sc.USER, sc.ASSISTANT)},
        "id": clip_id,
        "split": split,
        "seed": seed,
        "index": index,
        "duration": round(clip.duration, 6),
        "sample_rate": sc.SAMPLE_RATE,
        "channels": {str(ch): role for role, ch in sc.CHANNELS.items()},
        "speakers": dict(sc.SPEAKERS),
    }
    if clip.frames is not None:  # camera frames, one per micro-turn: (n_turns, 120, 160, 3) uint8
        np.savez_compressed(f"{base}.frames.npz", frames=clip.frames)
        meta["frames"] = f"{clip_id}.frames.npz"
    _write_json(Path(f"{base}.events.json"), meta)
    return {
        "path": str(base.with_suffix(".wav").resolve()),
        "duration": round(clip.duration, 6),
        "scenario": clip.scenario,
        "id": clip_id,
        "build_s": time.perf_counter() - t0,
    }


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False) + "\n", encoding="utf-8")


def generate(
    out_dir: str | Path,
    n_clips: int,
    split: str = "train",
    seed: int = 0,
    *,
    scenarios: Sequence[str] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> list[dict[str, object]]:
    """Write ``n_clips`` clips of ``split`` under ``out_dir/split``; return the manifest rows.

    ``scenarios`` restricts (and orders) the rotation of scenario builders (default: all of
    ``model.data.scenarios.SCENARIOS``); ``workers`` processes build clips in parallel.
    """
    if isinstance(n_clips, bool) or not isinstance(n_clips, int | np.integer) or n_clips < 1:
        raise ValueError(f"n_clips must be an integer >= 1, got {n_clips!r}")
    if split not in sc.SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of: {', '.join(sc.SPLITS)}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    names = list(sc.SCENARIOS) if scenarios is None else list(scenarios)
    unknown = [s for s in names if s not in sc.SCENARIOS]
    if unknown or not names:
        raise ValueError(f"unknown scenarios {unknown}; expected some of: {', '.join(sc.SCENARIOS)}")

    split_dir = Path(out_dir) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    spec = {"split_dir": str(split_dir), "split": split, "seed": int(seed), "n": int(n_clips), "names": names}
    spec["workers"] = int(workers)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "model.data.generate", "--serve", json.dumps(spec)]

    rows: list[dict[str, object]] = []
    audio_s = 0.0
    t0 = time.perf_counter()
    manifest = split_dir / "manifest.jsonl"
    with (
        subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True) as server,
        manifest.open("w") as mf,
    ):
        try:
            assert server.stdout is not None
            for line in server.stdout:
                row = json.loads(line)
                if "error" in row:
                    raise RuntimeError(f"building clip {row.get('index')} failed:\n{row['error']}")
                build_s = row.pop("build_s")
                rows.append(row)
                mf.write(json.dumps(row) + "\n")
                audio_s += float(row["duration"])
                if progress:
                    done, wall = len(rows), time.perf_counter() - t0
                    print(
                        f"\r{split}: {done}/{n_clips} clips, {audio_s:.1f} s audio, {wall:.1f} s wall, "
                        f"last clip built in {build_s:.2f} s",
                        end="",
                        file=sys.stderr,
                        flush=True,
                    )
        except BaseException:
            server.kill()
            raise
    if progress:
        print(file=sys.stderr)
    if server.returncode != 0 or len(rows) != n_clips:
        raise RuntimeError(f"clip server exited with code {server.returncode} after {len(rows)}/{n_clips} clips")
    return rows


def _serve(spec_json: str) -> None:
    """Clip server: build clips ``0..n-1`` in forked children, at most ``workers`` at a time,
    and print one JSON result line per clip, in order. This process never synthesizes, so
    every child starts from the same pristine espeak-ng state."""
    spec = json.loads(spec_json)
    workers = max(1, int(spec["workers"]))
    running: list[tuple[int, int]] = []  # (pid, read end of its result pipe), oldest first
    failed = False

    def collect() -> None:
        nonlocal failed
        pid, fd = running.pop(0)
        with os.fdopen(fd, "r") as f:
            result = f.read()
        _, status = os.waitpid(pid, 0)
        if not result:
            result = json.dumps({"error": f"clip process exited with status {status} and no result"})
        failed = failed or '"error"' in result
        sys.stdout.write(result + "\n")
        sys.stdout.flush()

    for index in range(int(spec["n"])):
        if failed:
            break
        if len(running) >= workers:
            collect()
        task = (
            spec["split_dir"],
            spec["split"],
            int(spec["seed"]),
            index,
            clip_scenario(spec["seed"], index, spec["names"]),
        )
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: build one clip, report, exit without running any cleanup
            os.close(r)
            code = 0
            try:
                out = json.dumps(make_clip(task))
            except BaseException:
                out, code = json.dumps({"index": index, "error": traceback.format_exc()}), 1
            with os.fdopen(w, "w") as f:
                f.write(out)
            os._exit(code)
        os.close(w)
        running.append((pid, r))
    while running:
        collect()
    sys.exit(1 if failed else 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model.data.generate",
        description="Write synthetic espeak-ng dialogues in the moshi-finetune layout.",
    )
    parser.add_argument("--out", required=True, help="output directory (clips go to OUT/SPLIT/)")
    parser.add_argument("--n", type=int, default=100, help="number of clips (default 100)")
    parser.add_argument("--split", default="train", help=f"one of {', '.join(sc.SPLITS)} (default train)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--scenarios", default=None, help=f"comma-separated subset of: {', '.join(sc.SCENARIOS)}")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--serve", metavar="SPEC", help=argparse.SUPPRESS)  # internal: the clip server
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"] and len(argv) == 2:
        _serve(argv[1])
        return 0
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()] if args.scenarios else None
    try:
        generate(
            args.out, args.n, args.split, args.seed, scenarios=names, workers=args.workers, progress=not args.quiet
        )
    except ValueError as e:
        parser.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
