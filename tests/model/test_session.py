from __future__ import annotations

import numpy as np
import pytest
import torch

from infra.messages import TURN_SAMPLES, InputError, MicroTurnInput
from model.interaction import InteractionModel
from model.positions import Positions, concat
from model.session import InteractionSession, SessionState, prepare_batch
from model.tokenizer import Tokenizer

N_TURNS = 20
VIDEO_TURNS = {2, 9, 15}
TEXT_TURNS = {4: "what is 347 times 29", 12: "and the weather?"}


def turn_inputs(seed: int = 0) -> list[MicroTurnInput]:
    rs = np.random.RandomState(seed)
    out = []
    for k in range(N_TURNS):
        t = (np.arange(TURN_SAMPLES) + k * TURN_SAMPLES) / 16000
        audio = (0.3 * np.sin(2 * np.pi * (180 + 40 * k) * t) + 0.05 * rs.randn(TURN_SAMPLES)).astype(np.float32)
        video = rs.randint(0, 256, (120, 160, 3), dtype=np.uint8) if k in VIDEO_TURNS else None
        out.append(MicroTurnInput.from_arrays(audio, video=video, text=TEXT_TURNS.get(k, ""), turn=k))
    return out


def test_streaming_equals_teacher_forced_full_sequence(micro_model: InteractionModel, tokenizer: Tokenizer) -> None:
    cfg = micro_model.cfg
    sess = InteractionSession(micro_model, tokenizer, seed=3, trace=True)
    outs = [sess.step(inp) for inp in turn_inputs()]
    assert all(len(o.audio_array()) == TURN_SAMPLES for o in outs)

    full = concat([c for t in sess.trace for c in t.chunks])
    total = full.shape[1]
    assert total > cfg.cache_len + cfg.window, "the ring cache must wrap past the sliding window"
    assert torch.equal(full.pos[0], torch.arange(total)), "positions are contiguous across turns"

    with torch.no_grad():
        out = micro_model(full)
    hidden_full = out.hidden[0]
    hidden_stream = torch.cat([t.hidden for t in sess.trace])
    torch.testing.assert_close(hidden_stream, hidden_full, atol=1e-5, rtol=0)

    # logits of every head at the positions where streaming read them
    P = cfg.positions_per_turn
    start = 0
    for t in sess.trace:
        n_in = t.chunks[0].shape[1]
        with torch.no_grad():
            cap = micro_model.caption_head(hidden_full[start : start + P])
            txt = micro_model.text_head(hidden_full[start + n_in : start + n_in + P])
        torch.testing.assert_close(t.caption_logits, cap, atol=1e-5, rtol=0)
        torch.testing.assert_close(t.text_logits, txt, atol=1e-5, rtol=0)
        start += n_in + P
    assert start == total


def test_typed_text_and_video_reach_the_sequence(micro_model: InteractionModel, tokenizer: Tokenizer) -> None:
    sess = InteractionSession(micro_model, tokenizer, seed=1, trace=True)
    for inp in turn_inputs()[:6]:
        sess.step(inp)
    streams = [t.chunks[0].stream[0].tolist() for t in sess.trace]
    assert streams[2].count(2) == 12  # VIDEO positions: one frame -> 12 patches
    text_ids = tokenizer.encode(TEXT_TURNS[4])
    assert streams[4].count(3) == len(text_ids)
    assert sess.trace[4].chunks[0].text[0, -len(text_ids) :].tolist() == text_ids


def test_long_text_is_spread_over_turns_not_dropped(micro_model: InteractionModel, tokenizer: Tokenizer) -> None:
    cfg = micro_model.cfg
    sess = InteractionSession(micro_model, tokenizer, seed=1, trace=True)
    long_text = " ".join(["tick"] * (cfg.max_text_tokens_per_turn * 2))
    ids = tokenizer.encode(long_text)
    silence = np.zeros(TURN_SAMPLES, np.float32)
    sess.step_audio(silence, text=long_text)
    while sum(t.chunks[0].stream[0].tolist().count(3) for t in sess.trace) < len(ids):
        sess.step_audio(silence)
        assert len(sess.trace) < 10
    fed = [
        int(x) for t in sess.trace for x, s in zip(t.chunks[0].text[0], t.chunks[0].stream[0], strict=True) if s == 3
    ]
    assert fed == ids


def test_same_seed_same_output_different_seed_differs(micro_model: InteractionModel, tokenizer: Tokenizer) -> None:
    inputs = turn_inputs()[:4]
    a = [InteractionSession(micro_model, tokenizer, seed=5).step(i) for i in inputs[:1]]
    b = [InteractionSession(micro_model, tokenizer, seed=5).step(i) for i in inputs[:1]]
    c = [InteractionSession(micro_model, tokenizer, seed=6).step(i) for i in inputs[:1]]
    assert a[0].audio == b[0].audio
    assert a[0].text_tokens == b[0].text_tokens
    assert a[0].audio != c[0].audio


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: MicroTurnInput.from_arrays(np.zeros(3199, np.float32)), "audio"),
        (lambda: MicroTurnInput.from_arrays(np.zeros((2, 3200), np.float32)), "audio"),
        (lambda: MicroTurnInput.from_arrays(np.full(3200, np.nan, np.float32)), "audio"),
        (lambda: MicroTurnInput.from_arrays(np.zeros(3200, np.float32), video=np.zeros((120, 160), np.uint8)), "video"),
        (
            lambda: MicroTurnInput.from_arrays(np.zeros(3200, np.float32), video=np.zeros((120, 160, 3), np.float32)),
            "video",
        ),
    ],
)
def test_bad_input_names_the_field(make: object, field: str) -> None:
    with pytest.raises(InputError, match=f"^{field}: ") as e:
        make()  # type: ignore[operator]
    assert e.value.field == field


