"""Grouped-query attention with RoPE, a sliding window with attention sinks, and a ring KV cache.

Keys are cached already rotated at their absolute sequence position, so streaming a
session chunk by chunk computes exactly what one teacher-forced pass over the whole
interleaved sequence computes: a query at position i sees the first `n_sinks` positions
and the last `window` positions up to and including i.

The cache is preallocated for a pool of slots: `(layers, slots, kv_heads, cache_len,
head_dim)`. Sink positions live in the first `n_sinks` entries forever; every later position
p lives at `n_sinks + (p - n_sinks) % ring_len`. The ring holds the window plus one chunk of
slack, so a chunk's keys are written first and attention then reads the cache alone, in
place (no concatenation, and no copy at all when the batch's slots are contiguous). Memory
per session is bounded, so a call never ends at a context limit.

No host sync and no data-dependent shape: every chunk token is written with one index_put;
a token that must not land (ragged padding, or an old position of a chunk longer than the
ring) goes to one extra trash entry at the end of each slot, whose position stays -1 so it is
never attended. The caller says which rows and how many entries to read from host-side
knowledge (`CacheContext.begin`: `rows`, `kv_len`), so nothing reads tensors back. The mask
is built once per forward and shared by every layer.

Batch-invariant mode (deterministic serving) attends session by session instead of over the
whole batch at once. An attention kernel blocks query rows by the query length it is given
(PyTorch's CPU flash kernel picks 32, 64 or 256 rows from it), and in a ragged prefill that
length is the longest chunk of the batch, so a session's rows could round differently alone
and batched. A session's calls get only its real query rows (ragged padding is a right-padded
prefix) and its own leading cache entries, as many as its own `kv_lens` entry says, never the
batch's `kv_len`: a kernel may block its reduction by the number of keys, so reading the
batch's extra empty entries, even as exact zeros after the softmax, could change a
session's bits (tests/model/test_batch_invariant.py models such kernels). Its queries are
copied into a fresh buffer, or at decode (one query per session) read in place; its keys
are read in place from its cache slot: either way shapes, strides, 64-byte alignment and
values are the same whatever else is in the batch and however it is padded. The only
assumption is that a library call given exactly the same inputs returns the same bits, the
one the vocoder's per-item GEMMs make (model/linear.py); no kernel's blocking or threading
matters. Each session's lengths are host ints (`SessionPlan`, built once per forward): from
the caller (`CacheContext.begin`: `q_lens`, `kv_lens`), then nothing is read back, or else
read back once per forward; no `nonzero`, no data-dependent selection per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.linear import Linear

# (slot, entry, kept) of every chunk token, each (B, T): where a forward stores it
Where = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class KVCache:
    """Static per-slot KV storage; `pos` holds each entry's absolute position (-1 = empty)."""

    k: torch.Tensor  # (L, S, Hkv, C, hd)
    v: torch.Tensor  # (L, S, Hkv, C, hd)
    pos: torch.Tensor  # (S, C) int64
    n_sinks: int
    ring_len: int

    @classmethod
    def allocate(
        cls, cfg: ModelConfig, slots: int, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> KVCache:
        shape = (cfg.n_layers, slots, cfg.n_kv_heads, cfg.cache_len + 1, cfg.head_dim)  # + the trash entry
        return cls(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            pos=torch.full((slots, cfg.cache_len + 1), -1, device=device, dtype=torch.long),
            n_sinks=cfg.n_sinks,
            ring_len=cfg.ring_len,
        )

    @property
    def cache_len(self) -> int:
        """Entries a query may attend to (the trash entry after them never)."""
        return self.pos.shape[1] - 1

    def bytes_per_slot(self) -> int:
        return 2 * self.k[:, 0].numel() * self.k.element_size() + self.pos[0].numel() * self.pos.element_size()

    def move(self, src: int, dst: int) -> None:
        """Move a session's entries to another slot (keeps the active slots packed)."""
        self.k[:, dst] = self.k[:, src]
        self.v[:, dst] = self.v[:, src]
        self.pos[dst] = self.pos[src]
        self.reset(src)

    def reset(self, slot: int) -> None:
        """Forget a slot entirely: nothing of its previous session stays visible."""
        self.k[:, slot].zero_()
        self.v[:, slot].zero_()
        self.pos[slot].fill_(-1)

    def ring_index(self, pos: torch.Tensor) -> torch.Tensor:
        return torch.where(pos < self.n_sinks, pos, self.n_sinks + (pos - self.n_sinks) % self.ring_len)

    def rows(self, slots: list[int]) -> slice | list[int]:
        """Index of the batch's slots (host ints): a slice (a view, no copy) when contiguous."""
        if slots == list(range(slots[0], slots[0] + len(slots))):
            return slice(slots[0], slots[0] + len(slots))
        return slots

    def begin(self, slots: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> Where:
        """Record a chunk's positions before its layers run; returns where its tokens go.

        A chunk longer than the ring keeps only its newest positions, so no two writes of one
        chunk land on the same entry; the others (and padding) go to the trash entry.
        """
        newest = torch.where(valid, pos, -1).amax(dim=1, keepdim=True)  # (B, 1)
        keep = valid & ((pos < self.n_sinks) | (pos > newest - self.ring_len))
        cols = torch.where(keep, self.ring_index(pos), self.cache_len)  # (B, T)
        rows = slots[:, None].expand_as(cols)
        scatter_(self.pos, rows, cols, torch.where(keep, pos, -1))
        return rows, cols, keep

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, where: Where) -> None:
        """k, v: (B, Hkv, T, hd) of the chunk; `where` from `begin`."""
        rows, cols, _ = where
        scatter_(self.k[layer], rows, cols, k.transpose(1, 2))  # index (B, T) x (Hkv, hd)
        scatter_(self.v[layer], rows, cols, v.transpose(1, 2))


def _scatter(dst: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, src: torch.Tensor) -> None:
    if dst.dim() > 2:
        dst[rows, :, cols] = src
    else:
        dst[rows, cols] = src


_scatter_op = torch.library.custom_op("microturn::scatter_", _scatter, mutates_args=("dst",))


def scatter_(dst: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, src: torch.Tensor) -> None:
    """dst[rows, ..., cols] = src, in place. Under torch.compile through an opaque op that
    mutates its input: functionalized, an index_put into a view of the cache rewrote the whole
    cache (every slot's window, layer after layer: ~100 ms per decode position at 64 slots)."""
    (_scatter_op if torch.compiler.is_compiling() else _scatter)(dst, rows, cols, src)


def rope_angles(pos: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (B, 1, T, hd/2). Angles in float64: positions grow without bound in
    long calls and float32 would lose the phase of the high frequencies."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float64) / head_dim)
    ang = pos.to(torch.float64)[..., None] * inv_freq  # (B, T, hd/2)
    return ang.cos().float()[:, None], ang.sin().float()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, hd); rotates interleaved-by-halves pairs."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def attention_mask(qpos: torch.Tensor, kpos: torch.Tensor, n_sinks: int, window: int) -> torch.Tensor:
    """(B, 1, Tq, Tk) bool: causal, within the window or a sink, and only real keys (kpos >= 0)."""
    q = qpos[:, :, None]
    k = kpos[:, None, :]
    allowed = (k >= 0) & (k <= q) & ((k < n_sinks) | (q - k < window))
    return allowed[:, None]


def gqa_mask(
    qpos: torch.Tensor, kpos: torch.Tensor, valid: torch.Tensor, n_sinks: int, window: int, rep: int
) -> torch.Tensor:
    """The batched attention mask of one forward, shared by its layers: (B, 1, rep*T, Tk), each kv
    head's `rep` query heads folded into its query rows (see `attend`)."""
    mask = attention_mask(qpos, kpos, n_sinks, window)  # (B, 1, T, Tk)
    # Padding queries attend to key 0 only, so no row is fully masked (SDPA would give NaN).
    mask[..., 0] |= ~valid[:, None, :]
    return mask.repeat(1, 1, rep, 1)


def attend(
    q: torch.Tensor,  # (B, H, T, hd)
    k: torch.Tensor,  # (B, Hkv, Tk, hd)
    v: torch.Tensor,  # (B, Hkv, Tk, hd)
    qpos: torch.Tensor,  # (B, T) absolute positions of the queries
    kpos: torch.Tensor,  # (B, Tk) absolute positions of the keys (-1 = no key)
    valid: torch.Tensor,  # (B, T) real queries (False = ragged padding)
    n_sinks: int,
    window: int,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Grouped-query attention over the whole batch in one SDPA call -> (B, H, T, hd).
    `mask`: `gqa_mask` of these arguments when the caller built it already."""
    B, H, T, hd = q.shape
    # GQA without copying the cache: fold each kv head's query heads into its query rows.
    rep = H // k.shape[1]
    if mask is None:
        mask = gqa_mask(qpos, kpos, valid, n_sinks, window, rep)
    qg = q.reshape(B, k.shape[1], rep * T, hd)  # (B, Hkv, rep*T, hd)
    if T == 1:  # decode
        return attend_gemm(qg, k, v, mask).view(B, H, T, hd)
    y = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask)
    return y.view(B, H, T, hd)


def attend_gemm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd), masked) v as two batched GEMMs: q (B, Hkv, r, hd), k, v
    (B, Hkv, n, hd), mask (B, 1, r, n) -> (B, Hkv, r, hd). For the few query rows of a decode
    step (r = the query heads of one kv head) it measured faster than CPU SDPA: ~5 % of a
    full-window B=32 step (tests/bench/bench_engine.py `decode_gemm_speedup_B32_full_window`)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)  # (B, Hkv, r, n)
    return torch.matmul(scores.masked_fill_(~mask, float("-inf")).softmax(dim=-1), v)


@dataclass
class SessionPlan:
    """What batch-invariant attention needs per session, built once per forward and shared by
    its layers: each session's real query count (ragged padding is a right-padded prefix), how
    many leading cache entries its keys occupy, and its additive mask over exactly those."""

    q_lens: list[int]
    kv_lens: list[int]
    bias: list[torch.Tensor | None]  # (1, rep*n, m): 0 attended, -inf not; None: no queries

    @classmethod
    def build(
        cls,
        qpos: torch.Tensor,  # (B, T)
        kpos: torch.Tensor,  # (B, Tk)
        valid: torch.Tensor,  # (B, T)
        n_sinks: int,
        window: int,
        rep: int,
        q_lens: list[int] | None = None,
        kv_lens: list[int] | None = None,
    ) -> SessionPlan:
        """`q_lens`, `kv_lens`: host ints from the caller (no host read). A session's `kv_lens`
        entry must depend on that session alone (e.g. its own filled entries, bucketed) and
        cover every entry it can attend to; when None, both are read back from the tensors
        once here: the real queries, and the entries up to the session's last filled one."""
        if q_lens is None or kv_lens is None:
            filled = torch.where(kpos >= 0, torch.arange(1, kpos.shape[1] + 1, device=kpos.device), 0).amax(dim=1)
            read = torch.stack([valid.sum(dim=1), filled]).tolist()  # one host read per forward
            q_lens = read[0] if q_lens is None else q_lens
            kv_lens = read[1] if kv_lens is None else kv_lens
        allowed = attention_mask(qpos, kpos, n_sinks, window)[:, 0]  # (B, T, Tk)
        bias_all = torch.zeros(allowed.shape, device=qpos.device).masked_fill_(~allowed, float("-inf"))
        bias: list[torch.Tensor | None] = []
        for b, (n, m) in enumerate(zip(q_lens, kv_lens, strict=True)):
            # a fresh (1, rep*n, m) buffer: each kv head's query heads are its rows (`_attend_one`)
            bias.append(bias_all[b, :n, :m].repeat(rep, 1)[None] if n else None)
        return cls(q_lens=list(q_lens), kv_lens=list(kv_lens), bias=bias)


def attend_per_session(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qpos: torch.Tensor,
    kpos: torch.Tensor,
    valid: torch.Tensor,
    n_sinks: int,
    window: int,
    plan: SessionPlan | None = None,
    cache_rows: list[int] | None = None,
) -> torch.Tensor:
    """`attend` computed session by session, each on its real queries and its first
    `plan.kv_lens[b]` keys alone; padding rows are 0. Every call a session makes gets operands
    whose shapes, strides, alignment and values depend on nothing but that session (see the
    module docstring). No host read when `plan` is given.

    `cache_rows`: k and v are one layer of the KV cache, (slots, Hkv, C, hd), and session b's
    keys are those of slot `cache_rows[b]`, read in place (the cache's layout is fixed whatever
    the batch); else k and v are (B, Hkv, Tk, hd) and each session's keys are copied out."""
    B, H, T, hd = q.shape
    Hkv = k.shape[1]
    rep = H // Hkv
    if plan is None:
        plan = SessionPlan.build(qpos, kpos, valid, n_sinks, window, rep)
    # read in place when the layout cannot depend on the batch: a decode step's queries (T = 1)
    # and the cache's slots; every such view must start 64-byte aligned, as a fresh buffer does
    q_in_place = T == 1 and q.is_contiguous()
    kv_in_place = cache_rows is not None and k.is_contiguous() and v.is_contiguous()
    outs: list[torch.Tensor | None] = []
    for b in range(B):
        n, m, bias = plan.q_lens[b], plan.kv_lens[b], plan.bias[b]
        if bias is None:
            outs.append(None)
            continue
        qb = _view(q, b, (Hkv, rep, hd), rep * hd) if q_in_place else None
        if qb is None:  # fresh: q[b]'s strides depend on the padded T
            qb = q.new_empty(Hkv, rep * n, hd)
            qb.view(H, n, hd).copy_(q[b, :, :n])
        if kv_in_place:
            row = cache_rows[b]  # type: ignore[index]
            kb, vb = _view(k, row, (Hkv, m, hd), k.stride(1)), _view(v, row, (Hkv, m, hd), v.stride(1))
        else:
            kb = vb = None
        if kb is None or vb is None:
            kb, vb = k[b, :, :m].clone(), v[b, :, :m].clone()
        outs.append(_attend_one(qb, kb, vb, bias).view(H, n, hd))
    if all(o is not None and o.shape[1] == T for o in outs):
        return torch.stack(outs)  # type: ignore[arg-type]
    y = q.new_zeros(q.shape)  # (B, H, T, hd)
    for b, o in enumerate(outs):
        if o is not None:
            y[b, :, : o.shape[1]] = o
    return y


def _view(x: torch.Tensor, index: int, shape: tuple[int, int, int], stride0: int) -> torch.Tensor | None:
    """x[index] of a contiguous x as one (a, b, c) view with strides (stride0, c, 1), or None when
    it would not start 64-byte aligned (the caller then copies it into a fresh buffer)."""
    offset = index * x.stride(0)
    if (x.data_ptr() + offset * x.element_size()) % 64:
        return None
    return x.as_strided(shape, (stride0, shape[2], 1), x.storage_offset() + offset)


def _attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) + bias) v of one session: q (Hkv, rep*n, hd) with each kv head's
    query heads as its rows, k, v (Hkv, m, hd), bias (1, rep*n, m) -> (Hkv, rep*n, hd).

    Plain GEMMs and a softmax rather than SDPA: the same arithmetic, and small ones that run
    on the calling thread, where SDPA would start a parallel region per session and layer.
    """
    scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=q.shape[-1] ** -0.5)  # (Hkv, rep*n, m)
    return torch.bmm(scores.softmax(dim=-1), v)


class Attention(nn.Module):
    batch_invariant: bool = False  # attend session by session; set by set_batch_invariant

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        rope: tuple[torch.Tensor, torch.Tensor],
        pos: torch.Tensor,  # (B, T) absolute positions
        valid: torch.Tensor,  # (B, T) real tokens (False = ragged padding)
        ctx: CacheContext | None = None,
        mask: torch.Tensor | None = None,  # gqa_mask of this forward (built here when None)
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.hd)
        k = self.wk(x).view(B, T, self.n_kv, self.hd)
        v = self.wv(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        # one rotation for queries and keys: the same elementwise ops, half the dispatches
        qk = apply_rope(torch.cat([q, k], dim=2).transpose(1, 2), *rope)  # (B, H + Hkv, T, hd)
        q, k = qk[:, : self.n_heads], qk[:, self.n_heads :]  # (B, H, T, hd), (B, Hkv, T, hd)

        n_sinks, window = self.cfg.n_sinks, self.cfg.window
        if ctx is None:  # teacher-forced: the chunk is the whole sequence
            kpos = torch.where(valid, pos, -1)
            if self.batch_invariant:
                y = attend_per_session(q, k, v, pos, kpos, valid, n_sinks, window)
            else:
                y = attend(q, k, v, pos, kpos, valid, n_sinks, window, mask)  # (B, H, T, hd)
        else:  # streaming: write first, then read the slots' cache in place
            ctx.cache.write(self.layer, ctx.slots, k, v, ctx.where)
            k_cache, v_cache = ctx.cache.k[self.layer], ctx.cache.v[self.layer]
            if self.batch_invariant:
                plan = ctx.session_plan(pos, valid, n_sinks, window, self.n_heads // self.n_kv)
                y = attend_per_session(
                    q, k_cache, v_cache, pos, ctx.kpos, valid, n_sinks, window, plan=plan, cache_rows=ctx.slot_ids
                )
            else:
                n = ctx.kpos.shape[1]
                if mask is None:
                    mask = gqa_mask(pos, ctx.kpos, valid, n_sinks, window, self.n_heads // self.n_kv)
                # each run of consecutive slots reads its cache rows as a view: indexing scattered
                # slots would copy their whole window, layer after layer
                parts = [
                    attend(q[i:j], k_cache[a:b, :, :n], v_cache[a:b, :, :n], pos[i:j], ctx.kpos[i:j],
                           valid[i:j], n_sinks, window, mask[i:j])
                    for (i, j), (a, b) in ctx.runs
                ]  # fmt: skip
                y = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))


@dataclass
class CacheContext:
    """Per-forward view of the cache shared by all layers: which slots, where the chunk goes,
    and every cached entry's position (already including the chunk)."""

    cache: KVCache
    slots: torch.Tensor  # (B,)
    rows: slice | torch.Tensor
    where: Where
    kpos: torch.Tensor  # (B, n) positions of the first n entries, the only ones read
    slot_ids: list[int]  # the slots as host ints
    q_lens: list[int] | None = None  # per session: real chunk positions (batch-invariant mode)
    kv_lens: list[int] | None = None  # per session: cache entries its attention reads (idem)
    plan: SessionPlan | None = None  # built by the first batch-invariant layer, shared by the rest

    @property
    def runs(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """The batch as runs of consecutive cache slots: ((first row, end row), (first slot,
        end slot)) each. One run when the slots are contiguous (the engine keeps them packed)."""
        out: list[tuple[tuple[int, int], tuple[int, int]]] = []
        start = 0
        for i in range(1, len(self.slot_ids) + 1):
            if i == len(self.slot_ids) or self.slot_ids[i] != self.slot_ids[i - 1] + 1:
                out.append(((start, i), (self.slot_ids[start], self.slot_ids[i - 1] + 1)))
                start = i
        return out

    @classmethod
    def begin(
        cls,
        cache: KVCache,
        slots: torch.Tensor,
        pos: torch.Tensor,
        valid: torch.Tensor,
        *,
        rows: slice | list[int] | None = None,
        kv_len: int | None = None,
        q_lens: list[int] | None = None,
        kv_lens: list[int] | None = None,
    ) -> CacheContext:
        """`rows`: `KVCache.rows` of the slots, from host ints (computed from `slots` when None,
        a host read). `kv_len`: how many leading entries can be filled (the rest are empty and
        need not be read: a young session's ring has not wrapped); None = all.

        Batch-invariant attention only: `q_lens`, each session's number of real positions in
        the chunk, and `kv_lens`, each session's own leading entries to read, which must depend
        on that session alone (e.g. `kv_bucket` of its own newest position + 1, never the
        batch's `kv_len`). Without them the first layer reads them back once (`SessionPlan`)."""
        where = cache.begin(slots, pos, valid)
        if rows is None:
            rows = cache.rows(slots.tolist())
        slot_ids = list(range(rows.start, rows.stop)) if isinstance(rows, slice) else list(rows)
        index: slice | torch.Tensor = rows if isinstance(rows, slice) else slots
        n = cache.cache_len if kv_len is None else min(kv_len, cache.cache_len)
        return cls(
            cache=cache,
            slots=slots,
            rows=index,
            where=where,
            kpos=cache.pos[index, :n],
            slot_ids=slot_ids,
            q_lens=q_lens,
            kv_lens=kv_lens,
        )

    def session_plan(self, pos: torch.Tensor, valid: torch.Tensor, n_sinks: int, window: int, rep: int) -> SessionPlan:
        """The forward's `SessionPlan` (the same for every layer: built once)."""
        if self.plan is None:
            self.plan = SessionPlan.build(
                pos, self.kpos, valid, n_sinks, window, rep, q_lens=self.q_lens, kv_lens=self.kv_lens
            )
        return self.plan
