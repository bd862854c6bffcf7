"""The compiled prefill's padding: a chunk padded to its length bucket computes what it computes unpadded."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from model.attention import KVCache
from model.interaction import InteractionModel
from model.positions import stack
from model.session import SessionState
from model.step import EAGER, PREFILL_BUCKETS, bucketed, length_groups, prefill_hidden, prefill_length, sample_audible
from model.tokenizer import Tokenizer
from tests.model.conftest import micro_config
from tests.model.test_engine import session_inputs


def test_prefill_length_is_the_smallest_bucket_that_holds_the_chunk() -> None:
    assert [prefill_length(t, 80) for t in (1, 4, 5, 16, 17, 32, 33, 80)] == [4, 4, 16, 16, 32, 32, 80, 80]
    assert tuple(sorted(PREFILL_BUCKETS)) == PREFILL_BUCKETS


def test_bucketed_prefill_equals_the_ragged_one(tokenizer: Tokenizer) -> None:
    """Sessions with audio only, a camera frame and typed text (three lengths, one frame among
    them): padded to the bucket and one frame per session, the real rows' hidden states and the
    cache entries they write are the ragged batch's; padding lands in no attended entry."""
    cfg = micro_config()
    torch.manual_seed(0)
    model = InteractionModel(cfg).eval()
    chunks = []
    # session_inputs' turn 1 of s0 is audio alone, of s1 has typed text; turn 2 of s2 a frame and text
    for i, k in enumerate((1, 1, 2)):
        s = SessionState.new(cfg, tokenizer, f"s{i}", i, slot=i)
        chunks.append(s.prepare(session_inputs(i, 3)[k], tokenizer))
    lengths = [c.shape[1] for c in chunks]
    assert len(set(lengths)) > 1 and sum(c.patches.shape[0] for c in chunks) == cfg.n_patches
    padded = bucketed(chunks, cfg)
    assert padded.shape[1] == prefill_length(max(lengths), cfg.max_chunk) > max(lengths)
    assert padded.patches.shape[0] == 3 * cfg.n_patches
    slots = torch.arange(3)
    caches = [KVCache.allocate(cfg, 3) for _ in range(2)]
    with torch.inference_mode():
        ragged = prefill_hidden(model, caches[0], slots, slice(0, 3), None, stack(chunks))
        bucket = prefill_hidden(model, caches[1], slots, slice(0, 3), None, padded)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(bucket[b, :n], ragged[b, :n], atol=1e-5, rtol=1e-5)
    a, z = caches
    n = a.cache_len  # the trash entry after them is where padding goes; never attended
    assert torch.equal(a.pos[:, :n], z.pos[:, :n])
    torch.testing.assert_close(z.k[:, :, :, :n], a.k[:, :, :, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z.v[:, :, :, :n], a.v[:, :, :, :n], atol=1e-5, rtol=1e-5)


def test_length_groups_put_each_chunk_with_its_bucket(tokenizer: Tokenizer) -> None:
    cfg = micro_config()
    chunks = [_chunk(cfg, tokenizer, i, k) for i, k in ((0, 1), (2, 2), (1, 1), (3, 1))]
    groups = length_groups(chunks, cfg)
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3]
    buckets = [{prefill_length(chunks[i].shape[1], cfg.max_chunk) for i in g} for g in groups]
    assert all(len(b) == 1 for b in buckets) and len(groups) > 1


@pytest.mark.parametrize("deterministic", [False, True])
def test_prefill_in_length_groups_equals_one_padded_forward(tokenizer: Tokenizer, deterministic: bool) -> None:
    """Eager prefill runs one forward per length bucket; each session's hidden states and cache
    entries are those of one forward over the whole right-padded batch (bitwise in
    deterministic mode, whose rows do not depend on the batch), with non-contiguous slots."""
    cfg = micro_config(deterministic=deterministic)
    torch.manual_seed(0)
    model = InteractionModel(cfg).eval()
    chunks = [_chunk(cfg, tokenizer, i, k) for i, k in ((0, 1), (2, 2), (1, 1), (3, 1))]
    assert len(length_groups(chunks, cfg)) > 1
    slot_ids = [4, 1, 2, 6]
    caches = [KVCache.allocate(cfg, 8) for _ in range(2)]
    lens = ([c.shape[1] for c in chunks], [c.shape[1] for c in chunks]) if deterministic else None
    with torch.inference_mode():
        slots = torch.tensor(slot_ids)
        one = prefill_hidden(model, caches[0], slots, caches[0].rows(slot_ids), None, stack(chunks), lens)
        grouped = EAGER.prefill(model, caches[1], slots, caches[1].rows(slot_ids), chunks, kv_len=None, lens=lens)
    same = torch.testing.assert_close if not deterministic else _assert_equal
    assert grouped.shape == one.shape
    for b, c in enumerate(chunks):
        same(grouped[b, : c.shape[1]], one[b, : c.shape[1]])
    a, z = caches
    n = a.cache_len
    assert torch.equal(a.pos[:, :n], z.pos[:, :n])
    same(z.k[:, :, :, :n], a.k[:, :, :, :n])
    same(z.v[:, :, :, :n], a.v[:, :, :, :n])


