"""Camera scenarios: a checker that finds the events from the pixels alone agrees with the
events json within one frame (0.2 s); frames layout; split disjointness; determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.data import scenarios as sc
from model.data import visual as vis
from model.data.generate import generate

SEEDS = (0, 1, 2)
SPLITS = ("train", "heldout")
TOL = vis.FRAME_S + 0.01  # one frame, plus the centroid's sub-pixel error at the ball's speed
VISUAL = tuple(vis.SCENARIOS)


@pytest.fixture(scope="module")
def clips() -> dict[tuple[str, str, int], sc.Clip]:
    return {
        (split, name, seed): sc.build_clip(split, name, np.random.default_rng([seed, len(name), 99]))
        for split in SPLITS
        for name in VISUAL
        for seed in SEEDS
    }


def _events(clip: sc.Clip, *types: str) -> list[dict]:
    return [e for e in clip.events if e["type"] in types]


# ----------------------------------------------------------------------------- the pixel checker


def _background(frame: np.ndarray) -> np.ndarray:
    """The median colour of the frame's border: objects never touch it."""
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]]).astype(np.int16)
    return np.median(border, axis=0)


def _foreground(frame: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.abs(frame.astype(np.int16) - reference).max(axis=-1) > 40


def _times(ks: list[int]) -> list[float]:
    return [round(k * vis.FRAME_S, 3) for k in ks]


def find_reps(frames: np.ndarray) -> tuple[list[float], list[float]]:
    """(full reps, partial reps): times of the first frame back at the bottom after the figure
    rose above 3/4 (full) or 1/5 (partial) of its range."""
    ys = np.array([np.nonzero(_foreground(f, _background(f)))[0].mean() for f in frames])
    height = (ys.max() - ys) / (ys.max() - ys.min())
    full: list[int] = []
    partial: list[int] = []
    peak = 0.0
    for k, h in enumerate(height):
        if h > 0.08:
            peak = max(peak, float(h))
        elif peak > 0.0:
            (full if peak > 0.75 else partial if peak > 0.2 else []).append(k)
            peak = 0.0
    return _times(full), _times(partial)


_SHADES = [(name, np.array(rgb)) for look in (vis.TRAIN_LOOK, vis.HELDOUT_LOOK) for name, rgb in look.colours.items()]


def _name(rgb: np.ndarray) -> str:
    return min(_SHADES, key=lambda s: float(np.abs(s[1] - rgb).sum()))[0]


def find_colours(frames: np.ndarray) -> list[str]:
    """The colour name of the region that changes colour over the clip, per frame."""
    f = frames.astype(np.int16)
    changing = (f.max(axis=0) - f.min(axis=0)).max(axis=-1) > 40
    assert changing.sum() > 30
    return [_name(frame[changing].mean(axis=0)) for frame in frames]


def colour_changes(frames: np.ndarray) -> list[tuple[float, str]]:
    names = find_colours(frames)
    return [(round(k * vis.FRAME_S, 3), names[k]) for k in range(1, len(names)) if names[k] != names[k - 1]]


def find_ball_exit(frames: np.ndarray) -> tuple[float, int]:
    """(time of the first frame with the ball's centre outside the box, frames with the ball in
    the box after that). The box is the still outline in the median frame; the ball is what
    differs from it."""
    median = np.median(frames, axis=0)
    ys, xs = np.nonzero(_foreground(median.astype(np.uint8), _background(median)))
    x0, x1, y0, y1 = xs.min() + 1, xs.max() - 1, ys.min() + 1, ys.max() - 1  # the outline's centre line
    inside = []
    for frame in frames:
        by, bx = np.nonzero(_foreground(frame, median))
        cx, cy = (bx.mean(), by.mean()) if len(bx) else (-1.0, -1.0)
        inside.append(bool(x0 < cx < x1 and y0 < cy < y1))
    assert inside[0], "the ball starts in the box"
    k = inside.index(False)
    return round(k * vis.FRAME_S, 3), sum(inside[k:])


# ----------------------------------------------------------------------------- checker vs events


@pytest.mark.parametrize("split", SPLITS)
def test_reps_found_from_pixels_match_events(clips: dict, split: str) -> None:
    for seed in SEEDS:
        clip = clips[split, "rep_counting", seed]
        full, partial = find_reps(clip.frames)
        expected = sorted(float(e["time"]) for e in _events(clip, "rep", "uncounted_rep"))
        assert len(full) == len(expected), (full, expected)
        assert all(abs(a - b) <= TOL for a, b in zip(full, expected, strict=True)), (full, expected)
        halves = [float(e["time"]) for e in _events(clip, "partial_rep")]
        assert len(partial) == len(halves) and all(abs(a - b) <= TOL for a, b in zip(partial, halves, strict=True))


@pytest.mark.parametrize("split", SPLITS)
def test_alerts_found_from_pixels_match_events(clips: dict, split: str) -> None:
    kinds = set()
    for seed in SEEDS:
        clip = clips[split, "visual_alert", seed]
        (request,) = _events(clip, "alert_request")
        (event,) = _events(clip, "visual_event")
        kinds.add(request["kind"])
        if request["kind"] == "light":
            found = colour_changes(clip.frames)
            expected = [(float(e["time"]), str(e["text"])) for e in _events(clip, "distractor", "visual_event")]
            assert [c for _, c in found] == [c for _, c in expected], (found, expected)
            assert all(0 <= a - b <= TOL for (a, _), (b, _) in zip(found, expected, strict=True)), (found, expected)
            assert str(event["text"]) in request["text"]
        else:
            t_out, back_in = find_ball_exit(clip.frames)
            assert event["text"] == "out" and back_in == 0
            assert abs(t_out - float(event["time"])) <= TOL, (t_out, event)
            assert all(float(e["time"]) < float(event["time"]) for e in _events(clip, "distractor"))


def test_both_alert_kinds_occur() -> None:
    kinds = set()
    for seed in range(12):
        clip = sc.build_clip("train", "visual_alert", np.random.default_rng([seed, 5]))
        kinds.add(_events(clip, "alert_request")[0]["kind"])
    assert kinds == {"light", "ball"}


@pytest.mark.parametrize("split", SPLITS)
def test_answers_name_the_colour_shown_when_the_question_ends(clips: dict, split: str) -> None:
    for seed in SEEDS:
        clip = clips[split, "visual_question", seed]
        names = find_colours(clip.frames)
        answers = _events(clip, "visual_answer")
        ends = _events(clip, "user_end")
        assert 1 <= len(answers) == len(ends)
        for answer, end in zip(answers, ends, strict=True):
            assert answer["time"] == end["time"] and 0.1 <= end["gap"] <= 0.8
            k = int(np.floor(float(answer["time"]) / vis.FRAME_S + 1e-9))  # the micro-turn the question ends in
            assert names[k] == answer["text"]
            assert len(set(names[max(0, k - 2) : k + 2])) == 1  # no change near the question's end
            spoken = [w for w in clip.alignments if w[2] == "SPEAKER_MAIN" and float(w[1][0]) >= float(answer["onset"])]
            assert str(answer["text"]) in " ".join(str(w[0]).lower() for w in spoken[:4])


# ----------------------------------------------------------------------------- clip properties


def test_frames_cover_every_micro_turn(clips: dict) -> None:
    for clip in clips.values():
        assert clip.frames is not None and clip.frames.dtype == np.uint8
        assert clip.frames.shape == (int(np.ceil(clip.duration / vis.FRAME_S - 1e-9)), 120, 160, 3)
        assert 8.0 <= clip.duration <= sc.MAX_DURATION


def test_other_scenarios_have_no_frames() -> None:
    clip = sc.build_clip("train", "turn_taking", np.random.default_rng(0))
    assert clip.frames is None


def test_counts_follow_reps_and_stop_after_stop(clips: dict) -> None:
    for (_, name, _), clip in clips.items():
        if name != "rep_counting":
            continue
        reps = _events(clip, "rep")
        (stop,) = _events(clip, "stop")
        assert [r["count"] for r in reps] == list(range(1, len(reps) + 1)) and len(reps) >= 3
        words = [w for w in clip.alignments if w[2] == "SPEAKER_MAIN"]
        for rep in reps:
            assert 0.2 - 1e-3 <= float(rep["onset"]) - float(rep["time"]) <= 0.4 + 1e-3
            (said,) = [w for w in words if abs(float(w[1][0]) - float(rep["onset"])) < 1e-3]
            assert vis.normalize(str(said[0])) == rep["text"]
        assert all(float(r["time"]) < float(stop["time"]) for r in reps)
        # after the stop nothing is counted
        after = [w for w in words if float(w[1][0]) >= float(stop["time"])]
        assert not {vis.normalize(str(w[0])) for w in after} & set(sc._NUMBER_WORDS)


def test_appearances_and_phrasings_are_disjoint() -> None:
    train, held = vis.TRAIN_LOOK, vis.HELDOUT_LOOK
    assert not set(train.shapes + train.ball_shapes) & set(held.shapes + held.ball_shapes)
    assert not train.rgb_values() & held.rgb_values()
    assert set(train.colours) == set(held.colours)  # the names are shared, the shades are not
    tp = {vis.normalize(s) for s in vis.TRAIN_VISUAL.strings()}
    hp = {vis.normalize(s) for s in vis.HELDOUT_VISUAL.strings()}
    assert len(tp) > 20 and len(hp) > 15 and not tp & hp, sorted(tp & hp)
    assert vis.tables("valid") == vis.tables("train")


def test_clips_use_their_split_phrasings(clips: dict) -> None:
    for (split, _, _), clip in clips.items():
        _, phrases = vis.tables(split)
        templates = [vis.normalize(s.replace("{colour}", "")) for s in phrases.strings()]
        user = [e for e in clip.events if e["type"] in ("rep_request", "alert_request", "user_end")]
        for e in user:
            text = vis.normalize(str(e["text"]))
            assert any(set(t.split()) <= set(text.split()) for t in templates), text


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    """Same seed, any worker count: the same audio, alignments, events and frames."""
    names = [*VISUAL, "cue_speak"]

    def run(out: Path, workers: int, seed: int = 5) -> dict[str, bytes | np.ndarray]:
        generate(out, 4, "heldout", seed=seed, scenarios=names, workers=workers, progress=False)
        d = out / "heldout"
        files: dict[str, bytes | np.ndarray] = {}
        files.update({p.name: p.read_bytes() for p in d.iterdir() if p.suffix in (".wav", ".json")})
        for p in d.glob("*.frames.npz"):
            with np.load(p) as z:
                files[p.name] = z["frames"]
        return files

    a, b = run(tmp_path / "a", 1), run(tmp_path / "b", 2)
    assert a.keys() == b.keys() and sum(n.endswith(".frames.npz") for n in a) == 3
    for name in a:
        x, y = a[name], b[name]
        assert np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y, name
    meta = json.loads((tmp_path / "a" / "heldout" / "000000.events.json").read_text())
    assert meta["frames"] == "000000.frames.npz" or meta["scenario"] == "cue_speak"
    c = run(tmp_path / "c", 1, seed=6)
    assert all(not np.array_equal(a[n], c[n]) for n in a if n.endswith(".frames.npz") and n in c)
