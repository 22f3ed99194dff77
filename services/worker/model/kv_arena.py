"""Model-owned K/V storage for the serving forward: one arena of fixed-length slots per length bucket.

A bucket of length ``Sb`` holds ``keys``/``values`` [n_layers, capacity, Sb, n_kv_heads, head_dim]:
token-major, so one ``index_put_`` per layer writes the fresh K/V of every segment in the bucket, and
``keys[layer, :n]`` is already the [n, Sb, Hkv, D] layout CPU flash attention reads (no per-step copy).
A request's bucket follows from its own length only, so its padded shapes never depend on the batch.

Slots are owned by ``SlotLease`` objects; a lease frees its slot when it is released or when the last
reference to it goes (``weakref.finalize``: immediate under CPython's reference counting, no collector
pass needed as leases hold no reference cycles). Allocation is meant for one thread (the engine's);
frees may come from any thread (``heapq`` operations are atomic under the GIL).
"""

from __future__ import annotations

import heapq
import weakref

import torch

MIN_BUCKET = 8


def length_bucket(n: int) -> int:
    """The padded length for ``n`` positions: 8, 12, 16, 24, 32, 48, 64, 96, ... (powers of two and 1.5×)."""
    if n < 1:
        raise ValueError(f"length must be >= 1, got {n}")
    b = MIN_BUCKET
    while True:
        if n <= b:
            return b
        if n <= b * 3 // 2:
            return b * 3 // 2
        b *= 2


class ArenaBucket:
    """Slots of one padded length. Lowest free slot first, so the slots in use stay a short prefix."""

    def __init__(self, arena: KVArena, length: int) -> None:
        self.arena = arena
        self.length = length
        self.capacity = 0
        self.keys = self._empty(0)
        self.values = self._empty(0)
        self._free: list[int] = []
        self._used: set[int] = set()

    def _empty(self, capacity: int) -> torch.Tensor:
        a = self.arena
        # zeros: a slot's padding is read under a -inf mask and must be finite
        return torch.zeros(a.n_layers, capacity, self.length, a.n_kv_heads, a.head_dim, dtype=a.dtype, device=a.device)

    def allocate(self) -> int:
        if not self._free:
            self._grow()
        slot = heapq.heappop(self._free)
        self._used.add(slot)
        return slot

    def release(self, slot: int) -> None:
        if slot in self._used:
            self._used.discard(slot)
            heapq.heappush(self._free, slot)

    @property
    def in_use(self) -> int:
        return len(self._used)

    def _grow(self) -> None:
        new_cap = max(4, 2 * self.capacity)
        keys, values = self._empty(new_cap), self._empty(new_cap)
        keys[:, : self.capacity].copy_(self.keys)
        values[:, : self.capacity].copy_(self.values)
        self.keys, self.values = keys, values
        self._free.extend(range(self.capacity, new_cap))
        heapq.heapify(self._free)
        self.capacity = new_cap


class SlotLease:
    """Ownership of one slot; the slot is freed by ``release()`` or when the lease is garbage."""

    def __init__(self, bucket: ArenaBucket) -> None:
        self.bucket = bucket
        self.slot = bucket.allocate()
        self._finalizer = weakref.finalize(self, bucket.release, self.slot)

    @property
    def arena(self) -> KVArena:
        return self.bucket.arena

    @property
    def alive(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        self._finalizer()

    def keys(self, length: int) -> torch.Tensor:
        """[n_layers, n_kv_heads, length, head_dim], a view of the slot."""
        return self.bucket.keys[:, self.slot, :length].transpose(1, 2)

    def values(self, length: int) -> torch.Tensor:
        return self.bucket.values[:, self.slot, :length].transpose(1, 2)


class KVArena:
    """Per length bucket, the K/V slots of one model on one device and dtype."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.buckets: dict[int, ArenaBucket] = {}

    def matches(self, n_layers: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> bool:
        return (self.n_layers, self.n_kv_heads, self.head_dim, self.dtype, self.device) == (
            n_layers, n_kv_heads, head_dim, dtype, torch.device(device)
        )

    def bucket(self, length: int) -> ArenaBucket:
        b = length_bucket(length)
        if b not in self.buckets:
            self.buckets[b] = ArenaBucket(self, b)
        return self.buckets[b]

    def lease(self, length: int) -> SlotLease:
        """A slot for a sequence of ``length`` positions."""
        return SlotLease(self.bucket(length))

    @property
    def slots_in_use(self) -> int:
        return sum(b.in_use for b in self.buckets.values())

    def nbytes(self) -> int:
        return sum(b.keys.numel() * b.keys.element_size() * 2 for b in self.buckets.values())


def model_arena(owner: torch.nn.Module, n_layers: int, n_kv_heads: int, head_dim: int) -> KVArena:
    """The arena a model keeps beside its parameters (not in its state dict), remade if its device or dtype changed."""
    w = next(owner.parameters())
    arena = owner.__dict__.get("_kv_arena")
    if arena is None or not arena.matches(n_layers, n_kv_heads, head_dim, w.dtype, w.device):
        arena = KVArena(n_layers, n_kv_heads, head_dim, w.dtype, w.device)
        owner.__dict__["_kv_arena"] = arena
    return arena
