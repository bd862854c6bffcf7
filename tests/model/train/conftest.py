"""Tiny synthetic dialogue clips in the model/data layout, and a fast TrainConfig."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.train.trainer import TrainConfig

SR = 16000
QA_EVENTS: list[dict[str, object]] = [
    {"type": "delegate", "time": 2.6, "text": "time"},
    {"type": "background_result", "time": 2.9, "text": "12:00"},
]


def write_clip(
    root: Path,
    name: str,
    seed: int,
    *,
    seconds: float = 6.0,
    events: list[dict[str, object]] | None = None,
    scenario: str = "qa",
) -> Path:
    """A dialogue: user 'tone-speech' at 1-2.4 s, assistant reply at 3-4.8 s, with alignments
    and events (by default a delegation and its background result)."""
    rs = np.random.RandomState(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    user, asst = np.zeros(n, np.float32), np.zeros(n, np.float32)
    f_u, f_a = 180 + 20 * seed, 260 + 15 * seed
    user[SR : int(2.4 * SR)] = 0.3 * np.sin(2 * np.pi * f_u * t[SR : int(2.4 * SR)])
    asst[int(3.0 * SR) : int(4.8 * SR)] = 0.3 * np.sin(2 * np.pi * f_a * t[int(3.0 * SR) : int(4.8 * SR)])
    user += (0.002 * rs.randn(n)).astype(np.float32)
    wav = root / f"{name}.wav"
    sf.write(wav, np.stack([asst, user], 1), SR)
    words = [
        ["what", [1.0, 1.6], "SPEAKER_USER"],
        ["time", [1.7, 2.4], "SPEAKER_USER"],
        ["it", [3.0, 3.4], "SPEAKER_MAIN"],
        ["is", [3.5, 3.9], "SPEAKER_MAIN"],
        ["noon", [4.0, 4.8], "SPEAKER_MAIN"],
    ]
    (root / f"{name}.json").write_text(json.dumps({"alignments": words}))
    evs = QA_EVENTS if events is None else events
    (root / f"{name}.events.json").write_text(json.dumps({"scenario": scenario, "events": evs}))
    return wav


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "train"
    root.mkdir(parents=True)
    for i in range(3):
        write_clip(root, f"clip{i}", i)
    return tmp_path / "data"


@pytest.fixture
def val_dir(tmp_path: Path) -> Path:
    root = tmp_path / "val"
    root.mkdir()
    for i in range(2):
        write_clip(root, f"val{i}", 10 + i)
    return root


def tcfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = dict(steps=40, batch_size=2, crop_turns=20, lr=3e-3, warmup=5, log_every=1, ckpt_every=10)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]
