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
