"""Batch-invariant paths on CPU that hold by construction, whatever the math library does.

No BLAS or reduction kernel promises that a row's result is independent of the other rows in
the call: a GEMM may round a row by its place in the tile, a batched GEMM may group items, a
reduction may split by thread. The fixtures below replace them with a library that is
deterministic per call but rounds every row by the call's shape and the row's place in it.
Batch-invariant modules must still give bitwise the same row alone or batched: they may only
rely on the same call giving the same bits, which holds on every machine.

Covered: RMSNorm and LayerNorm (`row_sum`), the vocoder's per-item GEMMs, attention (one
session at a time) and MoE routing (model/exact.py softmax). Not covered: the CPU
Linear/MoE path (one batched GEMM over a stride-0 weight, model/linear.py), whose invariance
rests on the BLAS treating batch items alike; it fails under these fixtures, and on some
shapes it fails on real CPUs too (see linear.py and tests/model/_blas.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from model.attention import (
    Attention,
    CacheContext,
    KVCache,
    SessionPlan,
    attend,
    attend_per_session,
    rope_angles,
)
from model.config import ModelConfig
from model.exact import exp_nonpositive
from model.exact import softmax as exact_softmax
from model.linear import Linear, set_batch_invariant
from model.moe import route
from model.norm import LayerNorm, RMSNorm
from model.vocoder import mel_to_magnitude

SKEW = 2.0**-20  # relative: moves every fp32 result by several ulps


def _skew_rows(out: torch.Tensor) -> torch.Tensor:
    """Row r of an R-row result scaled by 1 + SKEW * (R - 1 + r): exact when the call has 1 row."""
    if out.dim() < 2 or out.numel() == 0:
        return out
    rows = out.numel() // out.shape[-1]
    factor = 1 + SKEW * (rows - 1 + torch.arange(rows, dtype=out.dtype))
    return (out.reshape(rows, -1) * factor[:, None]).reshape(out.shape)


def _skew_elements(out: torch.Tensor) -> torch.Tensor:
    """Reduction results scaled by their count and index: exact when the call reduces one row."""
    if out.numel() <= 1:
        return out
    n = out.numel()
    factor = 1 + SKEW * (n - 1 + torch.arange(n, dtype=out.dtype))
    return (out.reshape(-1) * factor).reshape(out.shape)


def _patch(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, skew: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    real = getattr(owner, name)

    def skewed(*args: object, **kwargs: object) -> torch.Tensor:
        return skew(real(*args, **kwargs))

    monkeypatch.setattr(owner, name, skewed)


@pytest.fixture
def row_dependent_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("mm", "bmm", "baddbmm", "addmm", "matmul"):
        _patch(monkeypatch, torch, name, _skew_rows)
    _patch(monkeypatch, torch.Tensor, "__matmul__", _skew_rows)
    _patch(monkeypatch, F, "linear", _skew_rows)


@pytest.fixture
def row_dependent_reductions(monkeypatch: pytest.MonkeyPatch) -> None:
    for owner in (torch, torch.Tensor):
        for name in ("sum", "mean"):
            _patch(monkeypatch, owner, name, _skew_elements)
    _patch(monkeypatch, F, "layer_norm", _skew_rows)


@pytest.fixture
def row_dependent_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """An attention kernel that blocks query rows by the call's shape, as SDPA's CPU kernel does."""
    _patch(monkeypatch, F, "scaled_dot_product_attention", _skew_rows)


@pytest.fixture
def row_dependent_softmax(monkeypatch: pytest.MonkeyPatch) -> None:
    """A softmax that rounds rows by their place, and an exp that rounds each element by its
    index (as SIMD body and scalar tail do)."""
    for owner in (torch, torch.Tensor, F):
        _patch(monkeypatch, owner, "softmax", _skew_rows)
    for owner in (torch, torch.Tensor):
        _patch(monkeypatch, owner, "exp", _skew_elements)


@pytest.fixture
def shape_dependent_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """GEMMs and softmax that round by their reduction length (as K-blocking and SIMD tails do):
    a session's attention must not see the batch's number of cache entries."""

    def by_length(name: str, owner: object, length: Callable[..., int]) -> None:
        real = getattr(owner, name)

        def skewed(*args: torch.Tensor, **kwargs: object) -> torch.Tensor:
            return real(*args, **kwargs) * (1 + SKEW * length(*args))

        monkeypatch.setattr(owner, name, skewed)

    by_length("bmm", torch, lambda a, b: a.shape[-1] + b.shape[-1])
    by_length("baddbmm", torch, lambda c, a, b: a.shape[-1] + b.shape[-1])
    by_length("softmax", torch.Tensor, lambda x, *_: x.shape[-1])


def _assert_rows_alone_equal_batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> None:
    batched = fn(x)
    for i in range(x.shape[0]):
        assert torch.equal(fn(x[i : i + 1]), batched[i : i + 1]), f"row {i} alone differs from batched"


@pytest.mark.usefixtures("row_dependent_blas")
def test_fixture_really_makes_a_plain_gemm_batch_dependent() -> None:
    torch.manual_seed(0)
    layer = Linear(48, 40)
    x = torch.randn(5, 48)
    assert not torch.equal(layer(x)[3:4], layer(x[3:4])), "the skewed BLAS changed nothing: test is vacuous"


@pytest.mark.usefixtures("row_dependent_reductions")
@pytest.mark.parametrize("norm", [RMSNorm(70), LayerNorm(70)], ids=["rms", "layer"])
@torch.no_grad()
def test_norm_rows(norm: torch.nn.Module) -> None:
    torch.manual_seed(0)
    torch.nn.init.normal_(norm.weight)  # type: ignore[arg-type]
    set_batch_invariant(norm, True)
    _assert_rows_alone_equal_batched(norm, 3 * torch.randn(9, 70))


@pytest.mark.usefixtures("row_dependent_blas")
def test_vocoder_items() -> None:
    cfg = ModelConfig()
    g = torch.Generator().manual_seed(0)
    logmel = cfg.log_mel_min + (cfg.log_mel_max - cfg.log_mel_min) * torch.rand(5, 4, cfg.n_mels, generator=g)
    _assert_rows_alone_equal_batched(lambda m: mel_to_magnitude(m, cfg), logmel)


@torch.no_grad()
def test_batch_invariant_paths_match_the_plain_ones() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 7, 50)
    for module in (Linear(50, 37), RMSNorm(50), LayerNorm(50)):
        plain = module(x)
        set_batch_invariant(module, True)
        torch.testing.assert_close(module(x), plain, atol=1e-5, rtol=1e-5)


# Attention: sessions with different chunk lengths, keys in ring order with empty entries,
# a small window and sinks so the mask matters.
H, HKV, HD, CACHE, SINKS, WINDOW = 4, 2, 16, 24, 2, 7
Session = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # q, k, v, qpos, kpos
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # ... valid


def _session(seed: int, n_queries: int, n_keys: int) -> Session:
    g = torch.Generator().manual_seed(seed)
    start = 5 * seed  # later sessions are further into their call
    pos = start + torch.arange(n_keys)
    kpos = torch.full((CACHE,), -1, dtype=torch.long)
    kpos[torch.randperm(CACHE, generator=g)[:n_keys]] = pos
    q = torch.randn(H, n_queries, HD, generator=g)
    k, v = torch.randn(2, HKV, CACHE, HD, generator=g)
    return q, k, v, pos[-n_queries:], kpos


def _batch(sessions: list[Session], pad_to: int) -> Batch:
    """Stack sessions into one ragged batch padded to `pad_to` queries (padding = noise)."""
    B = len(sessions)
    q = torch.randn(B, H, pad_to, HD, generator=torch.Generator().manual_seed(99))
    qpos = torch.zeros(B, pad_to, dtype=torch.long)
    valid = torch.zeros(B, pad_to, dtype=torch.bool)
    for b, (qb, _, _, pb, _) in enumerate(sessions):
        n = qb.shape[1]
        q[b, :, :n], qpos[b, :n], valid[b, :n] = qb, pb, True
    k = torch.stack([s[1] for s in sessions])
    v = torch.stack([s[2] for s in sessions])
    kpos = torch.stack([s[4] for s in sessions])
    return q, k, v, qpos, kpos, valid


SESSIONS = [_session(1, 5, 9), _session(2, 2, 24), _session(3, 7, 16)]


def _alone_and_batched(fn: Callable[..., torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(alone, batched) real rows of each session: alone unpadded and padded by 3, batched
    padded to 9 (its longest chunk is 7)."""
    batched = fn(*_batch(SESSIONS, 9), SINKS, WINDOW)
    pairs = []
    for b, s in enumerate(SESSIONS):
        n = s[0].shape[1]
        for pad in (0, 3):
            alone = fn(*_batch([s], n + pad), SINKS, WINDOW)
            pairs.append((alone[0, :, :n], batched[b, :, :n]))
    return pairs


