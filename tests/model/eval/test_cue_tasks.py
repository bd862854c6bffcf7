"""Speaking-on-a-cue benchmarks end to end: clip video on disk, the exporter from generated
dialogues, the runner feeding frames to the model, scoring, the harness baselines, the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from infra.messages import MicroTurnInput
from model.checkpoint import Checkpoint
from model.eval import frames as F
from model.eval import runner, synth
from model.eval.baselines import HarnessBaseline
from model.eval.dialogues import export_fdbench
from model.eval.layout import BASELINE_STEM, REFERENCE_STEM, LayoutError, discover
from model.eval.report import build_report, render_markdown
from model.eval.runner import ClipInput, clip_input, run_model_rows, run_responder
from model.eval.scoring import score_system
from model.interaction import InteractionModel
from model.tokenizer import Tokenizer
from tests.model.conftest import micro_config


def colour_frames(n: int, seed: int = 0) -> np.ndarray:
    """n frames, each one flat random colour (distinct enough to tell apart after H.264)."""
    rs = np.random.RandomState(seed)
    cols = rs.randint(0, 256, size=(n, 3)).astype(np.uint8)
    return np.broadcast_to(cols[:, None, None, :], (n, 120, 160, 3)).copy()


# -- frames on disk -------------------------------------------------------------------------
def test_png_frames_round_trip_exactly(tmp_path: Path) -> None:
    frames = np.random.RandomState(1).randint(0, 256, size=(3, 120, 160, 3)).astype(np.uint8)
    d = F.write_frames(tmp_path, frames)
    assert sorted(p.name for p in d.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    got = F.read_clip_frames(tmp_path)
    assert got is not None and np.array_equal(got, frames)
    F.write_frames(tmp_path, frames[:1])  # re-export with fewer frames leaves no stale ones
    got = F.read_clip_frames(tmp_path)
    assert got is not None and got.shape == (1, 120, 160, 3)


def test_frames_with_a_gap_in_numbering_are_refused(tmp_path: Path) -> None:
    F.write_frames(tmp_path, colour_frames(3))
    (tmp_path / "frames" / "000001.png").unlink()
    with pytest.raises(F.FramesError, match=r"000001\.png"):
        F.read_clip_frames(tmp_path)


def test_mp4_is_read_one_frame_per_micro_turn(tmp_path: Path) -> None:
    frames = colour_frames(6)
    F.write_mp4(tmp_path / "input.mp4", frames)
    got = F.read_clip_frames(tmp_path)
    assert got is not None and got.shape == (6, 120, 160, 3)
    err = np.abs(got.astype(int) - frames.astype(int)).mean(axis=(1, 2, 3))
    assert err.max() < 6  # H.264 at crf 10 on flat colours, and frame k is frame k


def test_mp4_at_another_rate_and_size_is_sampled_by_time(tmp_path: Path) -> None:
    import av

    cols = colour_frames(20, seed=2)[:, 0, 0]  # 20 frames at 10 fps = 2 s
    with av.open(str(tmp_path / "input.mp4"), "w") as out:
        s = out.add_stream("libx264", rate=10, options={"crf": "10"})
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        for k, c in enumerate(cols):
            img = np.broadcast_to(c, (240, 320, 3)).copy()
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = k
            out.mux(s.encode(vf))
        out.mux(s.encode(None))
    got = F.read_clip_frames(tmp_path, n_turns=10)
    assert got is not None and got.shape == (10, 120, 160, 3)
    for k in range(10):  # turn k = the frame showing at 0.2k s = frame 2k of the 10 fps video
        assert np.abs(got[k, 60, 80].astype(int) - cols[2 * k].astype(int)).max() < 12


def test_clip_without_video_has_no_frames_and_bad_png_is_a_layout_error(tmp_path: Path) -> None:
    synth.cue_clip(tmp_path, "c")
    (clip,) = discover(tmp_path)
    assert clip.kind == "cue_speak" and clip.frames() is None
    d = clip.path / "frames"
    d.mkdir()
    (d / "000000.png").write_bytes(b"not a png")
    with pytest.raises(LayoutError, match=r"000000\.png"):
        clip.frames()


# -- layout, runner ---------------------------------------------------------------------------
def test_cue_benchmark_tasks_are_discovered_with_their_kinds(tmp_path: Path) -> None:
    synth.make_cue_benchmark(tmp_path)
    kinds = {c.task: c.kind for c in discover(tmp_path)}
    assert kinds == {
        "rep_counting": "rep_counting",
        "visual_alert": "visual_alert",
        "visual_question": "visual_question",
        "cue_speak": "cue_speak",
    }
    # a task folder named otherwise is recognised by its json (question.json before turn_taking.json)
    (tmp_path / "visual_question").rename(tmp_path / "vq_heldout")
    assert {c.task: c.kind for c in discover(tmp_path)}["vq_heldout"] == "visual_question"


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    cfg = micro_config()
    torch.manual_seed(0)
    return Checkpoint(config=cfg, model=InteractionModel(cfg).eval(), tokenizer=Tokenizer.default(cfg.vocab_size))


def test_runner_feeds_frame_k_with_micro_turn_k(
    tmp_path: Path, checkpoint: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = synth.alert_clip(tmp_path, "a", event=0.6, duration=1.4)  # 7 turns
    inp = clip_input(discover(tmp_path)[0])
    assert inp.video is not None and len(inp.video) == 7
    inp.video = colour_frames(7)[:5]  # the camera stops after 5 turns
    seen: list[tuple[int, np.ndarray | None]] = []
    real = runner.step_batch

    def spy(model: Any, cache: Any, tok: Any, states: Any, step_in: list[MicroTurnInput]) -> Any:
        seen.extend((i.turn, i.video_array()) for i in step_in)
        return real(model, cache, tok, states, step_in)

    monkeypatch.setattr(runner, "step_batch", spy)
    run_model_rows(checkpoint.model, checkpoint.tokenizer, inp, [None, None])
    assert [t for t, _ in seen] == [k for k in range(6) for _ in range(2)]  # last turn's output is past the end
    for turn, v in seen:
        if turn < 5:
            assert v is not None and np.array_equal(v, inp.video[turn])
        else:
            assert v is None
    assert d.is_dir()


def test_frames_change_what_the_model_does(checkpoint: Checkpoint, tmp_path: Path) -> None:
    """The frames reach the model's computation, not just its input messages."""
    synth.alert_clip(tmp_path, "a", event=0.6, duration=1.4)
    clip = discover(tmp_path)[0]
    base = clip_input(clip)
    with_video = run_model_rows(checkpoint.model, checkpoint.tokenizer, base, [None])[0][1]
    without = run_model_rows(checkpoint.model, checkpoint.tokenizer, ClipInput(clip, base.audio), [None])[0][1]
    assert [t.token_id for t in with_video] != [t.token_id for t in without]  # same seed, same audio


