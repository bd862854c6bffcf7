"""In-turn cues: responses come 0.2-0.5 s after the cue word ends, while the user is still
talking, name the right word, and nothing else is said during the talk; sentence tables are
clean and the splits disjoint."""

from __future__ import annotations

import re

import numpy as np
import pytest

from model.data import cues
from model.data import scenarios as sc

SEEDS = range(5)


@pytest.fixture(scope="module")
def clips() -> dict[tuple[str, int], sc.Clip]:
    return {
        (split, seed): sc.build_clip(split, "cue_speak", np.random.default_rng([seed, 17]))
        for split in ("train", "heldout")
        for seed in SEEDS
    }


def _words(clip: sc.Clip, speaker: str) -> list[tuple[str, float, float]]:
    return [(cues.normalize(str(w[0])), float(w[1][0]), float(w[1][1])) for w in clip.alignments if w[2] == speaker]  # type: ignore[index]


def test_responses_overlap_the_user_after_the_cue_word(clips: dict) -> None:
    for (split, _), clip in clips.items():
        user, asst = _words(clip, "SPEAKER_USER"), _words(clip, "SPEAKER_MAIN")
        (rule,) = [e for e in clip.events if e["type"] == "cue_rule"]
        (talk,) = [e for e in clip.events if e["type"] == "cue_talk"]
        found = [e for e in clip.events if e["type"] == "cue"]
        assert 2 <= len(found) <= 4
        assert cues.TALK_S[0] - 0.8 <= float(talk["end"]) - float(talk["time"]) <= cues.TALK_S[1] + 1.5
        by_kind = {r.kind: r for r in cues.tables(split)[0]}
        for cue in found:
            t, onset = float(cue["time"]), float(cue["onset"])
            # the cue word, as spoken, ends at the event's time
            assert any(w == cue["text"] and abs(e - t) < 2e-3 for w, _, e in user), cue
            assert by_kind[str(rule["kind"])].cues[str(cue["text"])] == cue["response"]
            assert cues.DELAY_S[0] - 2e-3 <= onset - t <= cues.DELAY_S[1] + 2e-3
            (said,) = [w for w in asst if abs(w[1] - onset) < 2e-3]
            assert said[0] == cue["response"]
            # the user is still talking: a word of theirs spans the onset or follows within 0.3 s,
            # and the sentence goes on past the response's onset
            assert any(s <= onset + 0.3 and e > onset for _, s, e in user), cue
        # during the talk the assistant says the responses and nothing else
        during = [w for w in asst if float(talk["time"]) <= w[1] <= float(talk["end"])]
        assert sorted(w[0] for w in during) == sorted(str(c["response"]) for c in found)


def test_rule_comes_first_and_clips_fit(clips: dict) -> None:
    for clip in clips.values():
        (rule,) = [e for e in clip.events if e["type"] == "cue_rule"]
        assert all(float(e["time"]) > float(rule["time"]) for e in clip.events if e["type"] == "cue")
        assert 8.0 <= clip.duration <= sc.MAX_DURATION
        assert clip.frames is None


def test_cue_words_appear_only_in_slots() -> None:
    """Every sentence has one {w} slot with words after it; no cue word (of any rule of the
    split) and no number-like word appears elsewhere in sentences or fillers."""
    homophones = {"to", "too", "for", "won", "ate", "one"}
    for split in ("train", "heldout"):
        rules, fillers, _ = cues.tables(split)
        all_cues = {w for r in rules for w in r.cues}
        for rule in rules:
            for s in rule.sentences:
                assert s.count("{w}") == 1 and len(s.split("{w}")[1].split()) >= 2, s
                rest = set(cues.normalize(s.replace("{w}", " ")).split())
                assert not rest & all_cues, (s, rest & all_cues)
                if "number" in rule.kind:
                    assert not rest & homophones, s
        for f in fillers:
            words = set(cues.normalize(f).split())
            assert not words & (all_cues | homophones), f


def test_splits_are_disjoint() -> None:
    def phrases(split: str) -> set[str]:
        rules, fillers, acks = cues.tables(split)
        out = {*fillers, *acks}
        for r in rules:
            out.update(r.phrasings)
            out.update(r.sentences)
        return {cues.normalize(re.sub(r"\{\w+\}", "", s)) for s in out}

    train, held = phrases("train"), phrases("heldout")
    assert len(train) > 25 and len(held) > 20 and not train & held, sorted(train & held)
    kinds = {r.kind for r in cues.HELDOUT_RULES} - {r.kind for r in cues.TRAIN_RULES}
    assert kinds == {"previous_number"}  # a rule the model never trained on
    assert cues.tables("valid") == cues.tables("train")


def test_deterministic_for_a_seed() -> None:
    """In a fresh state the same rng gives the same clip (generate.py forks per clip for espeak)."""
    a = sc.build_clip("train", "cue_speak", np.random.default_rng([3, 17]))
    b = sc.build_clip("train", "cue_speak", np.random.default_rng([3, 17]))
    assert a.events == b.events and a.alignments == b.alignments