@pytest.mark.usefixtures("row_dependent_attention", "row_dependent_blas", "row_dependent_softmax")
@torch.no_grad()
def test_attention_rows_alone_equal_batched() -> None:
    for alone, batched in _alone_and_batched(attend_per_session):
        assert torch.equal(alone, batched)


@pytest.mark.usefixtures("row_dependent_attention")
@torch.no_grad()
def test_fixture_really_makes_batched_sdpa_batch_dependent() -> None:
    pairs = _alone_and_batched(attend)
    assert not all(torch.equal(a, b) for a, b in pairs), "the skewed SDPA changed nothing: test is vacuous"


@torch.no_grad()
def test_per_session_attention_matches_batched_sdpa() -> None:
    """Same mask semantics, same math as the fast path: sinks, window, empty cache entries."""
    args = _batch(SESSIONS, 9)
    valid = args[-1]
    fast, exact = attend(*args, SINKS, WINDOW), attend_per_session(*args, SINKS, WINDOW)
    mask = valid[:, None, :, None].expand_as(fast)
    torch.testing.assert_close(exact[mask], fast[mask], atol=1e-6, rtol=1e-6)
    assert not exact[~mask].any(), "padding rows are zero"


def _in_cache(sessions: list[Session], slots: list[int], n_slots: int, kv_len: int, pad_to: int) -> tuple:
    """`_batch` with the keys in a KV-cache layer instead: session i in slot `slots[i]` of an
    (n_slots, HKV, kv_len + 1, HD) layer whose entries past CACHE are empty; the batch reads
    the first `kv_len` entries (`CacheContext.kpos`)."""
    q, _, _, qpos, _, valid = _batch(sessions, pad_to)
    g = torch.Generator().manual_seed(7)
    k, v = torch.randn(2, n_slots, HKV, kv_len + 1, HD, generator=g)  # other slots hold noise
    kpos = torch.full((len(sessions), kv_len), -1, dtype=torch.long)
    for i, (slot, s) in enumerate(zip(slots, sessions, strict=True)):
        k[slot, :, :CACHE], v[slot, :, :CACHE], kpos[i, :CACHE] = s[1], s[2], s[4]
    return q, k, v, qpos, kpos, valid


