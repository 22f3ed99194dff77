"""Packed attention in the serving forward (services/worker/model/segments.py, kv_arena.py).

The reference is written here: each segment on its own, per layer a plain SDPA over its own keys
(the cache with the block's fresh K/V written over it, or prefix + fresh K/V), K/V heads repeated for GQA.
"""

from __future__ import annotations

import gc
import random

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from services.worker.engine import DenoisingEngine, new_state, run_to_completion
from services.worker.model import KVCache, LLaDAConfig, LLaDAModelLM, Segment
from services.worker.model.kv_arena import KVArena, length_bucket, model_arena
from services.worker.model.segments import rotary_tables, run_segments


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is tiny: intra-op threads only add overhead (and stall when the machine is busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> LLaDAModelLM:
    """Random weights, GQA (4 heads over 2 K/V heads), 3 layers."""
    torch.manual_seed(0)
    cfg = LLaDAConfig(
        d_model=64, n_heads=4, n_kv_heads=2, n_layers=3, mlp_hidden_size=96, vocab_size=64, embedding_size=64,
        max_sequence_length=128, mask_token_id=1, eos_token_id=0, pad_token_id=0,
    )
    return LLaDAModelLM(cfg).eval()


def arena_of(m: LLaDAModelLM) -> KVArena:
    c = m.config
    return model_arena(m, c.n_layers, c.n_kv_heads, c.head_dim)


# -- the independent reference ---------------------------------------------------------------------


def reference(m: LLaDAModelLM, seg: Segment, cache_kv: tuple[torch.Tensor, torch.Tensor] | None):
    """(logits of seg.logit_rows, the segment's own K/V per layer [L, Hkv, n, D]) for one segment alone."""
    c = m.config
    t = m.model.transformer
    cos, sin = rotary_tables(seg.positions, c.head_dim, c.rope_theta)
    h = t.wte(seg.token_ids)
    fresh_k, fresh_v = [], []
    rep = c.n_heads // c.n_kv_heads
    for li, block in enumerate(m.blocks):
        q, k, v = (x.transpose(0, 1) for x in block.qkv(h, cos, sin))  # [H, n, D]
        fresh_k.append(k)
        fresh_v.append(v)
        if seg.kind == "full":
            keys, vals = k, v
        elif seg.kind == "dual":
            keys, vals = cache_kv[0][li].clone(), cache_kv[1][li].clone()
            keys[:, seg.positions], vals[:, seg.positions] = k, v
        else:
            keys, vals = torch.cat([cache_kv[0][li], k], 1), torch.cat([cache_kv[1][li], v], 1)
        keys, vals = keys.repeat_interleave(rep, 0), vals.repeat_interleave(rep, 0)
        o = F.scaled_dot_product_attention(q[None], keys[None], vals[None])[0]
        h = h + block.attn_out(o.transpose(0, 1).reshape(len(seg.token_ids), -1))
        h = h + block.mlp(h)
    return m._head(h[seg.logit_rows]).float(), torch.stack(fresh_k), torch.stack(fresh_v)


def random_cache(m: LLaDAModelLM, length: int, gen: torch.Generator) -> KVCache:
    c = m.config
    shape = (c.n_layers, c.n_kv_heads, length, c.head_dim)
    return KVCache(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))


