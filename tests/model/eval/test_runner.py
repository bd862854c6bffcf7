"""The offline runner on a micro random-weights model: exact lengths, time alignment, valid json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from infra.messages import TURN_SAMPLES
from model.checkpoint import Checkpoint
from model.config import get_preset
from model.eval import synth
from model.eval.layout import SAMPLE_RATE, discover, read_audio_16k
from model.eval.runner import ClipInput, ModelResponder, run_offline
from model.interaction import InteractionModel
from model.session import InteractionSession
from model.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    cfg = dataclasses.replace(
        get_preset("tiny"), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, n_experts=4,
        expert_dim=64, shared_expert_dim=32, flow_dim=64, flow_depth=2, time_embed_dim=32, window=256,
    )  # fmt: skip
    torch.manual_seed(0)
    model = InteractionModel(cfg).eval()
    return Checkpoint(config=cfg, model=model, tokenizer=Tokenizer.default(cfg.vocab_size), trained=False)


def test_run_offline_writes_aligned_outputs(tmp_path: Path, checkpoint: Checkpoint) -> None:
    synth.turn_taking_clip(tmp_path, "a", speech=((0.1, 0.5),), duration=0.9)  # 4.5 turns: last chunk padded
    synth.turn_taking_clip(tmp_path, "b", speech=((0.1, 0.4),), duration=0.8, sample_rate=48000)
    lines: list[str] = []
    runs = run_offline(checkpoint, tmp_path, seed=3, log=lines.append)
    assert len(runs) == 2 and len(lines) == 2 and "smooth_turn_taking/a" in lines[0]

    for clip in discover(tmp_path):
        inp = sf.info(str(clip.input_wav))
        out = sf.info(str(clip.output_wav()))
        assert (out.frames, out.samplerate, out.channels) == (inp.frames, inp.samplerate, 1)
        audio, _, _ = read_audio_16k(clip.output_wav())
        assert np.all(audio[: int(0.19 * SAMPLE_RATE)] == 0)  # nothing is played before the first turn ends
        obj = json.loads(clip.output_json().read_text())
        assert set(obj) == {"text", "chunks"} and isinstance(obj["text"], str)
        duration = inp.frames / inp.samplerate
        for c in obj["chunks"]:
            assert isinstance(c["text"], str) and c["text"]
            s, e = c["timestamp"]
            assert 0.2 - 1e-6 <= s <= e <= duration + 1e-6
        assert obj["text"] == " ".join(c["text"] for c in obj["chunks"])


def test_turn_k_output_plays_during_turn_k_plus_1(tmp_path: Path, checkpoint: Checkpoint) -> None:
    synth.turn_taking_clip(tmp_path, "a", speech=((0.1, 0.5),), duration=0.8)
    (clip,) = discover(tmp_path)
    audio, _, _ = read_audio_16k(clip.input_wav)
    resp = ModelResponder.from_checkpoint(checkpoint, seed=5).respond(ClipInput(clip, audio))
    assert len(resp.audio) == len(audio)

    sess = InteractionSession(checkpoint.model, checkpoint.tokenizer, seed=5)
    n_turns = len(audio) // TURN_SAMPLES
    direct = [
        sess.step_audio(audio[k * TURN_SAMPLES : (k + 1) * TURN_SAMPLES]).audio_array() for k in range(n_turns - 1)
    ]
    assert np.all(resp.audio[:TURN_SAMPLES] == 0)
    for k, a in enumerate(direct):
        np.testing.assert_array_equal(resp.audio[(k + 1) * TURN_SAMPLES : (k + 2) * TURN_SAMPLES], a)
    assert resp.info["turns"] == n_turns and resp.info["voiced_words"] <= len(resp.words)