# -- exporter -------------------------------------------------------------------------------
def write_dialogue(d: Path, name: str, duration: float, scenario: str, events: list[dict], video: bool) -> None:
    d.mkdir(parents=True, exist_ok=True)
    n = round(duration * 16000)
    stereo = np.zeros((n, 2), np.float32)
    stereo[:, 1] = synth.render([(0.2, 1.0)], duration)
    sf.write(str(d / f"{name}.wav"), stereo, 16000, subtype="PCM_16")
    (d / f"{name}.json").write_text("{}")
    (d / f"{name}.events.json").write_text(json.dumps({"scenario": scenario, "events": events}))
    if video:
        np.savez(d / f"{name}.frames.npz", frames=colour_frames(round(duration / 0.2)))


def test_generated_dialogues_export_to_cue_tasks(tmp_path: Path) -> None:
    dlg = tmp_path / "dlg"
    write_dialogue(dlg, "r0", 12.0, "rep_counting", [
        {"type": "rep_request", "time": 1.0},
        {"type": "rep", "time": 3.0, "text": "one", "count": 1},
        {"type": "partial_rep", "time": 4.0},
        {"type": "rep", "time": 5.5, "text": "two", "count": 2},
        {"type": "stop", "time": 7.0, "end": 7.6},
        {"type": "uncounted_rep", "time": 8.2},
    ], video=True)  # fmt: skip
    write_dialogue(dlg, "a0", 12.0, "visual_alert", [
        {"type": "alert_request", "time": 1.2},
        {"type": "distractor", "time": 3.0},
        {"type": "visual_event", "time": 5.0, "text": "green"},
    ], video=True)  # fmt: skip
    write_dialogue(dlg, "q0", 12.0, "visual_question", [
        {"type": "user_end", "time": 2.0, "text": "what colour is it now?", "gap": 0.3},
        {"type": "visual_answer", "time": 2.3, "text": "red"},
    ], video=True)  # fmt: skip
    write_dialogue(dlg, "c0", 12.0, "cue_speak", [
        {"type": "cue_rule", "time": 1.5, "text": "whenever I say a colour, say its opposite"},
        {"type": "cue", "time": 4.0, "text": "black", "response": "white"},
        {"type": "cue", "time": 6.5, "text": "up", "response": "down"},
        {"type": "cue_talk", "time": 3.0, "end": 8.0},
    ], video=False)  # fmt: skip
    counts = export_fdbench(dlg, tmp_path / "fdb")
    assert dict(counts) == {"rep_counting": 1, "visual_alert": 1, "visual_question": 1, "cue_speak": 1}
    clips = {c.task: c for c in discover(tmp_path / "fdb")}
    assert {t: c.kind for t, c in clips.items()} == {t: t for t in counts}

    def duration(task: str) -> float:
        info = sf.info(str(clips[task].input_wav))
        return info.frames / info.samplerate

    reps = clips["rep_counting"].meta()
    assert reps["request"] == 1.0 and reps["partials"] == [4.0] and reps["stop"] == 7.0 and reps["uncounted"] == [8.2]
    assert [(r["time"], r["count"]) for r in reps["reps"]] == [(3.0, 1), (5.5, 2)]
    assert duration("rep_counting") == pytest.approx(9.2)  # the rep after "stop" + 1 s
    alerts = clips["visual_alert"].meta()
    assert alerts == {"request": 1.2, "events": [{"time": 5.0, "text": "green"}], "distractors": [3.0]}
    assert duration("visual_alert") == pytest.approx(6.5)
    q = clips["visual_question"].meta()
    assert q == {"question": "what colour is it now?", "user_end": 2.0, "answer": "red"}
    assert (clips["visual_question"].path / "turn_taking.json").is_file()
    cues = clips["cue_speak"].meta()
    assert cues["rule_time"] == 1.5 and [c["response"] for c in cues["cues"]] == ["white", "down"]
    assert duration("cue_speak") == pytest.approx(9.5)  # the end of the user's talk + 1.5 s

    # video tasks carry one frame per micro-turn of the cropped clip, the generator's pixels exactly
    with np.load(dlg / "r0.frames.npz") as z:
        src = z["frames"]
    got = clips["rep_counting"].frames()
    assert got is not None and len(got) == 46 and np.array_equal(got, src[:46])  # ceil(9.2 / 0.2)
    assert clips["visual_alert"].frames() is not None
    assert clips["cue_speak"].frames() is None