def test_bad_wire_message_rejected_by_step(micro_model: InteractionModel, tokenizer: Tokenizer) -> None:
    sess = InteractionSession(micro_model, tokenizer)
    with pytest.raises(InputError, match="audio: expected 3200"):
        sess.step(MicroTurnInput(audio=b"\x00" * 100))
    nan = np.full(TURN_SAMPLES, np.nan, np.float32).tobytes()
    with pytest.raises(InputError, match="audio: contains NaN"):
        sess.step(MicroTurnInput(audio=nan))
    with pytest.raises(InputError, match="video"):
        sess.step(MicroTurnInput(audio=np.zeros(TURN_SAMPLES, np.float32).tobytes(), video=b"\x00" * 10))
    # a rejected input leaves the session usable and at turn 0
    assert sess.step_audio(np.zeros(TURN_SAMPLES, np.float32)).turn == 0


def test_incremental_decoder_keeps_split_characters(tokenizer: Tokenizer) -> None:
    from model.session import IncrementalDecoder

    text = "héllo wörld — 7°C \U0001f600 ok"
    ids = tokenizer.encode(text)
    dec = IncrementalDecoder(tokenizer)
    deltas = [dec.push([i]) for i in ids]  # one token per turn: the worst case for splitting
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert dec.push([tokenizer.pad_id, tokenizer.delegate_id]) == ""
    assert dec.push(tokenizer.encode("a\x07b\nc")) == "ab\nc"


def test_typed_text_flood_is_bounded_dropped_whole_and_reported(
    micro_model: InteractionModel, tokenizer: Tokenizer
) -> None:
    """Ten 4 KB messages a second used to pile up in the session (~40k tokens/s against 32 read
    per turn), so what the user typed next was read minutes later. The backlog is capped, a
    message that does not fit is dropped whole, and the next output says how many tokens went."""
    from model.session import MAX_TEXT_BACKLOG

    assert MAX_TEXT_BACKLOG >= 4096  # one full-size client event (<= 1 token per byte) always fits
    sess = InteractionSession(micro_model, tokenizer, seed=1, trace=True)
    sess.state.max_text_backlog = cap = 256  # small, to keep the test short; same code path
    silence = np.zeros(TURN_SAMPLES, np.float32)
    blob = "lorem ipsum dolor sit amet " * 10  # many times what the model reads per turn
    n_blob = len(tokenizer.encode(blob))
    assert n_blob <= cap < 2 * n_blob
    outs = [sess.step_audio(silence, text=blob) for _ in range(8)]
    state = sess.state
    assert len(state.pending_text) <= cap
    assert outs[0].text_dropped == 0 and {o.text_dropped for o in outs} == {0, n_blob}  # whole messages
    assert state.text_dropped_total == sum(o.text_dropped for o in outs) >= 4 * n_blob
    # what the user types next is read within the backlog's reading time, not minutes later
    marker = tokenizer.encode(" zebra quartz")
    sess.step_audio(silence, text=" zebra quartz")
    fed: list[int] = []
    for _ in range(cap // micro_model.cfg.max_text_tokens_per_turn + 2):
        t = sess.trace[-1].chunks[0]
        fed += [int(x) for x, s in zip(t.text[0], t.stream[0], strict=True) if s == 3]
        if fed[-len(marker) :] == marker:
            break
        sess.step_audio(silence)
    assert fed[-len(marker) :] == marker


def test_prepare_batch_featurizes_the_batch_as_each_session_alone(
    micro_model: InteractionModel, tokenizer: Tokenizer
) -> None:
    """Batched audio features over five turns (each session's own tail carried), with a camera
    frame and typed text: the same IN_k as one session at a time, the dMel bins within
    one bin (the batched filterbank GEMM rounds differently), and a bad input fails alone."""
    cfg = micro_model.cfg
    feeds = [turn_inputs(seed) for seed in range(3)]
    alone = [SessionState.new(cfg, tokenizer, f"s{i}", i, slot=i) for i in range(3)]
    batched = [SessionState.new(cfg, tokenizer, f"s{i}", i, slot=i) for i in range(3)]
    for k in range(5):  # turn 2 carries a camera frame, turn 4 typed text (VIDEO_TURNS, TEXT_TURNS)
        inputs = [f[k] for f in feeds]
        got = prepare_batch(batched, inputs, tokenizer, batched=True)
        for state, twin, inp, g in zip(alone, batched, inputs, got, strict=True):
            want = state.prepare(inp, tokenizer)
            assert isinstance(g, Positions)
            for name in ("stream", "time", "pos", "text", "video", "patches"):
                assert torch.equal(getattr(g, name), getattr(want, name)), name
            assert (g.audio - want.audio).abs().max() <= 1
            assert (g.audio != want.audio).float().mean() < 0.01
            for s in (state, twin):  # what compute_batch does once the turn is stepped
                s.turn, s.next_pos = s.turn + 1, s.next_pos + want.shape[1]
    bad = MicroTurnInput(audio=b"\x00" * 12, session_id="s1")
    got = prepare_batch(batched, [feeds[0][3], bad, feeds[2][3]], tokenizer, batched=True)
    assert isinstance(got[0], Positions) and isinstance(got[2], Positions)
    assert isinstance(got[1], InputError) and got[1].field == "audio"
