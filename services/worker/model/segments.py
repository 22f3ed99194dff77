"""The serving forward shared by every model family: one heterogeneous step over request segments.

Each segment is one request's slice of a denoising step (full refresh, dual-cache block, or
prefix-cache block-to-end). Linear layers run on all segments' tokens packed together. Attention runs
packed too, in a number of calls per layer bounded by model constants, not by the batch: every
segment's K/V live in a slot of the model's arena (kv_arena.py), one slot per request, padded to the
bucket of its own length; segments are grouped by (key bucket, kind, query bucket) and each group is
one scaled-dot-product call with a key-length mask. A segment's padded shapes follow from its own
lengths only and batched attention computes each batch row on its own, so a request's attention
output does not depend on what else is in the batch.

Per layer: one ``index_put_`` per bucket writes the fresh K/V of all its segments into their slots (a
refresh fills its new slot; a dual step overwrites its block's positions; a prefix step writes block →
end after the cached prefix). Then per group: queries scattered into a padded buffer with one op; keys
read from the arena (dual: the bucket's slots from the group's lowest to its highest, a view, no copy,
where the group fills most of that span; otherwise and for full and prefix: the group's slots
gathered, one copy); one attention call; outputs gathered back with
one op. Nothing is read back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence

import torch
import torch.nn.functional as F

from services.worker.model.kv_arena import ArenaBucket, KVArena, SlotLease, length_bucket

SegmentKind = Literal["full", "dual", "prefix"]
SEGMENT_KINDS: tuple[str, ...] = ("full", "dual", "prefix")


class KVCache:
    """Per-request K/V for every layer: ``keys``/``values`` are [n_layers, n_kv_heads, S, head_dim].

    ``token_ids`` are the tokens of the cached positions as they were when cached (a model that reads
    the token before a block, as Dream does, takes it from here).

    A cache made by the serving forward lives in an arena slot and ``keys``/``values`` are views of it;
    the slot is freed when the cache (and every ``head()`` of it) is dropped, or by ``release()``. A
    cache built by hand from tensors is copied into a slot the first time a step uses it.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, token_ids: torch.Tensor | None = None) -> None:
        if keys.dim() != 4 or keys.shape != values.shape:
            raise ValueError(
                f"keys and values must both be [n_layers, n_kv_heads, S, head_dim], got {tuple(keys.shape)} and {tuple(values.shape)}"
            )
        self._keys: torch.Tensor | None = keys
        self._values: torch.Tensor | None = values
        self._lease: SlotLease | None = None
        self._length = int(keys.shape[2])
        self.token_ids = token_ids

    @classmethod
    def in_slot(cls, lease: SlotLease, length: int, token_ids: torch.Tensor | None = None) -> KVCache:
        cache = cls.__new__(cls)
        cache._keys = cache._values = None
        cache._lease, cache._length, cache.token_ids = lease, length, token_ids
        return cache

    @property
    def lease(self) -> SlotLease | None:
        return self._lease

    @property
    def keys(self) -> torch.Tensor:
        if self._lease is None:
            return self._keys
        self._check_alive()
        return self._lease.keys(self._length)

    @property
    def values(self) -> torch.Tensor:
        if self._lease is None:
            return self._values
        self._check_alive()
        return self._lease.values(self._length)

    @property
    def length(self) -> int:
        return self._length

    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() * 2

    def head(self, n: int) -> KVCache:
        """The first ``n`` positions, sharing this cache's slot (or tensors)."""
        if not 0 <= n <= self._length:
            raise ValueError(f"head({n}) of a cache of {self._length} positions")
        ids = None if self.token_ids is None else self.token_ids[:n]
        if self._lease is not None:
            return KVCache.in_slot(self._lease, n, ids)
        return KVCache(self._keys[:, :, :n], self._values[:, :, :n], ids)

    def release(self) -> None:
        """Free the slot now (for every cache sharing it); the cache cannot be used afterwards."""
        if self._lease is not None:
            self._lease.release()

    def adopt(self, lease: SlotLease) -> None:
        """Move hand-built K/V into ``lease``'s slot; from now on the cache reads and writes the slot."""
        keys, values = self.keys, self.values
        dst = lease.bucket
        dst.keys[:, lease.slot, : self._length].copy_(keys.transpose(1, 2))
        dst.values[:, lease.slot, : self._length].copy_(values.transpose(1, 2))
        dst.keys[:, lease.slot, self._length :].zero_()  # padding: finite whatever was there before
        dst.values[:, lease.slot, self._length :].zero_()
        self._keys = self._values = None
        self._lease = lease

    def _check_alive(self) -> None:
        if not self._lease.alive:
            raise RuntimeError("this KV cache was released; its slot may now hold another request")