@pytest.mark.parametrize("lengths", ["read back", "from the host"])
@pytest.mark.usefixtures(
    "row_dependent_attention", "row_dependent_blas", "row_dependent_softmax", "shape_dependent_kernels"
)
@torch.no_grad()
def test_cached_attention_rows_alone_equal_batched(lengths: str) -> None:
    """The serving path: keys read in place from each session's cache slot. Alone, a session
    sits in another slot of a smaller cache, the batch reads fewer entries (its kv_len) and
    pads queries differently; its rows must not change, even if kernels round by the number of
    keys they reduce over."""
    rep = H // HKV

    def run(sessions: list[Session], slots: list[int], n_slots: int, kv_len: int, pad_to: int) -> torch.Tensor:
        q, k, v, qpos, kpos, valid = _in_cache(sessions, slots, n_slots, kv_len, pad_to)
        plan = None
        if lengths == "from the host":  # each session's own: its chunk and its cache entries
            q_lens, kv_lens = [s[0].shape[1] for s in sessions], [CACHE] * len(sessions)
            plan = SessionPlan.build(qpos, kpos, valid, SINKS, WINDOW, rep, q_lens=q_lens, kv_lens=kv_lens)
        return attend_per_session(q, k, v, qpos, kpos, valid, SINKS, WINDOW, plan=plan, cache_rows=slots)

    batched = run(SESSIONS, [3, 0, 4], 5, CACHE + 16, 9)
    for b, s in enumerate(SESSIONS):
        n = s[0].shape[1]
        alone = run([s], [1], 2, CACHE, n + 2)
        assert torch.equal(alone[0, :, :n], batched[b, :, :n]), f"session {b}"
        assert not batched[b, :, n:].any(), "padding rows are zero"