def mixed_segments(m: LLaDAModelLM, seed: int, n: int) -> list[Segment]:
    """Full (keeping a cache or not), dual and prefix segments over several length buckets."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    segs = []
    for i in range(n):
        total = rng.randint(5, 100)
        ids = torch.randint(2, 64, (total,), generator=gen)
        kind = ["full", "dual", "prefix"][i % 3]
        if kind == "full":
            keep = rng.choice([0, total, rng.randint(1, total)])
            rows = torch.arange(rng.randint(0, total - 1), total)
            segs.append(Segment("full", ids, torch.arange(total), rows, keep_cache=keep))
            continue
        start = rng.randint(1, total - 1)
        end = min(total, start + rng.choice([4, 8, 9, 16])) if kind == "dual" else total
        cache = random_cache(m, total if kind == "dual" else start, gen)
        seg = Segment(kind, ids[start:end], torch.arange(start, end), torch.arange(end - start), cache=cache)
        segs.append(seg)
    return segs


# -- tests ---------------------------------------------------------------------------------------


def test_length_buckets():
    assert [length_bucket(n) for n in (1, 8, 9, 12, 13, 17, 25, 33, 49, 65, 97, 128, 129)] == [
        8, 8, 12, 12, 16, 24, 32, 48, 64, 96, 128, 128, 192]
    assert all(length_bucket(n) >= n and length_bucket(n) <= length_bucket(n + 1) for n in range(1, 600))
    with pytest.raises(ValueError, match="length"):
        length_bucket(0)


def test_mixed_batch_matches_per_segment_reference(model):
    segs = mixed_segments(model, seed=3, n=18)
    inputs = [(s.cache.keys.clone(), s.cache.values.clone()) if s.cache is not None else None for s in segs]
    expected = [reference(model, s, kv) for s, kv in zip(segs, inputs)]
    got = model.forward_segments(segs)
    for seg, lg, (ref, fk, fv), kv in zip(segs, got, expected, inputs):
        assert torch.allclose(lg, ref, atol=1e-5), seg.kind
        if seg.kind == "dual":  # the block's fresh K/V were written into the cache, the rest is unchanged
            want_k = kv[0].clone()
            want_k[:, :, seg.positions] = fk
            assert torch.allclose(seg.cache.keys, want_k, atol=1e-5)
        if seg.kind == "full" and seg.keep_cache:
            keep = seg.keep_cache
            assert seg.new_cache.length == keep and torch.equal(seg.new_cache.token_ids, seg.token_ids[:keep])
            assert torch.allclose(seg.new_cache.keys, fk[:, :, :keep], atol=1e-5)
            assert torch.allclose(seg.new_cache.values, fv[:, :, :keep], atol=1e-5)
        if seg.kind == "full" and not seg.keep_cache:
            assert seg.new_cache is None


def test_arena_caches_chain_refresh_dual_prefix(model):
    """A cache from a refresh serves later dual and prefix steps, the block tokens changed in between."""
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(2, 64, (40,), generator=gen)
    full = Segment("full", ids, torch.arange(40), torch.arange(40), keep_cache=40)
    model.forward_segments([full])
    snapshot = (full.new_cache.keys.clone(), full.new_cache.values.clone())
    changed = ids.clone()
    changed[16:24] = torch.randint(2, 64, (8,), generator=gen)
    dual = Segment("dual", changed[16:24], torch.arange(16, 24), torch.arange(8), cache=full.new_cache)
    ref, _, _ = reference(model, dual, snapshot)
    assert torch.allclose(model.forward_segments([dual])[0], ref, atol=1e-5)
    pre = Segment("full", ids, torch.arange(40), torch.arange(1), keep_cache=16)
    model.forward_segments([pre])
    prefix_kv = (pre.new_cache.keys.clone(), pre.new_cache.values.clone())
    for _ in range(2):  # the step's K/V go past the prefix in the slot; the prefix itself stays
        suffix = Segment("prefix", changed[16:], torch.arange(16, 40), torch.arange(24), cache=pre.new_cache)
        ref, _, _ = reference(model, suffix, prefix_kv)
        assert torch.allclose(model.forward_segments([suffix])[0], ref, atol=1e-5)
        assert torch.equal(pre.new_cache.keys, prefix_kv[0])


class ElementwiseLayer:
    """A layer without matrix products (row-wise ops only), so any batch dependence would be attention's."""

    def __init__(self, n_heads: int, n_kv_heads: int, head_dim: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.h, self.hkv, self.d = n_heads, n_kv_heads, head_dim
        self.wq = torch.randn(n_heads * head_dim, generator=g)
        self.wk = torch.randn(n_kv_heads * head_dim, generator=g)
        self.wv = torch.randn(n_kv_heads * head_dim, generator=g)

    def qkv(self, h, cos, sin):
        x = h[:, : self.hkv * self.d]
        return (h * self.wq).view(-1, self.h, self.d), (x * self.wk).view(-1, self.hkv, self.d), (x.sin() * self.wv).view(-1, self.hkv, self.d)

    def project_out(self, o):
        return o

    def feed_forward(self, h):
        return torch.tanh(h) * 0.5


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_attention_bit_identical_alone_and_in_any_batch(n_kv_heads):
    heads, hd, n_layers = 4, 8, 3
    table = torch.randn(64, heads * hd, generator=torch.Generator().manual_seed(1))
    layers = [ElementwiseLayer(heads, n_kv_heads, hd, s) for s in range(n_layers)]
    arena = KVArena(n_layers, n_kv_heads, hd, torch.float32, torch.device("cpu"))

    def step(segs):
        with torch.inference_mode():
            return run_segments(segs, lambda ids: table[ids], layers, lambda h: h, hd, 10000.0, arena)

    def fresh(seed: int, n: int) -> list[Segment]:
        gen = torch.Generator().manual_seed(seed)
        segs = []
        for i in range(n):
            total = 30 + (i * 7) % 60
            ids = torch.randint(0, 64, (total,), generator=gen)
            kind = ["full", "dual", "prefix"][i % 3]
            if kind == "full":
                segs.append(Segment("full", ids, torch.arange(total), torch.arange(total), keep_cache=total))
                continue
            start = 8 + (i % 3)
            end = start + 8 if kind == "dual" else total
            shape = (n_layers, n_kv_heads, total if kind == "dual" else start, hd)
            cache = KVCache(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
            segs.append(Segment(kind, ids[start:end], torch.arange(start, end), torch.arange(end - start), cache=cache))
        return segs

    batch = fresh(7, 24)
    together = step(batch)
    for i in range(24):
        alone = step([fresh(7, 24)[i]])[0]  # the same segment, its own fresh cache, alone
        assert torch.equal(alone, together[i]), i
    reordered = list(reversed(fresh(7, 24)))
    for i, lg in enumerate(reversed(step(reordered))):
        assert torch.equal(lg, together[i])


def test_constant_attention_calls_and_no_host_reads(model):
    def counts(n_requests: int) -> tuple[int, int]:
        gen = torch.Generator().manual_seed(n_requests)
        segs = []
        for i in range(n_requests):  # every request 40-46 tokens: one bucket; refresh or a dual block of 8
            total = 40 + i % 7
            ids = torch.randint(2, 64, (total,), generator=gen)
            if i % 2:
                segs.append(Segment("dual", ids[8:16], torch.arange(8, 16), torch.arange(8), cache=random_cache(model, total, gen)))
            else:
                segs.append(Segment("full", ids, torch.arange(total), torch.arange(8), keep_cache=total))
        model.forward_segments(segs)  # adopts the hand-built caches
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.forward_segments(segs)
        names = [e.name for e in prof.events()]
        syncs = sum(n in ("aten::item", "aten::_local_scalar_dense") for n in names)
        return sum(n == "aten::scaled_dot_product_attention" for n in names), syncs

    n_layers = model.config.n_layers
    for b in (2, 8, 32):
        assert counts(b) == (2 * n_layers, 0)  # one call per (bucket, query bucket) group and layer


def test_slots_freed_when_caches_drop(model):
    arena = arena_of(model)
    gc.collect()
    base = arena.slots_in_use
    gc.disable()  # freeing must not wait for the cycle collector
    try:
        for cache_mode in ("dual", "prefix", "none"):
            engine = DenoisingEngine(model, cache_mode)
            rng = random.Random(11)
            states = [new_state(f"{cache_mode}{i}", [rng.randrange(2, 64) for _ in range(rng.randint(1, 40))],
                                rng.choice([8, 16, 24]), 1, rng.choice([4, 8]), threshold=0.5) for i in range(40)]
            peak = 0
            pending = list(states)
            while pending or engine.num_requests:
                while pending and engine.num_requests < 8:
                    engine.add(pending.pop())
                engine.step()
                peak = max(peak, arena.slots_in_use - base)
                if engine.num_requests == 8 and len(pending) % 10 == 5:
                    engine.remove(engine.request_ids[0])  # a released request drops its cache too
            assert arena.slots_in_use == base, cache_mode
            assert peak <= (8 if cache_mode != "none" else 0)
        seg = Segment("full", torch.arange(2, 30), torch.arange(28), torch.arange(1), keep_cache=28)
        model.forward_segments([seg])
        assert arena.slots_in_use == base + 1
        head = seg.new_cache.head(10)
        seg.new_cache = None
        assert arena.slots_in_use == base + 1  # a head shares the slot and keeps it
        del head, seg
        assert arena.slots_in_use == base
    finally:
        gc.enable()


def test_padding_left_by_an_earlier_request_is_cleared(model):
    """Whatever a freed slot held (here NaN), its next request's padding is finite and masked out."""
    ids = torch.randint(2, 64, (44,), generator=torch.Generator().manual_seed(9))
    first = Segment("full", ids, torch.arange(44), torch.arange(1), keep_cache=44)
    model.forward_segments([first])
    bucket = first.new_cache.lease.bucket
    first = None
    with torch.inference_mode():
        for slot in bucket._free:
            bucket.keys[:, slot] = float("nan")
            bucket.values[:, slot] = float("nan")
    short = Segment("full", ids[:40], torch.arange(40), torch.arange(40), keep_cache=40)
    got = model.forward_segments([short])[0]
    assert short.new_cache.lease.bucket is bucket
    assert torch.allclose(got, reference(model, short, None)[0], atol=1e-5)
    snapshot = (short.new_cache.keys.clone(), short.new_cache.values.clone())
    dual = Segment("dual", ids[8:16], torch.arange(8, 16), torch.arange(8), cache=short.new_cache)
    assert torch.allclose(model.forward_segments([dual])[0], reference(model, dual, snapshot)[0], atol=1e-5)
    adopted = random_cache(model, 42, torch.Generator().manual_seed(1))
    kv = (adopted.keys.clone(), adopted.values.clone())
    dual = Segment("dual", ids[8:16], torch.arange(8, 16), torch.arange(8), cache=adopted)
    assert torch.allclose(model.forward_segments([dual])[0], reference(model, dual, kv)[0], atol=1e-5)


def test_arena_growth_keeps_live_caches(model):
    segs = [Segment("full", torch.randint(2, 64, (20,)), torch.arange(20), torch.arange(1), keep_cache=20) for _ in range(3)]
    model.forward_segments(segs)
    before = [s.new_cache.keys.clone() for s in segs]
    more = [Segment("full", torch.randint(2, 64, (20,)), torch.arange(20), torch.arange(1), keep_cache=20) for _ in range(40)]
    model.forward_segments(more)  # the 24-bucket grows several times
    for s, k in zip(segs, before):
        assert torch.equal(s.new_cache.keys, k)


def test_bad_segments_are_refused(model):
    ids = torch.randint(2, 64, (20,))
    with pytest.raises(ValueError, match="needs a cache"):
        model.forward_segments([Segment("dual", ids[:8], torch.arange(8), torch.arange(8))])
    with pytest.raises(ValueError, match="keep_cache"):
        model.forward_segments([Segment("full", ids, torch.arange(20), torch.arange(1), keep_cache=21)])
    with pytest.raises(ValueError, match="unknown segment kind"):
        model.forward_segments([Segment("causal", ids, torch.arange(20), torch.arange(1))])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one position per token"):
        model.forward_segments([Segment("full", ids, torch.arange(19), torch.arange(1))])
    wrong = KVCache(torch.zeros(1, 2, 20, 16), torch.zeros(1, 2, 20, 16))
    with pytest.raises(ValueError, match="do not match the model"):
        model.forward_segments([Segment("dual", ids[:8], torch.arange(8), torch.arange(8), cache=wrong)])
    with pytest.raises(ValueError, match="must both be"):
        KVCache(torch.zeros(2, 20, 16), torch.zeros(2, 20, 16))
    full = Segment("full", ids, torch.arange(20), torch.arange(1), keep_cache=20)
    model.forward_segments([full])
    a = Segment("dual", ids[:8], torch.arange(8), torch.arange(8), cache=full.new_cache)
    b = Segment("dual", ids[8:16], torch.arange(8, 16), torch.arange(8), cache=full.new_cache)
    with pytest.raises(ValueError, match="share a KV cache"):
        model.forward_segments([a, b])
    full.new_cache.release()
    with pytest.raises(RuntimeError, match="released"):
        model.forward_segments([a])


def test_bench_step_command_counts_calls_per_batch_size():
    """`dilaserve bench-step` on the shipped model: the old loop's attention calls grow with the batch,
    the packed step's do not; old and new give the same logits (the timing itself is a benchmark)."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "services.common.cli", "bench-step", "--batch", "4", "--pairs", "1",
                          "--warmup", "0", "--count-batches", "16,64"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    counts = r["per_step_counts"]
    assert counts["64"]["old"]["attention_calls"] == 4 * counts["16"]["old"]["attention_calls"]
    assert counts["64"]["new"]["attention_calls"] == counts["16"]["new"]["attention_calls"]
    assert all(c[side]["host_syncs"] == 0 for c in counts.values() for side in ("old", "new"))
    assert r["max_abs_logit_diff"] < 1e-3 and len(r["wall_ratios"]) == 1