@dataclass
class Segment:
    """One request's part of a serving step.

    kind "full": ``token_ids`` is the whole sequence starting at position 0; when ``keep_cache`` is
        set, the K/V of the first ``keep_cache`` positions is returned as a new cache.
    kind "dual": ``token_ids`` are the block tokens at ``positions``; their K/V overwrite the matching
        slots of ``cache`` (full length) and attention runs over the whole cache.
    kind "prefix": ``token_ids`` run from block start to the end; ``cache`` holds the prefix K/V only
        (the step's K/V go into the cache's slot after the prefix, beyond the cache's own length).
    ``logit_rows`` index into ``token_ids``: the rows whose logits are wanted.
    """

    kind: SegmentKind
    token_ids: torch.Tensor
    positions: torch.Tensor
    logit_rows: torch.Tensor
    cache: KVCache | None = None
    keep_cache: int = 0
    new_cache: KVCache | None = field(default=None, init=False)


class SegmentLayer(Protocol):
    """What a transformer layer offers the segment runner."""

    def qkv(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]: ...

    def project_out(self, o: torch.Tensor) -> torch.Tensor: ...

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor: ...


def rotary_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., N, H, D]; cos/sin: [N, D]."""
    dtype = x.dtype
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat([-x32[..., half:], x32[..., :half]], dim=-1)
    out = x32 * cos[:, None, :] + rotated * sin[:, None, :]
    return out.to(dtype)


# -- the step plan: slots, groups and index tensors, built once per step on the host ---------------


@dataclass
class _Placed:
    """A segment with its slot: ``key_len`` keys to attend to, queries padded to ``q_len`` rows."""

    index: int
    seg: Segment
    n: int  # tokens
    lease: SlotLease
    key_len: int
    q_len: int
    in_place: bool  # dual: may attend over the bucket's slot span as it lies (see _group)

    def order(self) -> tuple[int, bool, int]:
        return self.lease.bucket.length, self.in_place, self.q_len


@dataclass
class _Write:
    """Fresh K/V of packed tokens [t0, t1) go to ``index`` = (slots, positions) of one bucket."""

    bucket: ArenaBucket
    t0: int
    t1: int
    index: tuple[torch.Tensor, torch.Tensor]


@dataclass
class _Group:
    """One attention call: packed tokens [t0, t1), queries at ``q_index`` of a [rows, q_len] buffer."""

    bucket: ArenaBucket
    q_len: int
    rows: int
    t0: int
    t1: int
    q_index: torch.Tensor
    mask: torch.Tensor  # [rows, 1, 1, Sb] additive: 0 for a row's keys, -inf past them
    slots: torch.Tensor | None  # None: rows are the bucket's slots [first, first + rows) in place
    first: int = 0


@dataclass
class _Plan:
    placed: list[_Placed]  # in packed (sorted) order
    positions: torch.Tensor  # packed
    writes: list[_Write]
    groups: list[_Group]
    temporary: list[SlotLease]


def run_segments(
    segments: Sequence[Segment],
    embed: Callable[[torch.Tensor], torch.Tensor],
    layers: Sequence[SegmentLayer],
    head: Callable[[torch.Tensor], torch.Tensor],
    head_dim: int,
    rope_theta: float,
    arena: KVArena,
) -> list[torch.Tensor]:
    """Run one heterogeneous step. Returns per segment the logits [len(logit_rows), vocab] in fp32."""
    if not segments:
        return []
    plan = _plan(segments, arena)
    ordered = [p.seg for p in plan.placed]
    ids = torch.cat([s.token_ids for s in ordered])
    cos, sin = rotary_tables(plan.positions, head_dim, rope_theta)
    h = embed(ids)
    scratch: dict[str, torch.Tensor] = {}
    for li, layer in enumerate(layers):
        q, k, v = layer.qkv(h, cos, sin)  # [N, H, D], [N, Hkv, D]
        h = h + layer.project_out(_attention(plan, li, q, k, v, scratch))
        h = h + layer.feed_forward(h)
    _finish(plan)
    offsets = [0]
    for s in ordered:
        offsets.append(offsets[-1] + int(s.token_ids.numel()))
    rows = torch.cat([s.logit_rows + offsets[i] for i, s in enumerate(ordered)])
    logits = list(torch.split(head(h[rows]).float(), [int(s.logit_rows.numel()) for s in ordered]))
    out: list[torch.Tensor | None] = [None] * len(segments)
    for p, lg in zip(plan.placed, logits):
        out[p.index] = lg
    return out  # type: ignore[return-value]


def _attention(plan: _Plan, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scratch: dict) -> torch.Tensor:
    """The attention output [N, H * D] of every packed token: one call per group."""
    n_heads, hd = q.shape[1], q.shape[2]
    for w in plan.writes:
        w.bucket.keys[layer].index_put_(w.index, k[w.t0 : w.t1])
        w.bucket.values[layer].index_put_(w.index, v[w.t0 : w.t1])
    gqa = k.shape[1] != n_heads
    out = q.new_empty(q.shape[0], n_heads * hd)  # groups hold consecutive packed rows: each fills its own
    for g in plan.groups:
        qbuf = _query_buffer(scratch, g.rows * g.q_len, q)
        qbuf.index_copy_(0, g.q_index, q[g.t0 : g.t1])
        keys, values = g.bucket.keys[layer], g.bucket.values[layer]  # [capacity, Sb, Hkv, D]
        if g.slots is None:
            keys, values = keys[g.first : g.first + g.rows], values[g.first : g.first + g.rows]
        else:
            keys, values = keys.index_select(0, g.slots), values.index_select(0, g.slots)
        o = F.scaled_dot_product_attention(
            qbuf.view(g.rows, g.q_len, n_heads, hd).transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=g.mask,
            enable_gqa=gqa,
        )  # [rows, H, q_len, D]
        torch.index_select(o.transpose(1, 2).reshape(g.rows * g.q_len, n_heads * hd), 0, g.q_index, out=out[g.t0 : g.t1])
    return out


def _query_buffer(scratch: dict, rows: int, q: torch.Tensor) -> torch.Tensor:
    """A [rows, H, D] view of one buffer reused by every group: rows left unwritten hold earlier queries
    (finite, and each output row depends on its own query row only)."""
    buf = scratch.get("q")
    per_row = q.shape[1] * q.shape[2]
    if buf is None or buf.numel() < rows * per_row:
        buf = torch.zeros(rows * per_row, dtype=q.dtype, device=q.device)
        scratch["q"] = buf
    return buf[: rows * per_row].view(rows, q.shape[1], q.shape[2])


def _plan(segments: Sequence[Segment], arena: KVArena) -> _Plan:
    placed, temporary = [], []
    seen: set[int] = set()
    for i, seg in enumerate(segments):
        p = _place(i, seg, arena)
        if id(p.lease) in seen:
            raise ValueError("two segments of one step share a KV cache slot")
        seen.add(id(p.lease))
        if seg.kind == "full" and not seg.keep_cache:
            temporary.append(p.lease)
        placed.append(p)
    placed.sort(key=_Placed.order)  # stable: equal keys keep the caller's order
    positions = torch.cat([p.seg.positions for p in placed])
    writes, groups = [], []
    t = 0
    for run in _runs(placed, lambda p: p.lease.bucket.length):
        n = sum(p.n for p in run)
        slots = [p.lease.slot for p in run for _ in range(p.n)]
        # (slot, position) pairs: a position past the slot's length raises instead of writing into a neighbour
        writes.append(_Write(run[0].lease.bucket, t, t + n, (_ids(slots, arena), positions[t : t + n])))
        _zero_padding(run, arena)
        for grp in _runs(run, lambda p: (p.in_place, p.q_len)):
            m = sum(p.n for p in grp)
            groups.append(_group(grp, t, t + m, arena))
            t += m
    return _Plan(placed, positions, writes, groups, temporary)


def _zero_padding(run: list[_Placed], arena: KVArena) -> None:
    """Zero the positions past a refresh's length in its new slot, one op per bucket: padding is read under
    the -inf mask, so it must be finite whatever the slot's previous request left there."""
    bucket = run[0].lease.bucket
    pad = [(p.lease.slot, pos) for p in run if p.seg.kind == "full" for pos in range(p.n, bucket.length)]
    if pad:
        slots, pos = _ids([a for a, _ in pad], arena), _ids([b for _, b in pad], arena)
        bucket.keys[:, slots, pos] = 0
        bucket.values[:, slots, pos] = 0