def test_sessions_in_scattered_slots_attend_as_in_packed_ones(tokenizer: Tokenizer) -> None:
    """Attention reads each run of consecutive slots as a view of the cache (no copy): sessions
    in slots 5, 1, 2, 7 (three runs) get the hidden states they get in slots 0-3, over two
    chunks so the second reads what the first wrote."""
    cfg = micro_config()
    torch.manual_seed(0)
    model = InteractionModel(cfg).eval()
    turns = [[_chunk(cfg, tokenizer, i, k) for i in range(4)] for k in (0, 1)]
    hidden = []
    for slot_ids in ([0, 1, 2, 3], [5, 1, 2, 7]):
        cache = KVCache.allocate(cfg, 8)
        with torch.inference_mode():
            for chunks in turns:
                # the second turn's chunks start where the first ended
                start = [0] * 4 if chunks is turns[0] else [c.shape[1] for c in turns[0]]
                p = stack([_shifted(c, s) for c, s in zip(chunks, start, strict=True)])
                h = prefill_hidden(model, cache, torch.tensor(slot_ids), cache.rows(slot_ids), None, p)
        hidden.append(h)
    torch.testing.assert_close(hidden[1], hidden[0], atol=1e-5, rtol=1e-5)


def _shifted(c: Any, start: int) -> Any:
    from dataclasses import replace

    return replace(c, pos=c.pos - c.pos[:, :1] + start)


def _assert_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.equal(a, b)


def _chunk(cfg: Any, tokenizer: Tokenizer, session: int, turn: int) -> Any:
    """session_inputs' turn 1 of s0 and s3 is audio alone, of s1 has typed text; turn 2 of s2 a frame and text."""
    s = SessionState.new(cfg, tokenizer, f"s{session}", session, slot=session)
    return s.prepare(session_inputs(session, 3)[turn], tokenizer)


def test_deterministic_steps_hand_attention_the_lengths_it_would_read_back(
    tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compute_batch passes each session's query and key lengths as host ints (no read back in
    the step), and they are the ones the tensors say: prefill and every decode position."""
    from model.attention import SessionPlan
    from model.engine import Engine

    real = SessionPlan.build.__func__  # type: ignore[attr-defined]
    seen: list[tuple[list[int], list[int]]] = []

    def build(
        cls: type[SessionPlan], *a: Any, q_lens: list[int] | None = None, kv_lens: list[int] | None = None
    ) -> Any:
        assert q_lens is not None and kv_lens is not None, "a step read its lengths back"
        read = real(cls, *a)  # what the tensors say
        assert (read.q_lens, read.kv_lens) == (q_lens, kv_lens)
        seen.append((q_lens, kv_lens))
        return real(cls, *a, q_lens=q_lens, kv_lens=kv_lens)

    torch.manual_seed(0)
    engine = Engine(InteractionModel(micro_config(deterministic=True)), tokenizer, max_sessions=3)
    for i in range(3):
        engine.open(f"s{i}", seed=i)
    monkeypatch.setattr(SessionPlan, "build", classmethod(build))
    for k in range(3):
        engine.step([session_inputs(i, 3)[k] for i in range(3)])
    P = engine.model.cfg.positions_per_turn
    decodes = [q for q, _ in seen if q == [1, 1, 1]]
    prefills = [q for q, _ in seen if q != [1, 1, 1]]
    assert len(decodes) == 3 * P  # P decode positions a turn, and each turn's prefill (per length group)
    assert len(prefills) >= 3 and sum(len(q) for q in prefills) == 3 * 3
    assert len({tuple(q) for q in prefills}) > 1  # ragged prefills were among them


@pytest.mark.parametrize("deterministic", [False, True])
def test_only_the_audible_rows_are_sampled_each_as_in_the_whole_batch(deterministic: bool) -> None:
    """Eager on a CPU the flow head samples the rows that play and no other; each such row gets
    what sampling every row gives it (bitwise in deterministic mode), the quiet rows silence."""
    cfg = micro_config()
    torch.manual_seed(0)
    model = InteractionModel(cfg).eval()
    for p in model.flow.parameters():  # adaLN-zero starts blind to the condition: give it weights
        torch.nn.init.normal_(p, std=0.1)
    model.set_batch_invariant(deterministic)
    B = 7
    cond, noise = torch.randn(B, cfg.d_model), torch.randn(B, cfg.mel_dim)
    audible = torch.tensor([True, False, True, True, False, False, True])
    sampled: list[int] = []
    real = model.flow.sample

    def counting(c: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        sampled.append(c.shape[0])
        return real(c, n)

    with torch.inference_mode():
        dense = real(cond, noise)
        model.flow.sample = counting  # type: ignore[method-assign]
        mixed = sample_audible(model, cond, noise, audible)
        quiet = sample_audible(model, cond, noise, torch.zeros(B, dtype=torch.bool))
        loud = sample_audible(model, cond, noise, torch.ones(B, dtype=torch.bool))
    assert sampled == [4, B]  # the quiet batch samples nothing
    assert torch.equal(mixed[~audible], torch.full((3, cfg.mel_dim), -1.0))
    assert torch.equal(quiet, torch.full((B, cfg.mel_dim), -1.0))
    if deterministic:
        assert torch.equal(mixed[audible], dense[audible]) and torch.equal(loud, dense)
    else:
        torch.testing.assert_close(mixed[audible], dense[audible], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loud, dense, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dense[0], dense[2])  # rows differ: a misplaced row would show
