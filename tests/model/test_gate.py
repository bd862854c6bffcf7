from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from infra.messages import TURN_SAMPLES, MicroTurnInput
from model import rng
from model.checkpoint import CONFIG, MANIFEST, _sha256, load_checkpoint, save_checkpoint, write_gate
from model.config import ConfigError, GateConfig, ModelConfig
from model.engine import Engine
from model.gate import BatchGate, gate_step, p_speak
from model.interaction import InteractionModel
from model.session import InteractionSession
from model.tokenizer import Tokenizer
from tests.model.conftest import micro_config

V, PAD, EOT = 8, 0, 1


def row(p_not_pad: float, best: int = 5) -> list[float]:
    """Logits with p(not pad) = p_not_pad, split 0.7 / 0.3 between `best` and token 6."""
    x = [-1e4] * V
    x[PAD] = math.log(1 - p_not_pad)
    x[best] = math.log(0.7 * p_not_pad)
    x[6 if best != 6 else 7] = math.log(0.3 * p_not_pad)
    return x


def batch_gate(gates: list[GateConfig], seeds: list[int] | None = None) -> BatchGate:
    return BatchGate.build(gates, seeds or [0] * len(gates), [0] * len(gates), PAD, EOT)


def test_thresholds_with_hysteresis_and_eot() -> None:
    g = GateConfig(start=0.3, keep=0.1)
    cases = [  # (speaking before, p(not pad), best token) -> (token, speaking after)
        (False, 0.29, 5, PAD, False),  # silent below start
        (False, 0.31, 5, 5, True),  # starts at start
        (False, 0.2, 5, PAD, False),  # between keep and start: silent stays silent
        (True, 0.2, 5, 5, True),  # ... but speaking keeps going (hysteresis)
        (True, 0.11, 5, 5, True),  # keeps above keep
        (True, 0.09, 5, PAD, False),  # stops below keep
        (True, 0.9, EOT, EOT, False),  # <eot> ends the turn
        (False, 0.95, EOT, EOT, False),  # and never starts one
    ]
    logits = torch.tensor([row(p, best) for _, p, best, _, _ in cases])
    torch.testing.assert_close(p_speak(logits, PAD), torch.tensor([c[1] for c in cases]), atol=1e-5, rtol=0)
    speaking = torch.tensor([c[0] for c in cases])
    tok, after = gate_step(logits, speaking, batch_gate([g] * len(cases)))
    assert tok.tolist() == [c[3] for c in cases]
    assert after.tolist() == [c[4] for c in cases]


def test_pad_argmax_does_not_stop_a_start_above_threshold() -> None:
    # p(not pad) = 0.45: argmax is <pad> (0.55), but the gate at start=0.4 speaks the best non-pad token
    logits = torch.tensor([row(0.45)] * 2)
    assert logits.argmax(-1).tolist() == [PAD, PAD]
    tok, after = gate_step(logits, torch.tensor([False, False]), batch_gate([GateConfig(start=0.4), GateConfig()]))
    assert tok.tolist() == [5, PAD]  # gated row speaks; greedy row (no gate) is argmax as before
    assert after.tolist() == [True, False]


def test_greedy_rows_are_exact_argmax() -> None:
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(0))
    tok, after = gate_step(logits, torch.ones(16, dtype=torch.bool), batch_gate([GateConfig()] * 16))
    assert torch.equal(tok, logits.argmax(-1))
    assert not after.any()


