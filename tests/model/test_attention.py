"""Batched attention: the decode path (two GEMMs) computes what SDPA computes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.attention import attend, gqa_mask


def test_decode_attention_equals_sdpa_with_window_sinks_and_padding() -> None:
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, hd, n = 5, 4, 2, 48, 300
    n_sinks, window = 4, 128
    q = torch.randn(B, H, 1, hd, generator=g)
    k = torch.randn(B, Hkv, n, hd, generator=g)
    v = torch.randn(B, Hkv, n, hd, generator=g)
    # sessions of different ages: positions 0..len-1 filled, the rest of the cache empty (-1)
    lengths = torch.tensor([1, 40, 129, 260, 300])
    kpos = torch.where(torch.arange(n) < lengths[:, None], torch.arange(n), -1)  # (B, n)
    qpos = (lengths - 1)[:, None]  # (B, 1): the newest position attends
    valid = torch.tensor([[True], [True], [True], [False], [True]])  # row 3: ragged padding
    mask = gqa_mask(qpos, kpos, valid, n_sinks, window, H // Hkv)
    y = attend(q, k, v, qpos, kpos, valid, n_sinks, window, mask)  # (B, H, 1, hd)
    ref = F.scaled_dot_product_attention(q.reshape(B, Hkv, H // Hkv, hd), k, v, attn_mask=mask).view(B, H, 1, hd)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    # a query beyond the window ignores the keys between the sinks and the window
    b = 3  # age 260: sees keys 0..3 and 132..259
    seen = torch.cat([torch.arange(4), torch.arange(132, 260)])
    qb = q[b, :2, 0]  # (2, hd) the query heads of kv head 0
    p = (qb @ k[b, 0, seen].T / hd**0.5).softmax(dim=-1)
    y_valid = attend(q, k, v, qpos, kpos, torch.ones_like(valid), n_sinks, window)
    torch.testing.assert_close(y_valid[b, :2, 0], p @ v[b, 0, seen], rtol=1e-5, atol=1e-6)
    assert torch.isfinite(y).all()  # the padding row attends to key 0 only, never to nothing
