"""The default checkpoint in checkpoints/tiny/ (issue: trained here, <= 50 MB, served by default)."""

from __future__ import annotations

import numpy as np

from infra.settings import DEFAULT_CHECKPOINT, Settings
from model.checkpoint import load_checkpoint, load_or_random
from model.session import InteractionSession


def test_shipped_checkpoint_loads_and_is_small() -> None:
    size = sum(f.stat().st_size for f in DEFAULT_CHECKPOINT.rglob("*") if f.is_file())
    assert size <= 50 * 1024 * 1024, f"checkpoints/tiny is {size / 2**20:.1f} MB"
    ck = load_checkpoint(DEFAULT_CHECKPOINT)
    assert ck.config.name == "tiny" and (DEFAULT_CHECKPOINT / "MODEL_CARD.md").exists()
    out = InteractionSession(ck.model, ck.tokenizer, seed=0).step_audio(np.zeros(3200, np.float32))
    assert np.isfinite(out.audio_array()).all()


def test_serve_defaults_to_the_shipped_checkpoint() -> None:
    settings = Settings()
    assert settings.checkpoint == DEFAULT_CHECKPOINT
    assert load_or_random(settings.checkpoint, settings.preset).trained


def test_shipped_checkpoint_is_calibrated_and_takes_turns() -> None:
    """A guard on what users meet first: the gate is calibrated, the turn head is trained, and on
    held-out dialogues (voices and phrasings training never saw) the model answers questions."""
    from model.data.scenarios import build_clip
    from model.eval.layout import SAMPLE_RATE
    from model.eval.runner import ClipInput, run_model_rows
    from model.eval.vad import speech_segments

    ck = load_checkpoint(DEFAULT_CHECKPOINT)
    gate = ck.config.gate
    assert gate.start is not None and gate.voice is not None  # calibrated, not argmax
    assert float(ck.model.turn_head.weight.abs().sum()) > 0  # trained, not zero-filled
    answered = 0
    for seed in range(8):
        clip = build_clip("heldout", "turn_taking", np.random.default_rng(1000 + seed))
        end = next(float(e["time"]) for e in clip.events if e["type"] == "user_end")  # type: ignore[arg-type]
        user = clip.audio[: round((end + 3.0) * SAMPLE_RATE), 1].copy()

        class _Clip:  # run_model_rows needs only the clip id
            clip_id = f"guard{seed}"

        out, _ = run_model_rows(ck.model, ck.tokenizer, ClipInput(_Clip(), user, ""), [None])[0]  # type: ignore[arg-type]
        onsets = [s for s, _ in speech_segments(out) if s >= end - 0.2]
        answered += bool(onsets) and onsets[0] <= end + 1.5
    # this checkpoint answers 5 of these 8 (p50 0.33 s); 4 leaves room for another CPU's rounding
    assert answered >= 4, f"answered {answered} of 8 held-out questions within 1.5 s"
