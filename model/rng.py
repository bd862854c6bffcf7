"""Counter-based noise for the flow head.

Noise is a pure function of (session seed, micro-turn, position): numpy's Philox is a
counter-based generator, so we key it on the seed and set its counter from the turn and
position. A session's samples never depend on which other sessions share its batch, on
the order they were stepped in, or on any global RNG state.
"""

from __future__ import annotations

import numpy as np
import torch

_MASK64 = (1 << 64) - 1
# Separate key halves for independent uses of the same (seed, turn, position).
STREAM_FLOW = 1
STREAM_TEXT = 2


def noise(
    seed: int, turn: int, position: int, n: int, *, stream: int = STREAM_FLOW, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normal noise of shape (n,) keyed on (seed, turn, position, stream)."""
    if turn < 0 or position < 0:
        raise ValueError(f"turn and position must be >= 0, got turn={turn} position={position}")
    bitgen = np.random.Philox(key=[seed & _MASK64, stream & _MASK64], counter=[0, 0, position, turn])
    out = np.random.Generator(bitgen).standard_normal(n, dtype=np.float32)
    return torch.from_numpy(out).to(dtype)


def uniform(seed: int, turn: int, position: int, *, stream: int = STREAM_TEXT) -> float:
    """One uniform draw in [0, 1) keyed like `noise` (for temperature sampling of text)."""
    bitgen = np.random.Philox(key=[seed & _MASK64, stream & _MASK64], counter=[0, 0, position, turn])
    return float(np.random.Generator(bitgen).random())
