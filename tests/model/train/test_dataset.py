"""Targets of the teacher-forced sequence: packed monologue turns, `<eot>`, turn state, weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import get_preset
from model.tokenizer import Tokenizer
from model.train.dataset import (
    ASSISTANT,
    FIRST_TOKEN_WEIGHT,
    LEAD_POSITIONS,
    ONSET_HORIZON,
    PAD_WEIGHT,
    USER,
    Clip,
    assistant_turns,
    build_example,
)

CFG = get_preset("tiny")
POS_S = CFG.position_ms / 1000


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.default(CFG.vocab_size)


def _clip(words: list[tuple[str, float, float, str]], seconds: float = 6.0, events: list | None = None) -> Clip:
    n = round(seconds * 16000)
    return Clip("c", np.zeros(n, np.float32), np.zeros(n, np.float32), words, events or [], "turn_taking")


def _out(ex: torch.Tensor) -> list:
    """Targets at output positions only (index o <-> time 0.2 + 0.05 o for a crop from turn 0)."""
    return ex[0][ex[0] >= 0].tolist() if ex.ndim == 2 else ex[0][ex[0, :, 0] >= 0].tolist()


REPLY = [
    ("what", 1.0, 1.3, USER),
    ("time", 1.3, 1.6, USER),
    ("It's", 2.0, 2.2, ASSISTANT),
    ("noon", 2.25, 2.6, ASSISTANT),
    ("now.", 2.65, 3.0, ASSISTANT),
]


def test_a_turn_is_packed_from_its_onset_and_ends_with_eot(tok: Tokenizer) -> None:
    ex = build_example(CFG, tok, _clip(REPLY))
    text = _out(ex.text_target)
    first = round((2.0 - 0.2) / POS_S) - LEAD_POSITIONS  # leads the sound by one position
    ids = [i for w in ("It's", "noon", "now.") for i in tok.encode(" " + w)]
    assert text[first : first + len(ids) + 1] == [*ids, tok.eot_id]
    assert set(text[:first]) == {tok.pad_id}
    assert set(text[first + len(ids) + 1 :]) == {tok.pad_id}


def test_the_first_token_of_a_turn_weighs_most(tok: Tokenizer) -> None:
    ex = build_example(CFG, tok, _clip(REPLY))
    text, weight = _out(ex.text_target), ex.text_weight[0][ex.text_target[0] >= 0].tolist()
    first = text.index(tok.encode(" It's")[0])
    assert weight[first] == FIRST_TOKEN_WEIGHT
    assert all(w == 1.0 for t, w in zip(text[first + 1 :], weight[first + 1 :], strict=True) if t != tok.pad_id)
    assert all(w == pytest.approx(PAD_WEIGHT) for t, w in zip(text, weight, strict=True) if t == tok.pad_id)
    # input positions carry no text target and no weight
    assert float(ex.text_weight[0][ex.text_target[0] < 0].abs().sum()) == 0.0


@pytest.mark.parametrize("hold_weight", [FIRST_TOKEN_WEIGHT, PAD_WEIGHT])
def test_hold_weight_weighs_padding_inside_a_user_pause(tok: Tokenizer, hold_weight: float) -> None:
    """The pause the assistant must sit through (mid-request, or between a monologue's
    sentences) weighs `hold_weight`; padding elsewhere stays cheap. The default changes nothing."""
    words = [("book", 0.6, 0.9, USER), ("a", 0.9, 1.0, USER), ("table", 2.4, 2.8, USER), ("Sure.", 3.0, 3.4, ASSISTANT)]
    events = [
        {"type": "pause", "time": 1.0, "end": 2.4},
        {"type": "monologue_pause", "time": 3.6, "end": 4.5},
        {"type": "user_end", "time": 2.8, "gap": 0.2},  # not a hold
        {"type": "pause", "time": 5.0},  # no end: skipped
    ]
    ex = build_example(CFG, tok, _clip(words, events=events), hold_weight=hold_weight)
    if hold_weight == PAD_WEIGHT:
        assert torch.equal(ex.text_weight, build_example(CFG, tok, _clip(words, events=events)).text_weight)
    text, weight = _out(ex.text_target), ex.text_weight[0][ex.text_target[0] >= 0].tolist()
    at = [0.2 + i * POS_S for i in range(len(text))]  # each output position's start time
    eps = 1e-6
    held = 0
    for t, target, w in zip(at, text, weight, strict=True):
        inside = (1.0 - eps <= t and t + POS_S <= 2.4 + eps) or (3.6 - eps <= t and t + POS_S <= 4.5 + eps)
        if target == tok.pad_id:
            assert w == pytest.approx(hold_weight if inside else PAD_WEIGHT), (t, w)
            held += inside
    assert held == round(1.4 / POS_S) + round(0.9 / POS_S)  # every position of both pauses


def test_turn_state_targets_follow_the_voice(tok: Tokenizer) -> None:
    ex = build_example(CFG, tok, _clip(REPLY))
    state = _out(ex.turn_target)
    onset = round((2.0 - 0.2) / POS_S)
    voice = [v for v, _ in state]
    soon = [s for _, s in state]
    assert voice[onset - 1] == 0.0 and voice[onset] == 1.0
    assert voice[round((2.9 - 0.2) / POS_S)] == 1.0  # inside "now."
    assert voice[round((3.1 - 0.2) / POS_S)] == 0.0  # after the reply
    assert soon[onset - ONSET_HORIZON : onset + 1] == [1.0] * (ONSET_HORIZON + 1)
    assert soon[onset - ONSET_HORIZON - 1] == 0.0 and soon[onset + 1] == 0.0
    # the user's own speech is not the assistant's voice
    assert voice[round((1.2 - 0.2) / POS_S)] == 0.0


def test_silence_splits_turns_and_each_gets_eot(tok: Tokenizer) -> None:
    ticks = [("Ding.", t, t + 0.3, ASSISTANT) for t in (1.0, 3.0, 5.0)]
    assert len(assistant_turns(ticks)) == 3
    assert len(assistant_turns(REPLY)) == 1
    text = _out(build_example(CFG, tok, _clip(ticks, 7.0)).text_target)
    assert text.count(tok.eot_id) == 3


def test_a_delegation_keeps_its_time_and_the_turn_flows_around_it(tok: Tokenizer) -> None:
    ev = [{"type": "delegate", "time": 2.05, "text": "q"}]
    text = _out(build_example(CFG, tok, _clip(REPLY, events=ev)).text_target)
    assert text[round((2.05 - 0.2) / POS_S)] == tok.delegate_id
    ids = [i for w in ("It's", "noon", "now.") for i in tok.encode(" " + w)]
    assert [t for t in text if t not in (tok.pad_id, tok.delegate_id)] == [*ids, tok.eot_id]


def test_a_crop_inside_a_turn_keeps_its_tail(tok: Tokenizer) -> None:
    long_turn = [(f"w{i}", 1.0 + 0.3 * i, 1.25 + 0.3 * i, ASSISTANT) for i in range(12)]
    ex = build_example(CFG, tok, _clip(long_turn), max_turns=10, start=6)  # crop starts at 1.2 s
    text = _out(ex.text_target)
    assert text[0] != tok.pad_id  # the packed run is already under way
    assert tok.eot_id in text
    # a turn whose first token fell before the crop has no first-token weight in it
    weight = ex.text_weight[0][ex.text_target[0] >= 0].tolist()
    assert FIRST_TOKEN_WEIGHT not in weight


def test_list_clips_follows_linked_directories(tmp_path: Path) -> None:
    from model.train.dataset import list_clips

    for name in ("turns", "visual"):
        (tmp_path / "gen" / name).mkdir(parents=True)
        (tmp_path / "gen" / name / "000000.wav").write_bytes(b"")
    (tmp_path / "all").mkdir()
    for name in ("turns", "visual"):
        (tmp_path / "all" / name).symlink_to(tmp_path / "gen" / name)
    assert [p.parent.name for p in list_clips(tmp_path / "all")] == ["turns", "visual"]
