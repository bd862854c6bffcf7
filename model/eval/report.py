"""The evaluation report: `report.json`, `report.md` and `latency.png` in one directory.

One column per system (interaction model, harness baseline, ...), one row per metric, and the
FD-bench v1 published numbers beside them (../shared/fdbench.md) so a reader can place ours.
The markdown states where the words come from (the model's own text stream, no ASR) because
that is the largest difference from FD-bench's pipeline.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model.eval.runner import ClipRun
from model.eval.scoring import SystemScores

# FD-bench v1 published numbers (fdbench.md). Pause TOR is (synthetic, candor).
PUBLISHED: dict[str, dict[str, Any]] = {
    "PersonaPlex": {"pause_tor": (0.584, 0.662), "turn_tor": 0.992, "turn_lat": 0.070, "int_tor": 1.0,
                    "int_lat": 0.400, "bc_tor": 0.327, "bc_jsd": 0.649},
    "Moshi": {"pause_tor": (0.985, 0.980), "turn_tor": 0.941, "turn_lat": 0.265, "int_tor": 1.0, "int_lat": 0.257,
              "bc_tor": 1.0, "bc_jsd": 0.957},
    "Freeze-Omni": {"pause_tor": (0.642, 0.481), "turn_tor": 0.336, "turn_lat": 0.953, "int_tor": 0.867,
                    "int_lat": 1.409, "bc_tor": 0.636, "bc_jsd": 0.997},
    "GPT-Realtime": {"pause_tor": (0.010, 0.120), "turn_tor": 1.0, "turn_lat": 1.470, "int_tor": 0.970,
                     "int_lat": 1.500, "bc_tor": 0.0, "bc_jsd": 0.980},
}  # fmt: skip
TML_TURN_LATENCY_S = 0.40  # Thinking Machines' reported turn-taking latency

_PUBLISHED_KEY = {
    ("pause_handling", "tor"): "pause_tor",
    ("smooth_turn_taking", "tor"): "turn_tor",
    ("smooth_turn_taking", "latency_s"): "turn_lat",
    ("user_interruption", "tor"): "int_tor",
    ("user_interruption", "latency_s"): "int_lat",
    ("backchannel", "tor"): "bc_tor",
    ("backchannel", "jsd"): "bc_jsd",
}
_LABELS = {
    "tor": "TOR",
    "latency_s": "latency (s)",
    "stop_latency_s": "stop latency (s), ours",
    "latency_upstream_s": "latency (s) on words after the interruption end (upstream's crop)",
    "backchannels_per_s": "backchannels / s",
    "jsd": "JSD",
    "score": "TimeSpeak score, ours",
    "rep_accuracy": "reps counted right within 0.6 s",
    "false_counts_per_min": "false counts / min",
    "alert_hit_rate": "alert hit rate within 1.0 s",
    "alert_latency_p50_s": "alert latency p50 (s)",
    "false_alerts_per_min": "false alerts / min",
    "cue_hit_rate": "cue hit rate within 1.0 s",
    "cue_latency_p50_s": "cue latency p50 (s)",
    "false_speech_per_min": "false speech / min (utterances)",
    "answer_accuracy": "answer accuracy (right colour)",
}
# Issue 10's targets for the speaking-on-a-cue benchmarks (held-out split), shown beside them.
TARGETS = {
    ("rep_counting", "rep_accuracy"): ">= 0.80",
    ("rep_counting", "false_counts_per_min"): "<= 1",
    ("visual_alert", "alert_hit_rate"): ">= 0.80",
    ("visual_alert", "alert_latency_p50_s"): "<= 0.6",
    ("visual_alert", "false_alerts_per_min"): "<= 1",
    ("cue_speak", "cue_hit_rate"): ">= 0.70",
    ("cue_speak", "false_speech_per_min"): "<= 1",
}
_DIRECTION = {
    ("pause_handling", "tor"): "lower is better",
    ("smooth_turn_taking", "tor"): "higher is better",
    ("smooth_turn_taking", "latency_s"): "lower is better",
    ("user_interruption", "tor"): "higher is better",
    ("user_interruption", "latency_s"): "lower is better",
    ("user_interruption", "stop_latency_s"): "lower is better",
    ("user_interruption", "latency_upstream_s"): "lower is better",
    ("backchannel", "tor"): "lower is better",
    ("backchannel", "jsd"): "lower is better",
    ("timespeak", "score"): "higher is better",
    ("rep_counting", "rep_accuracy"): "higher is better",
    ("rep_counting", "false_counts_per_min"): "lower is better",
    ("visual_alert", "alert_hit_rate"): "higher is better",
    ("visual_alert", "alert_latency_p50_s"): "lower is better",
    ("visual_alert", "false_alerts_per_min"): "lower is better",
    ("cue_speak", "cue_hit_rate"): "higher is better",
    ("cue_speak", "cue_latency_p50_s"): "lower is better",
    ("cue_speak", "false_speech_per_min"): "lower is better",
    ("visual_question", "tor"): "higher is better",
    ("visual_question", "latency_s"): "lower is better",
    ("visual_question", "answer_accuracy"): "higher is better",
}

NOTES = [
    "Scoring, as FD-bench does it (when the `eval` extra is installed, the default): words and their "
    "times from ASR of each system's output audio (pocketsphinx, decoded inside Silero VAD speech "
    "segments), speech segments from Silero VAD. Columns marked (stream) are the cross-check: words from "
    "the system's own text stream (the interaction model's inner-monologue tokens, grouped into words and "
    "timed by the energy-VAD speech segment they were spoken in; the harnesses' fixed reply text spread "
    "over their speech) and segments from an energy VAD (model/eval/vad.py). Without the extra, only the "
    "(stream) scoring runs, under the plain system names.",
    "Harnesses: the 600 ms energy-VAD endpointing baseline, and the strong one pipecat users run: "
    "SileroVADAnalyzer + LocalSmartTurnAnalyzerV3 (Smart Turn v3.2), both with barge-in and a fixed reply "
    "(spoken by flite when scoring by ASR, so ASR can read it).",
    "User interruption: scored on words starting at or after the interruption start, latency from its "
    "end (fdbench.md), so a word still being said when the user barges in counts as latency 0; upstream "
    "transcribes only the audio after the interruption end, shown in its own row. Relevance (an "
    "LLM judge upstream) is not rated; the reply text is listed instead. Stop latency (ours): how long "
    "the system kept talking after the interruption started, over clips where it was talking then.",
    "Backchannel: a clip's TOR is 1 if any output segment is a take-over (fdbench.md); upstream keeps "
    "the last segment's verdict. JSD is 1.0 for a clip with no backchannels.",
    "Speaking on a cue (ours, model/eval/cue_metrics.py; pooled over clips): rep counting counts a rep "
    "when its number (word or digits) starts within 0.6 s after the rep completes; every other number "
    "said after the request is a false count. Visual alerts: a speech onset within 1.0 s after the "
    "visual event is a hit (latency = onset - event); onsets outside every hit window, from 1.5 s after "
    "the request on, are false alerts. CueSpeak: the expected word starting within 1.0 s after the cue "
    "word ends is a hit; other words from 1.5 s after the rule on are false speech, counted as "
    "utterances (runs without a gap over 0.5 s). Visual question: FD-bench smooth turn-taking plus "
    "whether the first colour word of the reply is the colour on screen. The harnesses hear audio "
    "only and speak after silence, so they cannot do these at any speed: their rows show it.",
    "TimeSpeak (ours): (expected onsets matched by a speech onset within ±0.5 s - onsets matching "
    "none) / expected onsets, floored at 0, averaged over clips. Onsets before the request window "
    "(start - 0.5 s) are not counted.",
]


@dataclass
class ReportPaths:
    json: Path
    markdown: Path
    plot: Path


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def published_cell(kind: str, metric: str) -> str:
    if (kind, metric) in TARGETS:
        return f"target {TARGETS[kind, metric]} (issue 10)"
    key = _PUBLISHED_KEY.get((kind, metric))
    if key is None:
        return ""
    parts = []
    for model, vals in PUBLISHED.items():
        v = vals[key]
        parts.append(f"{model} {v[0]:.3f}/{v[1]:.3f}" if isinstance(v, tuple) else f"{model} {v:.3f}")
    if key == "turn_lat":
        parts.append(f"TML {TML_TURN_LATENCY_S:.2f}")
    return "; ".join(parts)


def run_stats(runs: Sequence[ClipRun]) -> dict[str, Any]:
    """Totals of one system's run: words, how many were voiced, real-time factor."""
    audio = sum(r.seconds for r in runs)
    return {
        "clips": len(runs),
        "audio_s": round(audio, 3),
        "elapsed_s": round(sum(r.elapsed for r in runs), 3),
        "real_time_factor": round(sum(r.elapsed for r in runs) / audio, 3) if audio else None,
        "words": sum(int(r.info.get("words", 0)) for r in runs),
        "voiced_words": sum(int(r.info.get("voiced_words", 0)) for r in runs),
    }


