"""Video input: frame -> 40x40 patches -> one d_model embedding per patch (DESIGN.md §5).

Each patch becomes one position of the interleaved sequence, so the encoder must be cheap,
per-patch and batch invariant: the embedding of a patch may not depend on which other
patches (or sessions) happen to share the batch, or the served model would diverge from
the trained one. That rules out BatchNorm in the hMLP stem; LayerNorm normalizes each
sub-patch on its own.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model.config import ModelConfig, hmlp_dims
from model.linear import Linear
from model.norm import LayerNorm

# Pixel normalization inside the module, so callers feed raw [0, 1] values and a checkpoint
# carries no separate preprocessing constants. Roughly centres and scales natural images.
_PIXEL_MEAN = 0.5
_PIXEL_STD = 0.25
_SUB = 5  # stage-1 sub-patch side: 40 = 5 * 2 * 2 * 2
_GRID = 8  # stage-1 grid side: 40 / 5


def frame_to_patches(frame: np.ndarray, cfg: ModelConfig) -> torch.Tensor:
    """Cut one RGB frame into patches, row-major (left to right, then top to bottom).

    Only uint8 (H, W, 3) is accepted, deliberately: a float frame is ambiguous (0-1 or 0-255?)
    and silently mis-scaled video would train or serve garbage without any error. The
    `video` name in errors is the input field the frame came from.

    Returns (n_patches, 3, patch_size, patch_size) float32 in [0, 1].
    """
    H, W, P = cfg.frame_height, cfg.frame_width, cfg.patch_size
    expected = f"expected a uint8 array of shape ({H}, {W}, 3) (height, width, RGB)"
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"video: {expected}, got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.shape != (H, W, 3):
        raise ValueError(f"video: {expected}, got {frame.dtype} array of shape {frame.shape}")
    x = torch.from_numpy(np.array(frame)).to(torch.float32) / 255.0  # (H, W, 3); copies read-only buffers
    x = x.permute(2, 0, 1)  # (3, H, W)
    x = x.reshape(3, H // P, P, W // P, P)  # (3, rows, P, cols, P)
    x = x.permute(1, 3, 0, 2, 4)  # (rows, cols, 3, P, P)
    return x.reshape(-1, 3, P, P).contiguous()  # (n_patches, 3, P, P)


def _merge_2x2(x: torch.Tensor) -> torch.Tensor:
    """Concatenate the features of each 2x2 neighbourhood: (N, S, S, C) -> (N, S/2, S/2, 4C).

    Done with reshape/permute rather than a strided conv so each output depends only on its
    own four inputs through a plain Linear, which keeps the arithmetic identical per row.
    """
    N, S, _, C = x.shape
    x = x.reshape(N, S // 2, 2, S // 2, 2, C)  # (N, S/2, 2, S/2, 2, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (N, S/2, S/2, 2, 2, C)
    return x.reshape(N, S // 2, S // 2, 4 * C)  # (N, S/2, S/2, 4C)


class HMLP(nn.Module):
    """Hierarchical MLP patch stem (Touvron et al., "hMLP stem"), LayerNorm instead of BatchNorm.

    40x40 patch -> 8x8 grid of 5x5 sub-patches -> 4x4 -> 2x2 -> 1, widths `hmlp_dims(cfg)`.
    Patches never interact: each embedding is a function of its own 40x40 pixels only, which
    is what lets a patch be one sequence position. Parameter count equals `_hmlp_params(cfg)`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c1, c2, c3, c4 = hmlp_dims(cfg)
        self.patch_size = cfg.patch_size
        eps = cfg.norm_eps
        self.proj1 = Linear(3 * _SUB * _SUB, c1)
        self.norm1 = LayerNorm(c1, eps=eps)
        self.proj2 = Linear(4 * c1, c2)
        self.norm2 = LayerNorm(c2, eps=eps)
        self.proj3 = Linear(4 * c2, c3)
        self.norm3 = LayerNorm(c3, eps=eps)
        self.proj4 = Linear(4 * c3, c4)
        self.norm4 = LayerNorm(c4, eps=eps)
        self.act = nn.GELU()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, 3, 40, 40) pixels in [0, 1] -> (N, d_model)."""
        P = self.patch_size
        if patches.ndim != 4 or tuple(patches.shape[1:]) != (3, P, P):
            raise ValueError(f"video: expected patches of shape (N, 3, {P}, {P}), got {tuple(patches.shape)}")
        N = patches.shape[0]
        x = (patches - _PIXEL_MEAN) / _PIXEL_STD  # (N, 3, 40, 40)
        x = x.reshape(N, 3, _GRID, _SUB, _GRID, _SUB)  # (N, 3, 8, 5, 8, 5)
        x = x.permute(0, 2, 4, 1, 3, 5)  # (N, 8, 8, 3, 5, 5)
        x = x.reshape(N, _GRID, _GRID, 3 * _SUB * _SUB)  # (N, 8, 8, 75)
        x = self.act(self.norm1(self.proj1(x)))  # (N, 8, 8, c1)
        x = self.act(self.norm2(self.proj2(_merge_2x2(x))))  # (N, 4, 4, c2)
        x = self.act(self.norm3(self.proj3(_merge_2x2(x))))  # (N, 2, 2, c3)
        x = self.norm4(self.proj4(_merge_2x2(x)))  # (N, 1, 1, d_model)
        return x.reshape(N, -1)  # (N, d_model)
