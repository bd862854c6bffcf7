from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.linear import TILE, set_batch_invariant
from model.moe import MoE, balance_loss, moe_dense_tiled, moe_gather, moe_grouped, moe_grouped_rows, route
from tests.model.conftest import micro_config


def dense_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Run every expert on every token, then keep only the routed ones by masking."""
    r = route(moe.router(x), moe.cfg.top_k)
    h = F.silu(torch.einsum("nd,edi->nei", x, moe.w_gate)) * torch.einsum("nd,edi->nei", x, moe.w_up)
    y = torch.einsum("nei,eid->ned", h, moe.w_down)  # (N, E, D)
    mask = torch.zeros(x.shape[0], moe.cfg.n_experts)
    mask.scatter_(1, r.idx, r.weight)
    out = (y * mask[..., None]).sum(1)
    assert moe.shared is not None
    return out + moe.shared(x)


def test_moe_equals_dense_masked_reference() -> None:
    torch.manual_seed(0)
    moe = MoE(micro_config(n_experts=6, top_k=3))
    x = torch.randn(37, moe.cfg.d_model)
    out, r = moe(x)
    torch.testing.assert_close(out, dense_reference(moe, x), atol=1e-5, rtol=1e-5)
    # every expert got traffic in this draw, so the grouped loop was exercised for all of them
    assert set(r.idx.flatten().tolist()) == set(range(6))


def test_ties_break_toward_lower_index_every_time() -> None:
    logits = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.5], [2.0, 2.0, 2.0, 2.0, 2.0]])
    first = route(logits, 2)
    assert first.idx.tolist() == [[1, 2], [0, 1]]
    for _ in range(20):
        r = route(logits[torch.tensor([1, 0])], 2)  # another batch composition
        assert r.idx.tolist() == [[0, 1], [1, 2]]
        assert torch.equal(r.weight, first.weight[torch.tensor([1, 0])])
    torch.testing.assert_close(first.weight.sum(-1), torch.ones(2))


def test_balance_loss_is_one_when_uniform_and_grows_when_collapsed() -> None:
    n, E = 64, 4
    uniform = route(torch.zeros(n, E), 1)
    # uniform probs but everything routed to expert 0 (ties): f = [1,0,0,0], P = 1/4 each
    assert torch.isclose(balance_loss(uniform, E), torch.tensor(1.0))
    spread = route(torch.eye(E).repeat(n // E, 1) * 10, 1)
    collapsed = route(torch.tensor([[10.0, 0, 0, 0]]).repeat(n, 1), 1)
    assert balance_loss(spread, E) < balance_loss(collapsed, E)
    valid = torch.zeros(n, dtype=torch.bool)
    assert balance_loss(spread, E, valid) == 0


@pytest.mark.parametrize("n", [1, 2, 16])
def test_decode_sized_batches_equal_dense_reference(n: int) -> None:
    """A decode step routes a handful of tokens: most experts get none, one may get several."""
    torch.manual_seed(1)
    moe = MoE(micro_config(n_experts=6, top_k=3))
    x = torch.randn(n, moe.cfg.d_model)
    torch.testing.assert_close(moe(x)[0], dense_reference(moe, x), atol=1e-5, rtol=1e-5)


def test_formulations_agree_and_rows_are_their_own() -> None:
    torch.manual_seed(2)
    moe = MoE(micro_config(n_experts=6, top_k=3))
    x = torch.randn(23, moe.cfg.d_model)
    idx = route(moe.router(x), 3).idx
    w = (moe.w_gate, moe.w_up, moe.w_down)
    grouped = moe_grouped(x, *w, idx)
    torch.testing.assert_close(moe_gather(x, *w, idx), grouped, atol=1e-5, rtol=1e-5)
    rows = moe_grouped_rows(x, *w, idx)
    torch.testing.assert_close(rows, grouped, atol=1e-5, rtol=1e-5)
    for i in (0, 7, 22):  # batch-invariant formulations: a row alone gets the same bits
        assert torch.equal(moe_grouped_rows(x[i : i + 1], *w, idx[i : i + 1]), rows[i : i + 1])
        assert torch.equal(moe_gather(x[i : i + 1], *w, idx[i : i + 1]), moe_gather(x, *w, idx)[i : i + 1])


def test_normal_mode_reads_nothing_back_to_the_host() -> None:
    """On the meta device every value is unknown, so a `.tolist()`, `.item()` or data-dependent
    branch anywhere in routing or experts would raise: the path has no host sync."""
    cfg = micro_config(n_experts=6, top_k=3)
    with torch.device("meta"):
        moe = MoE(cfg).to(torch.bfloat16)  # the meta kernel of torch._grouped_mm takes bf16
        x = torch.empty(5, cfg.d_model, dtype=torch.bfloat16)
    out, r = moe(x)
    assert out.shape == (5, cfg.d_model) and r.idx.shape == (5, 3)


def test_deterministic_formulations_give_every_row_the_same_bits() -> None:
    """Batch-invariant experts: a decode-sized batch runs every expert on its one tile of
    tokens (`moe_dense_tiled`), a larger one groups pairs into expert tiles (`moe_grouped_rows`).
    Both run each row through the same fixed-shape GEMM items, so a row gets the same bits
    alone, in a tile, in several tiles, and in either formulation (what batch invariance
    needs when a session's decode batch and prefill batch sizes differ)."""
    torch.manual_seed(3)
    moe = MoE(micro_config(n_experts=6, top_k=3))
    w = (moe.w_gate, moe.w_up, moe.w_down)
    x = torch.randn(3 * TILE + 5, moe.cfg.d_model)  # several tiles per expert
    idx = route(moe.router(x), 3).idx
    rows = moe_grouped_rows(x, *w, idx)
    torch.testing.assert_close(rows, moe_grouped(x, *w, idx), atol=1e-5, rtol=1e-5)
    for i in (0, 9, TILE, x.shape[0] - 1):
        alone = (x[i : i + 1], *w, idx[i : i + 1])
        assert torch.equal(moe_grouped_rows(*alone), rows[i : i + 1])
        assert torch.equal(moe_dense_tiled(*alone), rows[i : i + 1])
    decode = slice(2, 2 + TILE)
    assert torch.equal(moe_dense_tiled(x[decode], *w, idx[decode]), rows[decode])


def test_deterministic_decode_reads_nothing_back_to_the_host() -> None:
    """Deterministic mode at decode size (at most one tile of tokens) is sync-free too: exact
    routing and the dense tile on the meta device, where any host read would raise."""
    cfg = micro_config(n_experts=6, top_k=3)
    with torch.device("meta"):
        moe = MoE(cfg)
        x = torch.empty(TILE, cfg.d_model)
    set_batch_invariant(moe, True)
    out, r = moe(x)
    assert out.shape == (TILE, cfg.d_model) and r.idx.shape == (TILE, 3)