def build_report(
    systems: Sequence[SystemScores], meta: dict[str, Any], runs: Mapping[str, Sequence[ClipRun]] | None = None
) -> dict[str, Any]:
    """The json report (also the source of the markdown)."""
    tasks: dict[str, str] = {}
    for s in systems:
        for t, summ in s.tasks.items():
            tasks.setdefault(t, summ.kind)
    rows = []
    for task in sorted(tasks):
        kind = tasks[task]
        metrics: list[str] = []
        for s in systems:
            if task in s.tasks:
                metrics += [m for m in s.tasks[task].metrics if m not in metrics]
        for m in metrics:
            rows.append(
                {
                    "task": task,
                    "kind": kind,
                    "metric": m,
                    "direction": _DIRECTION.get((kind, m), ""),
                    "values": {s.name: (s.tasks[task].metrics.get(m) if task in s.tasks else None) for s in systems},
                    "published": published_cell(kind, m),
                }
            )
    return {
        "meta": meta,
        "systems": [
            {
                "name": s.name,
                "stem": s.stem,
                "run": run_stats(runs[s.name]) if runs and s.name in runs else None,
                "tasks": {t: asdict(summ) for t, summ in s.tasks.items()},
                "clips": s.clips,
            }
            for s in systems
        ],
        "rows": rows,
        "published": {
            k: {m: list(v) if isinstance(v, tuple) else v for m, v in d.items()} for k, d in PUBLISHED.items()
        },
        "notes": NOTES,
    }