def test_temperature_samples_non_pad_tokens_from_keyed_noise() -> None:
    # flat over non-pad tokens: sampling must spread; greedy among non-pad would always pick 2
    x = [0.0] * V
    x[PAD] = 5.0
    x[2] = 0.1
    logits = torch.tensor([x] * 64)
    gates = [GateConfig(start=0.01, temperature=1.0)] * 64
    gate = batch_gate(gates, seeds=list(range(64)))
    tok, _ = gate.step(logits, torch.zeros(64, dtype=torch.bool), position=3)
    assert PAD not in tok.tolist()
    assert len(set(tok.tolist())) >= 4
    again, _ = batch_gate(gates, seeds=list(range(64))).step(logits, torch.zeros(64, dtype=torch.bool), position=3)
    assert torch.equal(tok, again)  # a pure function of (seed, turn, position)
    # one row alone gets the same token as inside the batch
    alone, _ = batch_gate(gates[:1], seeds=[17]).step(logits[:1], torch.zeros(1, dtype=torch.bool), position=3)
    assert alone.item() == tok[17].item()
    cold, _ = batch_gate([GateConfig(start=0.01)] * 64).step(logits, torch.zeros(64, dtype=torch.bool), 3)
    assert set(cold.tolist()) == {2}  # temperature 0: the best non-pad token


def test_gumbel_noise_is_keyed() -> None:
    a = rng.gumbel(1, 2, 3, 100)
    assert torch.equal(a, rng.gumbel(1, 2, 3, 100))
    assert not torch.equal(a, rng.gumbel(1, 2, 4, 100))
    assert not torch.equal(a, rng.gumbel(2, 2, 3, 100))
    assert torch.isfinite(a).all()


def test_gate_config_validation_and_json() -> None:
    with pytest.raises(ConfigError, match="keep"):
        GateConfig(start=0.2, keep=0.5)
    with pytest.raises(ConfigError, match="keep needs start"):
        GateConfig(keep=0.1)
    with pytest.raises(ConfigError, match="start"):
        GateConfig(start=0.0)
    cfg = micro_config(gate=GateConfig(start=0.3, keep=0.1, temperature=0.7))
    assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ConfigError, match="unknown gate fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "gate": {"start": 0.3, "bogus": 1}})


def _speech(k: int) -> MicroTurnInput:
    t = (np.arange(TURN_SAMPLES) + k * TURN_SAMPLES) / 16000
    return MicroTurnInput.from_arrays((0.2 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), turn=k)


def test_session_applies_the_gate_and_keeps_state_per_turn(tokenizer: Tokenizer) -> None:
    torch.manual_seed(0)
    model = InteractionModel(micro_config()).eval()
    # thresholds inside the range of p(not pad) these random weights produce, so both branches run
    probe = InteractionSession(model, tokenizer, seed=3, trace=True)
    for k in range(4):
        probe.step(_speech(k))
    p = p_speak(torch.cat([t.text_logits for t in probe.trace]), tokenizer.pad_id)
    gate = GateConfig(start=float(p.quantile(0.6)), keep=float(p.quantile(0.3)))
    sess = InteractionSession(model, tokenizer, seed=3, trace=True)
    sess.state.gate = gate
    speaking = torch.zeros(1, dtype=torch.bool)
    n_gated = 0
    for k in range(4):
        out = sess.step(_speech(k))
        logits = sess.trace[-1].text_logits
        for j, t in enumerate(out.text_tokens):
            expect, speaking = gate_step(logits[j : j + 1], speaking, BatchGate.build([gate], [3], [k], 0, 1))
            assert t == expect.item(), (k, j)
            n_gated += int(logits[j].argmax().item() != t)
        assert sess.state.speaking == bool(speaking.item())  # carried across turns
    assert n_gated > 0  # the gate changed something versus argmax on these weights


def test_voice_threshold_decides_what_is_audible() -> None:
    gates = [GateConfig(start=0.5, voice=0.6)] * 4 + [GateConfig(start=0.5)]
    g = batch_gate(gates)
    p_voice = torch.tensor([0.7, 0.5, 0.5, 0.61, 0.01])
    turn_logits = torch.stack([torch.logit(p_voice), torch.zeros(5)], dim=-1)  # (B, 2)
    speaking = torch.tensor([False, False, True, False, False])
    # active voice plays; a quiet voice is silence unless the text gate is speaking; no voice
    # threshold (None) always plays, as before the turn head
    assert g.audible(turn_logits, speaking).tolist() == [True, False, True, True, True]


