"""Synthetic dialogue generator: layout, timestamps vs audio, per-scenario events, held-out
split, determinism and argument errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.data import scenarios as sc
from model.data.generate import generate, main

SR = 16_000
N_PER_SPLIT = 2 * len(sc.SCENARIOS)  # scenarios rotate: every scenario twice


@dataclass
class ClipFiles:
    path: Path
    audio: np.ndarray  # (n, 2)
    words: list[list]
    meta: dict

    @property
    def scenario(self) -> str:
        return self.meta["scenario"]

    @property
    def duration(self) -> float:
        return len(self.audio) / SR

    def events(self, type_: str) -> list[dict]:
        return [e for e in self.meta["events"] if e["type"] == type_]

    def speaker_words(self, role: str) -> list[list]:
        return [w for w in self.words if w[2] == sc.SPEAKERS[role]]

    def rms(self, role: str, t0: float, t1: float) -> float:
        x = self.audio[max(0, round(t0 * SR)) : round(t1 * SR), sc.CHANNELS[role]].astype(np.float64)
        return float(np.sqrt(np.mean(x**2))) if len(x) else 0.0


def _load(wav: Path) -> ClipFiles:
    audio, sr = sf.read(wav, dtype="float32", always_2d=True)
    assert sr == SR
    words = json.loads(wav.with_suffix(".json").read_text())["alignments"]
    meta = json.loads(Path(str(wav.with_suffix("")) + ".events.json").read_text())
    return ClipFiles(wav, audio, words, meta)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dialogues")
    generate(root, N_PER_SPLIT, "train", seed=3, progress=False)
    generate(root, N_PER_SPLIT, "heldout", seed=3, progress=False)
    return root


@pytest.fixture(scope="module")
def clips(out: Path) -> dict[str, list[ClipFiles]]:
    return {split: [_load(p) for p in sorted((out / split).glob("*.wav"))] for split in ("train", "heldout")}


def _all(clips: dict[str, list[ClipFiles]]) -> list[ClipFiles]:
    return clips["train"] + clips["heldout"]


def _of(clips: dict[str, list[ClipFiles]], scenario: str) -> list[ClipFiles]:
    found = [c for c in _all(clips) if c.scenario == scenario]
    assert len(found) == 4, scenario
    return found


# ----------------------------------------------------------------------------- layout


def test_layout_and_manifest(out: Path, clips: dict[str, list[ClipFiles]]) -> None:
    for split in ("train", "heldout"):
        rows = [json.loads(line) for line in (out / split / "manifest.jsonl").read_text().splitlines()]
        assert len(rows) == N_PER_SPLIT == len(clips[split])
        assert sorted(r["scenario"] for r in rows) == sorted(list(sc.SCENARIOS) * 2)
        for row, clip in zip(rows, clips[split], strict=True):
            assert Path(row["path"]).is_absolute() and Path(row["path"]) == clip.path.resolve()
            assert row["duration"] == pytest.approx(clip.duration, abs=1e-5)
            assert row["scenario"] == clip.scenario
            info = sf.info(clip.path)
            assert (info.channels, info.samplerate, info.subtype) == (2, SR, "PCM_16")
            assert sc.MIN_DURATION <= clip.duration <= sc.MAX_DURATION
            assert clip.meta["channels"] == {"0": "assistant", "1": "user"}
            assert set(clip.meta["voices"]) == {"user", "assistant"}
            assert clip.meta["voices"]["user"]["name"] != clip.meta["voices"]["assistant"]["name"]
            for e in clip.meta["events"]:
                assert {"type", "time", "text"} <= set(e) and 0.0 <= e["time"] <= clip.duration
            times = [e["time"] for e in clip.meta["events"]]
            assert times == sorted(times)


def test_timestamps_match_audio(clips: dict[str, list[ClipFiles]]) -> None:
    """Inside every word span the speaker's channel is clearly louder than where that speaker
    is silent; words are sorted, well formed and inside the clip."""
    for clip in _all(clips):
        starts = [w[1][0] for w in clip.words]
        assert starts == sorted(starts)
        for text, (s, e), speaker in clip.words:
            assert isinstance(text, str) and text.strip()
            assert speaker in ("SPEAKER_MAIN", "SPEAKER_USER")
            assert 0.0 <= s < e <= clip.duration
        for role in sc.ROLES:
            x = clip.audio[:, sc.CHANNELS[role]].astype(np.float64)
            silent = np.ones(len(x), bool)
            for _, (s, e), _ in clip.speaker_words(role):
                silent[max(0, round((s - 0.1) * SR)) : round((e + 0.1) * SR)] = False
            assert silent.sum() > 0.5 * SR, clip.path  # every clip has quiet stretches
            floor = float(np.sqrt(np.mean(x[silent] ** 2)))
            for text, (s, e), _ in clip.speaker_words(role):
                inside = clip.rms(role, s, e)
                assert inside > max(3.0 * floor, 3e-3), (clip.path.name, role, text, inside, floor)


# ----------------------------------------------------------------------------- scenarios


def _first_word_after(clip: ClipFiles, role: str, t: float) -> list:
    return next(w for w in clip.speaker_words(role) if w[1][0] >= t - 1e-3)


def test_turn_taking(clips: dict[str, list[ClipFiles]]) -> None:
    for clip in _of(clips, "turn_taking"):
        ends = clip.events("user_end")
        assert len(ends) >= 2
        for e in ends:
            reply = _first_word_after(clip, sc.ASSISTANT, e["time"])
            assert reply[1][0] - e["time"] == pytest.approx(e["gap"], abs=0.06)
        # nobody talks over anybody in plain turn-taking
        for _, (s, e), _ in clip.speaker_words(sc.ASSISTANT):
            assert all(u[1][1] <= s or u[1][0] >= e for u in clip.speaker_words(sc.USER))


def test_pause_the_assistant_waits(clips: dict[str, list[ClipFiles]]) -> None:
    for clip in _of(clips, "pause"):
        (p,) = clip.events("pause")
        assert p["end"] - p["time"] >= 0.9
        assert clip.rms(sc.ASSISTANT, p["time"], p["end"]) == 0.0
        first_reply = clip.speaker_words(sc.ASSISTANT)[0]
        assert first_reply[1][0] > clip.events("user_end")[0]["time"] > p["end"]


def test_interruption_assistant_stops_within_300ms(clips: dict[str, list[ClipFiles]]) -> None:
    for clip in _of(clips, "interruption"):
        (i,) = clip.events("interrupt")
        onset, end = i["time"], i["end"]
        assert 0.0 < i["cut"] - onset < 0.3
        # the assistant was talking when the user cut in ...
        assert clip.rms(sc.ASSISTANT, onset - 0.3, onset) > 3e-3
        assert any(w[1][0] < onset for w in clip.speaker_words(sc.ASSISTANT))
        # ... is silent from 300 ms after the onset until the user has finished ...
        assert clip.rms(sc.ASSISTANT, onset + 0.3, end) == 0.0
        assert not [w for w in clip.speaker_words(sc.ASSISTANT) if w[1][1] > onset + 0.3 and w[1][0] < end]
        # ... and then replies
        assert _first_word_after(clip, sc.ASSISTANT, end)[1][0] > end
        assert clip.speaker_words(sc.USER)[-1][1][1] == pytest.approx(end, abs=0.1)


def test_backchannel_overlaps_and_assistant_keeps_going(clips: dict[str, list[ClipFiles]]) -> None:
    for clip in _of(clips, "backchannel"):
        bcs = clip.events("backchannel")
        assert bcs
        assistant = clip.speaker_words(sc.ASSISTANT)
        for b in bcs:
            assert any(s < b["end"] and e > b["time"] for _, (s, e), _ in assistant), b
            assert clip.rms(sc.ASSISTANT, b["time"], b["end"]) > 3e-3
            assert clip.rms(sc.USER, b["time"], b["end"]) > 3e-3
            assert any(s > b["end"] + 0.5 for _, (s, _), _ in assistant)  # keeps going


def test_timed_speech_onsets_at_period(clips: dict[str, list[ClipFiles]]) -> None:
    for clip in _of(clips, "timed_speech"):
        (ts,) = clip.events("timespeak")
        (stop,) = clip.events("stop")
        period, onsets = ts["period_s"], ts["expected_onsets"]
        assert len(onsets) >= 3 and ts["stop"] == stop["time"] > onsets[-1]
        assert np.allclose(np.diff(onsets), period, atol=2e-3)
        # ../shared/fdbench.md: the first tick one period after the request ends
        assert onsets[0] == pytest.approx(ts["start"] + period, abs=1e-3)
        # at most one acknowledgement before the first tick, inside fdbench's free 1.5 s
        early = [w for w in clip.speaker_words(sc.ASSISTANT) if ts["start"] <= w[1][0] < onsets[0] - 0.01]
        if early:
            assert early[0][1][0] <= ts["start"] + 1.5
            assert early[-1][1][1] <= onsets[0] - 0.3
        ticks = [w for w in clip.speaker_words(sc.ASSISTANT) if w[1][0] >= onsets[0] - 0.01 and w[1][0] < stop["time"]]
        assert {w[0].rstrip(".").lower() for w in ticks} == {ts["text"]}
        assert [w[1][0] for w in ticks] == pytest.approx(onsets, abs=0.02)
        assert ts["text"] in ts["request"]


def test_delegation_order(clips: dict[str, list[ClipFiles]]) -> None:
    for clip in _of(clips, "delegation"):
        (d,) = clip.events("delegate")
        (r,) = clip.events("background_result")
        assert d["text"] == clip.events("user_end")[0]["text"] and r["text"]
        assert 1.0 <= r["time"] - d["time"] <= 3.0 + 1e-3
        assistant = clip.speaker_words(sc.ASSISTANT)
        filler = [w for w in assistant if w[1][0] < r["time"]]
        answer = [w for w in assistant if w[1][0] > r["time"]]
        assert filler and answer and filler[0][1][0] <= d["time"] < r["time"] < answer[0][1][0]
        if d["kind"] == "arithmetic":  # the spoken answer carries the background result
            result = r["text"].split("=")[-1].strip()
            assert result in "".join(w[0] for w in answer).replace(",", "")


def test_typed_text(clips: dict[str, list[ClipFiles]]) -> None:
    for clip in _of(clips, "typed_text"):
        (t,) = clip.events("typed_text")
        assert t["text"]
        assistant = clip.speaker_words(sc.ASSISTANT)
        assert assistant[0][1][0] > t["time"] + 0.3
        # the typed text is not spoken by the user
        assert not [w for w in clip.speaker_words(sc.USER) if t["time"] <= w[1][0] <= assistant[0][1][0]]


def test_refusal(clips: dict[str, list[ClipFiles]]) -> None:
    for clip in _of(clips, "refusal"):
        (r,) = clip.events("refusal")
        reply = _first_word_after(clip, sc.ASSISTANT, r["time"])
        assert reply[1][0] == pytest.approx(r["time"], abs=0.02)
        assert r["text"] == clip.events("user_end")[-1]["text"]


def test_noise_and_long_silences(clips: dict[str, list[ClipFiles]]) -> None:
    for clip in _of(clips, "noise_silence"):
        (noise,) = clip.events("noise")
        assert noise["text"] in sc.NOISE_KINDS and noise["end"] == pytest.approx(clip.duration, abs=1e-3)
        silences = clip.events("silence")
        assert len(silences) == 2 and all(s["end"] - s["time"] >= 2.0 for s in silences)
        for s in silences:
            assert not [w for w in clip.words if w[1][1] > s["time"] + 0.01 and w[1][0] < s["end"] - 0.01]
            assert clip.rms(sc.ASSISTANT, s["time"] + 0.05, s["end"]) == 0.0
            assert clip.rms(sc.USER, s["time"] + 0.05, s["end"]) > 1e-4  # the noise is there


# ----------------------------------------------------------------------------- held-out split


def test_heldout_voices_are_disjoint() -> None:
    train, held = sc.VOICES["train"][sc.USER], sc.VOICES["heldout"][sc.USER]
    assert not set(train.names()) & set(held.names())
    # users come from two synthesizer families in both splits, and training adds MBROLA's
    for pool in (train, held):
        assert pool.espeak is not None and pool.flite is not None and 0 < pool.flite_share < 1
    assert train.mbrola is not None and 0 < train.mbrola_share < 1 and held.mbrola is None
    assert all(n.startswith("mb-") for n in train.mbrola.names()) and "mb-us3" not in train.mbrola.names()
    # espeak-ng variants and accents differ too, not just their combinations
    assert train.espeak is not None and held.espeak is not None
    assert not set(train.espeak.languages) & set(held.espeak.languages)
    assert not set(train.espeak.variants) & set(held.espeak.variants)
    assert not (set(train.espeak.variants) | set(held.espeak.variants)) & set(sc.EXCLUDED_VARIANTS)
    # the assistant is the model's own voice: one flite voice, never a user's
    assistant = {n for split in ("train", "heldout") for n in sc.VOICES[split][sc.ASSISTANT].names()}
    assert assistant == {"flite:slt"}
    assert not assistant & (set(train.names()) | set(held.names()))
    assert sc.VOICES["valid"] is sc.VOICES["train"]


def test_all_pool_voices_exist() -> None:
    from model.data.espeak import check_voice
    from model.data.flite import list_voices

    for split in ("train", "heldout"):
        for role in sc.ROLES:
            for name in sc.VOICES[split][role].names():
                if name.startswith("flite:"):
                    assert name.removeprefix("flite:") in list_voices()
                else:
                    check_voice(name)


def test_heldout_phrasings_are_disjoint() -> None:
    train = {sc.normalize_phrase(s) for s in sc.TRAIN_PHRASES.strings()}
    held = {sc.normalize_phrase(s) for s in sc.HELDOUT_PHRASES.strings()}
    assert len(train) > 80 and len(held) > 60
    assert not train & held, sorted(train & held)
    assert sc.PHRASES["valid"] is sc.TRAIN_PHRASES


def test_clips_use_their_split_voices(clips: dict[str, list[ClipFiles]]) -> None:
    for split, pools in (("train", sc.VOICES["train"]), ("heldout", sc.VOICES["heldout"])):
        for clip in clips[split]:
            for role in sc.ROLES:
                voice = clip.meta["voices"][role]
                name = f"flite:{voice['name']}" if voice.get("engine") == "flite" else voice["name"]
                assert name in pools[role].names()


# ----------------------------------------------------------------------------- determinism and errors


def _digest(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.name != "manifest.jsonl"}


def test_deterministic_for_a_seed(out: Path, tmp_path: Path) -> None:
    """Same seed: identical bytes, whatever the run length and worker count; new seed: new clips."""
    generate(tmp_path / "again", 3, "train", seed=3, workers=2, progress=False)
    first = _digest(out / "train")
    again = _digest(tmp_path / "again" / "train")
    assert len(again) == 9
    assert all(again[name] == first[name] for name in again)
    generate(tmp_path / "other", 3, "train", seed=4, progress=False)
    other = _digest(tmp_path / "other" / "train")
    assert all(other[n] != first[n] for n in other if n.endswith(".wav"))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (dict(n_clips=0), "n_clips must be an integer >= 1"),
        (dict(n_clips=-3), "n_clips must be an integer >= 1"),
        (dict(n_clips="5"), "n_clips must be an integer >= 1"),
        (dict(split="dev"), "unknown split 'dev'; expected one of: train, valid, heldout"),
        (dict(seed=-1), "seed must be an integer >= 0"),
        (dict(workers=0), "workers must be"),
        (dict(scenarios=["karaoke"]), "unknown scenarios"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: dict, match: str) -> None:
    kwargs = dict(out_dir=tmp_path, n_clips=1, split="train", seed=0) | args
    with pytest.raises(ValueError, match=match):
        generate(**kwargs)
    assert not (tmp_path / "train" / "manifest.jsonl").exists()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["--out", str(tmp_path), "--n", "2", "--split", "valid", "--seed", "1", "--scenarios", "delegation"]) == 0
    )
    rows = (tmp_path / "valid" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(r)["scenario"] for r in rows] == ["delegation", "delegation"]
    assert "valid: 2/2 clips" in capsys.readouterr().err  # the progress line
    for argv, msg in ((["--n", "0"], "n_clips must be"), (["--split", "test"], "unknown split 'test'")):
        with pytest.raises(SystemExit) as exc:
            main(["--out", str(tmp_path), *argv])
        assert exc.value.code == 2
        assert msg in capsys.readouterr().err