def render_markdown(report: dict[str, Any], plot_name: str = "latency.png") -> str:
    names = [s["name"] for s in report["systems"]]
    lines = ["# microturn eval: Full-Duplex-Bench v1 metrics", ""]
    for k, v in report["meta"].items():
        lines.append(f"- {k}: {v}")
    lines += ["", "| task | metric | " + " | ".join(names) + " | FD-bench v1 published |"]
    lines.append("|" + "---|" * (len(names) + 3))
    for r in report["rows"]:
        metric = _LABELS.get(r["metric"], r["metric"]) + (f" ({r['direction']})" if r["direction"] else "")
        vals = " | ".join(_fmt(r["values"].get(n)) for n in names)
        lines.append(f"| {r['task']} | {metric} | {vals} | {r['published']} |")
    lines += ["", "Pause TOR published as synthetic/candor. TML = Thinking Machines' reported turn-taking latency.", ""]

    lines += ["## Runs", "", "| system | clips | audio (s) | wall (s) | x real time | words | voiced words |"]
    lines.append("|---|---|---|---|---|---|---|")
    for s in report["systems"]:
        r = s["run"]
        if r:
            lines.append(
                f"| {s['name']} | {r['clips']} | {r['audio_s']:.1f} | {r['elapsed_s']:.1f} | "
                f"{_fmt(r['real_time_factor'], 2)} | {r['words']} | {r['voiced_words']} |"
            )
        else:
            lines.append(f"| {s['name']} | scored from existing outputs ({s['stem']}.wav/.json) | | | | | |")
    lines += ["", f"![latency distributions]({plot_name})", ""]

    replies = [(s["name"], c) for s in report["systems"] for c in s["clips"] if "stop_latency" in c]
    if replies:
        lines += ["## User interruption replies", "", "| clip | system | TOR | latency (s) | stop (s) | reply |"]
        lines.append("|---|---|---|---|---|---|")
        for name, c in sorted(replies, key=lambda x: (x[1]["task"], x[1]["clip"], x[0])):
            reply = c["reply"].replace("|", "\\|")
            reply = reply if len(reply) <= 80 else reply[:77] + "..."
            lines.append(
                f"| {c['task']}/{c['clip']} | {name} | {c['tor']} | {_fmt(c['latency'])} | "
                f"{_fmt(c['stop_latency'])} | {reply} |"
            )
        lines.append("")
    lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def plot_latencies(systems: Sequence[SystemScores], path: Path) -> None:
    """Per system, the per-clip latency distributions: turn-taking, interruption response,
    interruption stop (box plot + the points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [
        ("smooth turn-taking latency", lambda s: [x for t in s.tasks.values() if t.kind == "smooth_turn_taking"
                                                  for x in t.latencies]),
        ("user interruption latency", lambda s: [x for t in s.tasks.values() if t.kind == "user_interruption"
                                                 for x in t.latencies]),
        ("interruption stop latency (ours)", lambda s: [x for t in s.tasks.values() if t.kind == "user_interruption"
                                                        for x in t.stop_latencies]),
    ]  # fmt: skip
    for kind, title in (("visual_alert", "visual alert latency (ours)"), ("cue_speak", "cue latency (ours)")):
        if any(t.kind == kind for s in systems for t in s.tasks.values()):
            panels.append((title, functools.partial(_latencies_of, kind)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    rs = np.random.RandomState(0)
    for ax, (title, get) in zip(axes[0], panels, strict=True):
        data = [get(s) for s in systems]
        for i, d in enumerate(data, 1):
            if d:
                ax.boxplot([d], positions=[i], widths=0.5, showfliers=False)
                ax.scatter(i + rs.uniform(-0.12, 0.12, len(d)), d, s=14, alpha=0.7, color=f"C{i - 1}")
            else:
                ax.text(i, 0.5, "no data", ha="center", va="center", fontsize=8, transform=ax.get_xaxis_transform())
        ax.set_xticks(range(1, len(systems) + 1), [s.name for s in systems], fontsize=8)
        ax.set_xlim(0.4, len(systems) + 0.6)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("seconds")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latencies_of(kind: str, system: SystemScores) -> list[float]:
    return [x for t in system.tasks.values() if t.kind == kind for x in t.latencies]


def write_report(
    out_dir: str | Path,
    systems: Sequence[SystemScores],
    meta: dict[str, Any],
    runs: Mapping[str, Sequence[ClipRun]] | None = None,
) -> ReportPaths:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = ReportPaths(out / "report.json", out / "report.md", out / "latency.png")
    report = build_report(systems, meta, runs)
    paths.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths.markdown.write_text(render_markdown(report, paths.plot.name))
    plot_latencies(systems, paths.plot)
    return paths
