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
# The key's second half separates independent uses of the same (seed, turn, position).
STREAM_FLOW = 1
STREAM_GATE = 2  # token sampling of the speak gate (model/gate.py)


def noise(
    seed: int, turn: int, position: int, n: int, *, stream: int = STREAM_FLOW, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normal noise of shape (n,) keyed on (seed, turn, position, stream)."""
    if turn < 0 or position < 0:
        raise ValueError(f"turn and position must be >= 0, got turn={turn} position={position}")
    bitgen = np.random.Philox(key=[seed & _MASK64, stream & _MASK64], counter=[0, 0, position, turn])
    out = np.random.Generator(bitgen).standard_normal(n, dtype=np.float32)
    return torch.from_numpy(out).to(dtype)


def gumbel(seed: int, turn: int, position: int, n: int, *, stream: int = STREAM_GATE) -> torch.Tensor:
    """Standard Gumbel noise of shape (n,) keyed on (seed, turn, position, stream), float32:
    argmax(logits / T + gumbel) is a sample of softmax(logits / T)."""
    if turn < 0 or position < 0:
        raise ValueError(f"turn and position must be >= 0, got turn={turn} position={position}")
    bitgen = np.random.Philox(key=[seed & _MASK64, stream & _MASK64], counter=[0, 0, position, turn])
    u = np.random.Generator(bitgen).random(n, dtype=np.float32)
    # u in [0, 1): keep it off 0 so -log(-log(u)) stays finite
    return torch.from_numpy(-np.log(-np.log(np.maximum(u, np.float32(1e-20)))))