def _place(index: int, seg: Segment, arena: KVArena) -> _Placed:
    if seg.kind not in SEGMENT_KINDS:
        raise ValueError(f"unknown segment kind {seg.kind!r}; expected one of {SEGMENT_KINDS}")
    n = int(seg.token_ids.numel())
    if n < 1 or seg.positions.numel() != n:
        raise ValueError(f"a {seg.kind} segment needs >= 1 token and one position per token, got {n} and {seg.positions.numel()}")
    if seg.kind == "full":
        if not 0 <= seg.keep_cache <= n:
            raise ValueError(f"keep_cache {seg.keep_cache} outside [0, {n}]")
        lease = arena.lease(n)
        return _Placed(index, seg, n, lease, n, lease.bucket.length, in_place=False)
    cache = seg.cache
    if cache is None:
        raise ValueError(f"a {seg.kind} segment needs a cache")
    key_len = cache.length if seg.kind == "dual" else cache.length + n
    if seg.kind == "dual" and n > key_len:
        raise ValueError(f"dual segment of {n} tokens against a cache of {key_len} positions")
    return _Placed(index, seg, n, _slot_of(cache, key_len, arena), key_len, length_bucket(n), in_place=seg.kind == "dual")


def _slot_of(cache: KVCache, key_len: int, arena: KVArena) -> SlotLease:
    """The cache's slot in this arena; a hand-built cache (or one from another arena) is copied into one."""
    lease = cache.lease
    if lease is not None and lease.arena is arena:
        if key_len > lease.bucket.length:
            raise ValueError(f"{key_len} positions do not fit the cache's slot of {lease.bucket.length}")
        cache._check_alive()
        return lease
    keys = cache.keys
    if (keys.shape[0], keys.shape[1], keys.shape[3]) != (arena.n_layers, arena.n_kv_heads, arena.head_dim):
        raise ValueError(
            f"cache K/V {tuple(keys.shape)} do not match the model's [{arena.n_layers}, {arena.n_kv_heads}, S, {arena.head_dim}]"
        )
    lease = arena.lease(key_len)
    cache.adopt(lease)
    return lease