@torch.no_grad()
def test_cached_attention_matches_batched_sdpa_and_reads_nothing_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the lengths from the host, batch-invariant attention reads no tensor back (no host
    sync, no data-dependent shape), and computes what the fast path computes."""
    q, k, v, qpos, kpos, valid = _in_cache(SESSIONS, [3, 0, 4], 5, CACHE + 16, 9)
    fast = attend(q, k[[3, 0, 4], :, : CACHE + 16], v[[3, 0, 4], :, : CACHE + 16], qpos, kpos, valid, SINKS, WINDOW)
    for name in ("tolist", "item", "nonzero", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, lambda *a, **kw: pytest.fail("host read"))
    q_lens = [s[0].shape[1] for s in SESSIONS]
    plan = SessionPlan.build(qpos, kpos, valid, SINKS, WINDOW, H // HKV, q_lens=q_lens, kv_lens=[CACHE] * 3)
    exact = attend_per_session(q, k, v, qpos, kpos, valid, SINKS, WINDOW, plan=plan, cache_rows=[3, 0, 4])
    monkeypatch.undo()
    mask = valid[:, None, :, None].expand_as(fast)
    torch.testing.assert_close(exact[mask], fast[mask], atol=1e-6, rtol=1e-6)


# Routing: a token's experts and weights from its own logits alone.
def _routing(logits: torch.Tensor, exact: bool) -> torch.Tensor:
    r = route(logits, 2, exact=exact)
    return torch.cat([r.probs, r.weight, r.idx.float()], dim=-1)


@pytest.mark.usefixtures("row_dependent_softmax", "row_dependent_reductions")
@torch.no_grad()
def test_exact_routing_rows_alone_equal_batched() -> None:
    logits = 3 * torch.randn(9, 8, generator=torch.Generator().manual_seed(0))
    _assert_rows_alone_equal_batched(lambda x: _routing(x, exact=True), logits)
    with pytest.raises(AssertionError, match="alone differs"):  # the double is not vacuous
        _assert_rows_alone_equal_batched(lambda x: _routing(x, exact=False), logits)


@torch.no_grad()
def test_exact_exp_and_softmax_match_torch() -> None:
    g = torch.Generator().manual_seed(0)
    x = -90 * torch.rand(4099, generator=g)  # odd length: a SIMD tail of every width
    e = exp_nonpositive(x)
    torch.testing.assert_close(e, torch.exp(x), atol=2e-35, rtol=2.5e-7)  # flushed below e**-80
    assert all(torch.equal(exp_nonpositive(x[i : i + 1]), e[i : i + 1]) for i in range(0, 4099, 7))
    logits = 4 * torch.randn(300, 8, generator=g)
    torch.testing.assert_close(exact_softmax(logits), logits.softmax(-1), atol=3e-7, rtol=0)
    plain, exact = route(logits, 2), route(logits, 2, exact=True)
    assert torch.equal(exact.idx, plain.idx)
    torch.testing.assert_close(exact.weight, plain.weight, atol=3e-7, rtol=0)


@pytest.mark.parametrize("cached", [False, True], ids=["teacher-forced", "ring-cache"])
@torch.no_grad()
def test_attention_module_modes_agree(cached: bool) -> None:
    """The module in both modes on a ragged batch, teacher-forced and through the ring cache."""
    cfg = ModelConfig(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, window=6, n_sinks=2)
    torch.manual_seed(0)
    attn = Attention(cfg, layer=0)
    lengths = torch.tensor([5, 2, 7])
    pos = 3 + torch.arange(7).repeat(3, 1)
    valid = torch.arange(7)[None] < lengths[:, None]
    x = torch.randn(3, 7, 32)
    rope = rope_angles(pos, cfg.head_dim, cfg.rope_theta)
    outs = []
    for batch_invariant in (False, True):
        attn.batch_invariant = batch_invariant
        ctx = None
        if cached:
            cache = KVCache.allocate(cfg, slots=4)
            ctx = CacheContext.begin(cache, torch.tensor([2, 0, 3]), pos, valid)
        outs.append(attn(x, rope, pos, valid, ctx)[valid])
    torch.testing.assert_close(outs[1], outs[0], atol=1e-6, rtol=1e-5)