# -- scoring, baselines, report ---------------------------------------------------------------
def test_perfect_outputs_score_full_marks_and_the_harness_scores_zero(tmp_path: Path) -> None:
    clips = {d.parent.name: d for d in synth.make_cue_benchmark(tmp_path)}
    synth.fake_output(clips["rep_counting"], [(2.1, 2.4, "one"), (3.1, 3.4, "two"), (4.1, 4.4, "three")])
    synth.fake_output(clips["visual_alert"], [(3.3, 3.8, "green")])
    synth.fake_output(clips["visual_question"], [(1.8, 3.0, "it is blue now")])
    synth.fake_output(clips["cue_speak"], [(2.7, 3.0, "2"), (4.2, 4.5, "3")])
    model = score_system(tmp_path, "output", "model")
    m = {t: s.metrics for t, s in model.tasks.items()}
    assert m["rep_counting"] == {"rep_accuracy": 1.0, "false_counts_per_min": 0.0}
    assert m["visual_alert"]["alert_hit_rate"] == 1.0 and m["visual_alert"]["false_alerts_per_min"] == 0.0
    assert m["visual_alert"]["alert_latency_p50_s"] == pytest.approx(0.3, abs=0.05)  # energy-VAD onset
    assert m["visual_question"]["answer_accuracy"] == 1.0 and m["visual_question"]["tor"] == 1.0
    assert m["cue_speak"]["cue_hit_rate"] == 1.0 and m["cue_speak"]["false_speech_per_min"] == 0.0

    # the harness hears audio only and answers after silence: it hits nothing
    run_responder(HarnessBaseline(), tmp_path, log=lambda _: None)
    harness = score_system(tmp_path, BASELINE_STEM, "harness")
    h = {t: s.metrics for t, s in harness.tasks.items()}
    assert h["rep_counting"]["rep_accuracy"] == 0.0
    assert h["visual_alert"]["alert_hit_rate"] == 0.0
    assert h["cue_speak"]["cue_hit_rate"] == 0.0
    assert h["visual_question"]["answer_accuracy"] == 0.0

    report = build_report([model, harness], {"root": str(tmp_path)})
    rows = {(r["task"], r["metric"]): r for r in report["rows"]}
    assert rows[("rep_counting", "rep_accuracy")]["values"] == {"model": 1.0, "harness": 0.0}
    assert ">= 0.80" in rows[("rep_counting", "rep_accuracy")]["published"]
    md = render_markdown(report)
    for label in ("reps counted right", "false counts / min", "alert hit rate", "alert latency p50",
                  "false alerts / min", "cue hit rate", "false speech / min", "answer accuracy"):  # fmt: skip
        assert label in md


