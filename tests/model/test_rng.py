"""Counter-based noise: every draw is what a freshly constructed Philox at its key and counter
gives, whatever was drawn before it, on any thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from model import rng

MASK = (1 << 64) - 1
# past 2**53 (and negative, as 2**64 - 7) numpy's Philox reads key words through float64, with a
# RuntimeWarning: they are here so the draws follow its reading too (calls draw seeds < 2**31)
SEEDS = [0, 3, 2**53 + 1, 2**63 + 5, -7]
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")


def fresh_normal(seed: int, turn: int, position: int, n: int, stream: int = rng.STREAM_FLOW) -> np.ndarray:
    bitgen = np.random.Philox(key=[seed & MASK, stream & MASK], counter=[0, 0, position, turn])
    return np.random.Generator(bitgen).standard_normal(n, dtype=np.float32)


def fresh_gumbel(seed: int, turn: int, position: int, n: int) -> np.ndarray:
    bitgen = np.random.Philox(key=[seed & MASK, rng.STREAM_GATE & MASK], counter=[0, 0, position, turn])
    u = np.random.Generator(bitgen).random(n, dtype=np.float32)
    return -np.log(-np.log(np.maximum(u, np.float32(1e-20))))


def test_draws_equal_a_fresh_generator_in_any_order() -> None:
    cases = [(s, t, p) for s in SEEDS for t in (0, 9, 10**6) for p in (0, 3)]
    for seed, turn, pos in cases + cases[::-1]:  # each key met again after others
        assert np.array_equal(rng.noise(seed, turn, pos, 161).numpy(), fresh_normal(seed, turn, pos, 161))
        assert np.array_equal(rng.gumbel(seed, turn, pos, 33).numpy(), fresh_gumbel(seed, turn, pos, 33))
    assert rng.noise(1, 2, 3, 4, dtype=torch.float64).dtype == torch.float64


def test_draws_stay_right_past_the_key_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rng, "_MAX_KEYS", 2)
    for seed in [*SEEDS, *SEEDS]:
        assert np.array_equal(rng.noise(seed, 1, 2, 16).numpy(), fresh_normal(seed, 1, 2, 16))


def test_threads_draw_independently() -> None:
    """Two threads drawing at once never read each other's generator state."""
    bad: list[tuple[int, int]] = []

    def draw(seed: int) -> None:
        for turn in range(300):
            if not np.array_equal(rng.noise(seed, turn, 1, 64).numpy(), fresh_normal(seed, turn, 1, 64)):
                bad.append((seed, turn))

    threads = [threading.Thread(target=draw, args=(s,)) for s in (11, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


def test_negative_turn_or_position_is_refused() -> None:
    with pytest.raises(ValueError, match="turn and position must be >= 0"):
        rng.noise(0, -1, 0, 4)
    with pytest.raises(ValueError, match="turn and position must be >= 0"):
        rng.gumbel(0, 0, -1, 4)