def test_session_plays_silence_where_the_turn_head_says_so(tokenizer: Tokenizer) -> None:
    torch.manual_seed(0)
    model = InteractionModel(micro_config()).eval()
    never = GateConfig(start=1.0, keep=1.0)  # the text gate never starts (p(not pad) < 1)
    with torch.no_grad():
        model.turn_head.weight.zero_()
        model.turn_head.bias.copy_(torch.tensor([-8.0, -8.0]))  # p(voice) ~ 3e-4
    rms = {}
    for label, gate in (("muted", GateConfig(start=1.0, keep=1.0, voice=0.5)), ("open", never)):
        sess = InteractionSession(model, tokenizer, seed=3)
        sess.state.gate = gate
        audio = np.concatenate([np.frombuffer(sess.step(_speech(k)).audio, dtype="<f4") for k in range(4)])
        rms[label] = float(np.sqrt(np.mean(audio**2)))
    assert rms["open"] > 1e-3  # random weights babble
    assert rms["muted"] < rms["open"] / 30


def test_deterministic_mode_with_temperature_is_bitwise_batch_invariant(tokenizer: Tokenizer) -> None:
    torch.manual_seed(0)
    model = InteractionModel(micro_config(deterministic=True, gate=GateConfig(start=0.5, keep=0.2, temperature=0.8)))
    engine = Engine(model.eval(), tokenizer, max_sessions=2)

    def inputs(i: int) -> list[MicroTurnInput]:
        rs = np.random.RandomState(i)
        return [
            MicroTurnInput.from_arrays((0.1 * rs.randn(TURN_SAMPLES)).astype(np.float32), session_id=f"s{i}", turn=k)
            for k in range(3)
        ]

    alone = {}
    for i in range(2):
        engine.open(f"s{i}", seed=i)
        alone[i] = [engine.step([x])[0] for x in inputs(i)]
        engine.close(f"s{i}")
    for i in range(2):
        engine.open(f"s{i}", seed=i)
    together: dict[int, list] = {i: [] for i in range(2)}
    for k in range(3):
        for o in engine.step([inputs(i)[k] for i in (1, 0)]):
            together[int(o.session_id[1:])].append(o)
    for i in range(2):
        for a, b in zip(alone[i], together[i], strict=True):
            assert (a.audio, a.text_tokens) == (b.audio, b.text_tokens)
    tokens = [t for i in range(2) for o in alone[i] for t in o.text_tokens]
    assert len(set(tokens) - {tokenizer.pad_id}) > 3  # really sampled, not all pad


def _strip_gate(ck_dir: Path) -> None:
    """Make a checkpoint look like one written before the gate existed."""
    cfg = json.loads((ck_dir / CONFIG).read_text())
    del cfg["gate"]
    (ck_dir / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    manifest = json.loads((ck_dir / MANIFEST).read_text())
    manifest["sha256"][CONFIG] = _sha256(ck_dir / CONFIG)
    (ck_dir / MANIFEST).write_text(json.dumps(manifest))


def test_old_checkpoint_without_gate_loads_as_argmax_and_write_gate_stores_thresholds(
    tmp_path: Path, tokenizer: Tokenizer
) -> None:
    torch.manual_seed(0)
    save_checkpoint(tmp_path, InteractionModel(micro_config()).eval(), tokenizer)
    _strip_gate(tmp_path)
    ck = load_checkpoint(tmp_path)
    assert ck.config.gate == GateConfig() and ck.config.gate.greedy
    sess = InteractionSession(ck.model, ck.tokenizer, seed=0, trace=True)
    for k in range(3):
        out = sess.step(_speech(k))
        assert out.text_tokens == sess.trace[-1].text_logits.argmax(-1).tolist()

    cfg = write_gate(tmp_path, GateConfig(start=0.25, keep=0.1))
    assert cfg.gate == GateConfig(start=0.25, keep=0.1)
    again = load_checkpoint(tmp_path)  # manifest still verifies
    assert again.config.gate == GateConfig(start=0.25, keep=0.1)
    assert json.loads((tmp_path / CONFIG).read_text())["gate"] == {
        "start": 0.25,
        "keep": 0.1,
        "temperature": 0.0,
        "voice": None,
    }