def test_generated_cue_dialogues_score_full_marks_for_their_own_assistant(tmp_path: Path) -> None:
    """Generator -> exporter -> scorers agree: the dialogue's own assistant (exported as the
    `reference` system, words from its alignments) meets every target; the harness hits nothing."""
    from model.data.generate import generate

    scenarios = ["rep_counting", "visual_alert", "visual_question", "cue_speak"]
    generate(tmp_path / "dlg", n_clips=4, split="heldout", seed=5, scenarios=scenarios, progress=False)
    counts = export_fdbench(tmp_path / "dlg" / "heldout", tmp_path / "fdb")
    assert set(counts) == set(scenarios)
    for clip in discover(tmp_path / "fdb"):
        frames = clip.frames()
        if clip.kind == "cue_speak":
            assert frames is None
        else:
            info = sf.info(str(clip.input_wav))
            assert frames is not None and len(frames) == int(np.ceil(info.frames / info.samplerate / 0.2 - 1e-9))
    ref = {t: s.metrics for t, s in score_system(tmp_path / "fdb", REFERENCE_STEM, "reference").tasks.items()}
    assert ref["rep_counting"]["rep_accuracy"] == 1.0 and ref["rep_counting"]["false_counts_per_min"] == 0.0
    assert ref["visual_alert"]["alert_hit_rate"] == 1.0 and ref["visual_alert"]["false_alerts_per_min"] == 0.0
    assert ref["visual_alert"]["alert_latency_p50_s"] <= 0.6  # type: ignore[operator]
    assert ref["cue_speak"]["cue_hit_rate"] == 1.0 and ref["cue_speak"]["false_speech_per_min"] == 0.0
    assert ref["visual_question"]["answer_accuracy"] == 1.0

    run_responder(HarnessBaseline(), tmp_path / "fdb", log=lambda _: None)
    h = {t: s.metrics for t, s in score_system(tmp_path / "fdb", BASELINE_STEM, "harness").tasks.items()}
    assert h["rep_counting"]["rep_accuracy"] == 0.0
    assert h["visual_alert"]["alert_hit_rate"] == 0.0
    assert h["cue_speak"]["cue_hit_rate"] == 0.0
