"""Failover: a session rebuilt on another engine from its turn log continues where it was.

Engine A steps a session and logs one TurnRecord per turn; engine B (same weights, another
process in production) restores it from the records with a chunked prefill, then both step the
same next inputs. While the whole history fits the window the rebuilt KV cache is the one A
has, up to the rounding of a prefill against incremental steps: attention runs one SDPA call
per chunk, and the query/key counts of a 40-position prefill chunk differ from those of a
4-position input chunk or a 1-position decode step, so the kernel may block the reduction
differently (the same reason tests/model/test_session.py compares streaming to the
teacher-forced pass within 1e-5). The tokens and mel bins that come out are identical.
"""

from __future__ import annotations

import asyncio
import copy

import msgspec
import numpy as np
import pytest
import torch

from infra.messages import TURN_SAMPLES, ControlReply, MicroTurnInput, MicroTurnOutput, TurnRecord
from model.engine import Engine, chunked, record_positions, usable_records
from model.interaction import InteractionModel
from model.tokenizer import Tokenizer
from tests.model.conftest import micro_config
from tests.redis_server import RedisServer

SEED = 11


def make_model(**cfg: object) -> InteractionModel:
    torch.manual_seed(0)
    return InteractionModel(micro_config(deterministic=True, **cfg)).eval()


def inputs(n_turns: int, sid: str = "s", start: int = 0) -> list[MicroTurnInput]:
    rs = np.random.RandomState(7 + start)
    out = []
    for k in range(start, start + n_turns):
        t = (np.arange(TURN_SAMPLES) + k * TURN_SAMPLES) / 16000
        audio = (0.2 * np.sin(2 * np.pi * (170 + 30 * k) * t) + 0.05 * rs.randn(TURN_SAMPLES)).astype(np.float32)
        video = rs.randint(0, 256, (120, 160, 3), dtype=np.uint8) if k % 5 == 2 else None
        # typed text longer than one turn takes (32 tokens): some of it is still queued when the log is read
        text = "please remember the number 4711 and the word lighthouse " * 4 if k == 6 else ""
        bg = "result: 10063" if k == 4 else ""
        out.append(MicroTurnInput.from_arrays(audio, video=video, text=text, background=bg, session_id=sid, turn=k))
    return out


def step(engine: Engine, inp: MicroTurnInput) -> tuple[MicroTurnOutput, list[TurnRecord]]:
    res = engine.step_isolated([inp])
    assert not res.failed, res.failed
    return res.outputs[0], res.records


def run_logged(engine: Engine, turns: list[MicroTurnInput]) -> list[TurnRecord]:
    engine.log_turns = True
    engine.open("s", SEED)
    records: list[TurnRecord] = []
    for inp in turns:
        _, recs = step(engine, inp)
        records += recs
    # the log goes through Redis as msgpack: restore from what survives that trip
    return [msgspec.msgpack.decode(msgspec.msgpack.encode(r), type=TurnRecord) for r in records]