# A dual group attends over its slot span in place when members fill at least this share of it; a
# sparser span costs more in dropped rows than gathering the members' slots (measured on CPU).
IN_PLACE_MIN_DENSITY = 2 / 3


def _group(members: list[_Placed], t0: int, t1: int, arena: KVArena) -> _Group:
    bucket, q_len = members[0].lease.bucket, members[0].q_len
    member_slots = [p.lease.slot for p in members]
    first = min(member_slots)
    span = max(member_slots) + 1 - first
    if members[0].in_place and len(members) >= IN_PLACE_MIN_DENSITY * span:
        rows = span
        row_of = [s - first for s in member_slots]
        lengths = [bucket.length] * rows  # rows of slots not in the group: any finite keys, output unused
        slots = None
    else:
        first, rows = 0, len(members)
        row_of = list(range(rows))
        lengths = [0] * rows
        slots = _ids(member_slots, arena)
    q_index: list[int] = []
    for p, r in zip(members, row_of):
        lengths[r] = p.key_len
        q_index.extend(range(r * q_len, r * q_len + p.n))
    key_pos = torch.arange(bucket.length, device=arena.device)
    valid = key_pos[None, :] < _ids(lengths, arena)[:, None]
    mask = torch.zeros(rows, bucket.length, dtype=arena.dtype, device=arena.device).masked_fill_(~valid, float("-inf"))
    return _Group(bucket, q_len, rows, t0, t1, _ids(q_index, arena), mask[:, None, None, :], slots, first)


def _finish(plan: _Plan) -> None:
    for p in plan.placed:
        seg = p.seg
        if seg.kind == "full" and seg.keep_cache:
            seg.new_cache = KVCache.in_slot(p.lease, seg.keep_cache, seg.token_ids[: seg.keep_cache])
    for lease in plan.temporary:
        lease.release()


def _runs(items: list[_Placed], key: Callable[[_Placed], object]) -> list[list[_Placed]]:
    """Consecutive items with equal ``key``."""
    runs: list[list[_Placed]] = []
    for it in items:
        if runs and key(runs[-1][0]) == key(it):
            runs[-1].append(it)
        else:
            runs.append([it])
    return runs


def _ids(values: list[int], arena: KVArena) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=arena.device)
