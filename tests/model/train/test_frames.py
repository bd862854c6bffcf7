"""Camera frames reach the model in training exactly as in serving: `<id>.frames.npz` ->
`Clip.frames` -> `frame_to_patches` at each micro-turn's VIDEO positions, bit for bit what a
session builds for a `MicroTurnInput` carrying the same frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from infra.messages import FRAME_SHAPE, TURN_SAMPLES, MicroTurnInput
from model.config import VIDEO, get_preset
from model.session import SessionState
from model.tokenizer import Tokenizer
from model.train.dataset import DatasetError, build_example, load_clip
from tests.model.train.conftest import write_clip

CFG = get_preset("tiny")
N_PATCHES = (CFG.frame_height // CFG.patch_size) * (CFG.frame_width // CFG.patch_size)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.default(CFG.vocab_size)


def _frames(n: int, seed: int = 0) -> np.ndarray:
    """Distinct frames: random pixels plus the turn index in a corner, so a shifted index shows."""
    frames = np.random.default_rng(seed).integers(0, 256, (n, *FRAME_SHAPE), dtype=np.uint8)
    frames[:, 0, 0, 0] = np.arange(n)
    return frames


def _video_patches(positions: torch.Tensor, stream: torch.Tensor, video: torch.Tensor) -> list[torch.Tensor]:
    """The patches of each IN_k's VIDEO run, in order."""
    runs: list[list[int]] = []
    prev = False
    for s, v in zip(stream.tolist(), video.tolist(), strict=True):
        is_video = s == VIDEO
        if is_video and not prev:
            runs.append([])
        if is_video:
            runs[-1].append(v)
        prev = is_video
    return [positions[torch.tensor(r)] for r in runs]


def test_training_patches_equal_serving_patches(tmp_path: Path, tok: Tokenizer) -> None:
    wav = write_clip(tmp_path, "vid", 0, seconds=6.0)
    frames = _frames(30)
    np.savez_compressed(tmp_path / "vid.frames.npz", frames=frames)
    clip = load_clip(wav)
    assert clip.frames is not None and np.array_equal(clip.frames, frames)

    start, n = 3, 6
    ex = build_example(CFG, tok, clip, max_turns=n, start=start)
    pos = ex.positions
    runs = _video_patches(pos.patches, pos.stream[0], pos.video[0])
    assert len(runs) == n and all(r.shape[0] == N_PATCHES for r in runs)

    state = SessionState.new(CFG, tok, "s", seed=0, slot=0)
    silence = np.zeros(TURN_SAMPLES, np.float32)
    for k in range(n):
        served = state.prepare(MicroTurnInput.from_arrays(silence, video=frames[start + k], turn=start + k), tok)
        assert served.patches.shape[0] == N_PATCHES
        assert torch.equal(runs[k], served.patches), f"turn {start + k}"
        assert runs[k].dtype == served.patches.dtype
    # each turn's patches are that turn's frame, not a neighbour's
    assert not torch.equal(runs[0], runs[1])


def test_video_positions_follow_the_audio_of_each_turn(tmp_path: Path, tok: Tokenizer) -> None:
    wav = write_clip(tmp_path, "vid", 1, seconds=4.0)
    np.savez_compressed(tmp_path / "vid.frames.npz", frames=_frames(20, 1))
    ex = build_example(CFG, tok, load_clip(wav), max_turns=3)
    stream = ex.positions.stream[0].tolist()
    P = CFG.positions_per_turn
    per_turn = len(stream) // 3
    for k in range(3):
        turn = stream[k * per_turn : (k + 1) * per_turn]
        assert turn[P : P + N_PATCHES] == [VIDEO] * N_PATCHES
    # no targets on video positions
    video = ex.positions.stream[0] == VIDEO
    assert (ex.text_target[0][video] == -100).all() and (ex.caption_target[0][video] == -100).all()


def test_clips_without_frames_stay_audio_only(tmp_path: Path, tok: Tokenizer) -> None:
    wav = write_clip(tmp_path, "plain", 2, seconds=4.0)
    clip = load_clip(wav)
    assert clip.frames is None
    ex = build_example(CFG, tok, clip, max_turns=5)
    assert not (ex.positions.stream == VIDEO).any()
    assert ex.positions.patches.shape[0] == 0


def test_frames_beyond_the_file_are_absent_not_wrong(tmp_path: Path, tok: Tokenizer) -> None:
    wav = write_clip(tmp_path, "short", 3, seconds=4.0)
    np.savez_compressed(tmp_path / "short.frames.npz", frames=_frames(2, 3))
    ex = build_example(CFG, tok, load_clip(wav), max_turns=4)
    assert int((ex.positions.stream == VIDEO).sum()) == 2 * N_PATCHES


def test_bad_frames_file_names_the_file(tmp_path: Path) -> None:
    wav = write_clip(tmp_path, "bad", 4, seconds=4.0)
    np.savez_compressed(tmp_path / "bad.frames.npz", frames=np.zeros((3, 120, 160, 3), np.float32))
    with pytest.raises(DatasetError, match=r"bad\.frames\.npz"):
        load_clip(wav)