def slot_cache(engine: Engine, sid: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    slot = engine.session(sid).slot
    c = engine.cache
    return c.k[:, slot], c.v[:, slot], c.pos[slot]


def test_restore_within_window_continues_the_session(tokenizer: Tokenizer) -> None:
    model_a = make_model(window=512)
    a = Engine(model_a, tokenizer, max_sessions=2, deterministic=True)
    b = Engine(copy.deepcopy(model_a), tokenizer, max_sessions=3, deterministic=True)
    b.open("other", 1)  # the restored session lands on another slot than on A
    history = inputs(8)
    records = run_logged(a, history)
    assert [r.turn for r in records] == list(range(8))
    sa = a.session("s")
    assert sa.next_pos < a.model.cfg.window, "the whole history must fit the window for exact equality"
    assert sa.pending_text, "some typed text must still be queued (the record carries it)"

    sb = b.restore("s", SEED, records)
    assert sb.slot != sa.slot
    assert (sb.turn, sb.next_pos, sb.last_token, sb.speaking) == (sa.turn, sa.next_pos, sa.last_token, sa.speaking)
    assert torch.equal(sb.last_bins, sa.last_bins)
    assert list(sb.pending_text) == list(sa.pending_text)
    assert torch.equal(sb.dmel.tail, sa.dmel.tail)
    ka, va, pa = slot_cache(a, "s")
    kb, vb, pb = slot_cache(b, "s")
    assert torch.equal(pa, pb), "the same positions sit in the same cache entries"
    torch.testing.assert_close(kb, ka, atol=1e-5, rtol=0)
    torch.testing.assert_close(vb, va, atol=1e-5, rtol=0)
    print(f"\nrebuilt KV max |diff|: k {float((kb - ka).abs().max()):.2e} v {float((vb - va).abs().max()):.2e}")

    for inp in inputs(4, start=8):
        oa, _ = step(a, inp)
        ob, _ = step(b, inp)
        assert ob.text_tokens == oa.text_tokens
        assert ob.caption_tokens == oa.caption_tokens
        assert all(torch.equal(x, y) for x, y in zip(b.session("s").turn_bins, a.session("s").turn_bins, strict=True))
        # the vocoder restarted on B: only its first turn's overlap differs
        diff = np.abs(ob.audio_array() - oa.audio_array())
        print(f"turn {inp.turn}: audio max |diff| {diff.max():.2e}")
        if inp.turn >= 10:  # measured ~1e-3: Griffin-Lim's phase memory converges over a few turns
            assert diff.max() < 1e-2, "two turns on, the restarted vocoder has caught up"


def test_restore_with_bad_kv_is_caught(tokenizer: Tokenizer) -> None:
    """The equality check above is not vacuous: a record with one wrong output token rebuilds
    a different cache."""
    model_a = make_model(window=512)
    a = Engine(model_a, tokenizer, max_sessions=1, deterministic=True)
    b = Engine(copy.deepcopy(model_a), tokenizer, max_sessions=1, deterministic=True)
    records = run_logged(a, inputs(4))
    records[1].out_tokens[2] = (records[1].out_tokens[2] + 1) % tokenizer.vocab_size
    b.restore("s", SEED, records)
    assert not torch.allclose(slot_cache(b, "s")[0], slot_cache(a, "s")[0], atol=1e-5)


def test_restore_past_the_window_from_a_trimmed_log(tokenizer: Tokenizer) -> None:
    """Only what the window holds is logged (plus turn 0, the sinks): the session goes on at
    the right positions, and the next turns' outputs are well formed."""
    model_a = make_model()  # window 48: 30 turns wrap the ring many times
    cfg = model_a.cfg
    a = Engine(model_a, tokenizer, max_sessions=1, deterministic=True)
    b = Engine(copy.deepcopy(model_a), tokenizer, max_sessions=1, deterministic=True)
    records = run_logged(a, inputs(30))
    keep = cfg.window // (2 * cfg.positions_per_turn) + 1
    trimmed = [records[0], *records[-keep:]]
    sb = b.restore("s", SEED, trimmed)
    sa = a.session("s")
    assert (sb.turn, sb.next_pos, sb.last_token) == (sa.turn, sa.next_pos, sa.last_token)
    pb = slot_cache(b, "s")[2]
    assert pb[: cfg.n_sinks].tolist() == list(range(cfg.n_sinks)), "the sinks are rebuilt"
    assert int(pb.max()) == sa.next_pos - 1
    for inp in inputs(3, start=30):
        ob, _ = step(b, inp)
        assert len(ob.text_tokens) == cfg.positions_per_turn
        assert len(ob.audio_array()) == TURN_SAMPLES and np.isfinite(ob.audio_array()).all()
    assert b.session("s").next_pos > sa.next_pos


def test_restore_without_records_is_a_fresh_open(tokenizer: Tokenizer) -> None:
    e = Engine(make_model(), tokenizer, max_sessions=1, deterministic=True)
    s = e.restore("s", SEED, [])
    assert (s.turn, s.next_pos) == (0, 0)
    assert "s" in e


def test_restore_refuses_another_seed_and_leaves_no_session(tokenizer: Tokenizer) -> None:
    model = make_model()
    a = Engine(model, tokenizer, max_sessions=1, deterministic=True)
    records = run_logged(a, inputs(2))
    b = Engine(copy.deepcopy(model), tokenizer, max_sessions=1, deterministic=True)
    with pytest.raises(ValueError, match="seed"):
        b.restore("s", SEED + 1, records)
    assert "s" not in b and b.stats().active == 0


def test_usable_records_keeps_turn_zero_and_the_newest_run() -> None:
    def rec(t: int) -> TurnRecord:
        return TurnRecord(session_id="s", seed=0, turn=t, input_turn=t, start_pos=0, in_bins=b"")

    got = usable_records([rec(t) for t in (5, 0, 7, 8, 9, 9, 3)])
    assert [r.turn for r in got] == [0, 7, 8, 9]
    assert [r.turn for r in usable_records([rec(t) for t in (2, 0, 1)])] == [0, 1, 2]
    assert usable_records([]) == []


def test_replay_chunks_fit_the_ring_slack(tokenizer: Tokenizer) -> None:
    model = make_model()
    cfg = model.cfg
    records = run_logged(Engine(model, tokenizer, max_sessions=1, deterministic=True), inputs(6))
    pieces = [p for r in records for p in record_positions(cfg, r)]
    groups = chunked(pieces, cfg.max_chunk)
    assert all(sum(p.shape[1] for p in g) <= cfg.max_chunk for g in groups)
    assert [p for g in groups for p in g] == pieces
    assert len(groups) < len(pieces), "positions are batched into prefill chunks, not replayed one by one"


async def test_a_worker_restores_a_session_from_another_workers_log(redis_server: RedisServer) -> None:
    """Worker A logs every turn to Redis; worker B, asked to open the session with restore=True,
    rebuilds it from that log and answers the next input as A does."""
    from infra import keys
    from infra.messages import SessionClose, SessionOpen
    from infra.redis_bus import RedisBus, RedisSettings
    from infra.registry import WorkerRegistry
    from model.service import ServiceSettings, WorkerService

    model = make_model(window=512)
    tok = Tokenizer.default(model.cfg.vocab_size)
    rs = RedisSettings.from_dsn(redis_server.url, block_ms=200)
    services: list[WorkerService] = []
    clients = []
    for wid, m in (("wa", model), ("wb", copy.deepcopy(model))):
        bus, r = RedisBus(rs), rs.client()
        clients.append((bus, r))
        # a long turn: a slow shared CPU never makes the worker gap-step while the test feeds it
        services.append(
            WorkerService(
                Engine(m, tok, 2, deterministic=True), bus, WorkerRegistry(r, ttl_s=2), ServiceSettings(worker_id=wid),
                turn_ms=2000,
            )
        )  # fmt: skip
    edge_bus, edge_r = RedisBus(rs), rs.client()
    replies = edge_bus.subscribe(keys.replies("e"))
    outs = edge_bus.subscribe(keys.outputs("s"))

    async def control(worker: str, msg: SessionOpen | SessionClose) -> None:
        await edge_bus.publish_struct(keys.worker_ctl(worker), msg)
        async with asyncio.timeout(60):
            reply = msgspec.msgpack.decode(await replies.get(), type=ControlReply)
        assert reply.ok, reply

    async def turn(worker: str, inp: MicroTurnInput) -> MicroTurnOutput:
        await edge_bus.publish_struct(keys.inputs(worker), inp)
        async with asyncio.timeout(60):
            return msgspec.msgpack.decode(await outs.get(), type=MicroTurnOutput)

    try:
        for svc in services:
            await svc.start()
        await replies.ready()
        await outs.ready()
        await control("wa", SessionOpen(request_id="1", session_id="s", seed=SEED, reply_to=keys.replies("e")))
        for inp in inputs(6):
            assert (await turn("wa", inp)).turn == inp.turn
        async with asyncio.timeout(30):
            while await edge_r.xlen(keys.session_log("s")) < 6:
                await asyncio.sleep(0.05)
        assert await edge_r.exists(keys.session_log_head("s"))

        await control(
            "wb", SessionOpen(request_id="2", session_id="s", seed=SEED, reply_to=keys.replies("e"), restore=True)
        )
        sa, sb = services[0].engine.session("s"), services[1].engine.session("s")
        assert (sb.turn, sb.next_pos, sb.last_token) == (sa.turn, sa.next_pos, sa.last_token)
        nxt = inputs(1, start=6)[0]
        oa, ob = await turn("wa", nxt), await turn("wb", nxt)
        assert ob.turn == oa.turn == 6
        assert ob.text_tokens == oa.text_tokens and ob.caption_tokens == oa.caption_tokens

        await control("wb", SessionClose(request_id="3", session_id="s", reply_to=keys.replies("e")))
        # closing keeps the log (the edge closes on the old worker when it moves a session, and the
        # new one may still be reading it); it expires soon after its last write
        assert 0 < await edge_r.ttl(keys.session_log("s")) <= 60
        assert 0 < await edge_r.ttl(keys.session_log_head("s")) <= 60
        # nothing logged: a restore is a fresh open
        await control(
            "wb", SessionOpen(request_id="4", session_id="t", seed=1, reply_to=keys.replies("e"), restore=True)
        )
        assert services[1].engine.session("t").turn == 0
    finally:
        for svc in services:
            await svc.stop()
        for bus, r in [*clients, (edge_bus, edge_r)]:
            await bus.close()
            await r.aclose()
