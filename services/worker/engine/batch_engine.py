"""Step-level batch engine: add/remove requests between steps, ``step()`` runs ONE denoising step.

A step is heterogeneous: each request takes the step shape it needs (docs/design.md §3.3) —
- cache "none":   every step runs the full sequence (kind "refresh", nothing cached);
- cache "dual":   block start = full refresh that keeps K/V for all positions; later steps of the block
                  run only the block's tokens, overwriting their K/V slots (kind "reuse");
- cache "prefix": block start = full refresh that keeps the prefix K/V; later steps run block → end.
Each request brings its own τ / decoding rule and sampling parameters. Attention is computed per
request, and a sampled request's draws depend only on its seed and step (decoding.step_uniforms), so
outputs, greedy or sampled, do not depend on the rest of the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import torch

from services.worker.engine.decoding import candidate_tokens, select_commits, step_uniforms
from services.worker.model import KVCache, LLaDAModelLM, Segment
from shared.schemas.engine import DecodeState

CacheMode = Literal["none", "prefix", "dual"]
CACHE_MODES: tuple[str, ...] = ("none", "prefix", "dual")
StepKind = Literal["refresh", "reuse"]


@dataclass
class RequestStepOutput:
    request_id: str
    step_kind: StepKind
    committed_positions: list[int]  # canvas-relative
    committed_token_ids: list[int]
    num_tokens_executed: int
    threshold: float
    confidence_min: float
    confidence_mean: float
    confidence_max: float
    block_index: int  # the block this step worked on
    block_finished: bool
    finished: bool


@dataclass
class StepOutput:
    elapsed_s: float
    num_tokens_executed: int
    requests: list[RequestStepOutput] = field(default_factory=list)
    finished: list[DecodeState] = field(default_factory=list)

    @property
    def num_refresh(self) -> int:
        return sum(1 for r in self.requests if r.step_kind == "refresh")


@dataclass
class _Active:
    state: DecodeState
    seq: torch.Tensor  # prompt + canvas on the engine's device
    cache: KVCache | None = None
    masked_at_block_start: int = -1


class DenoisingEngine:
    """One model instance's batch of in-flight requests."""

    def __init__(self, model: LLaDAModelLM, cache_mode: CacheMode = "dual", device: str | None = None) -> None:
        if cache_mode not in CACHE_MODES:
            raise ValueError(f"cache_mode must be one of {CACHE_MODES}, got {cache_mode!r}")
        self.model = model
        self.cache_mode: CacheMode = cache_mode
        self.device = torch.device(device) if device else next(model.parameters()).device
        cfg = model.config
        self.vocab_size = int(cfg.vocab_size)
        self.max_positions = int(cfg.max_sequence_length)
        self.mask_token_id = int(cfg.mask_token_id)
        self.eos_token_id = int(cfg.eos_token_id)
        self._active: dict[str, _Active] = {}

    # -- batch membership ---------------------------------------------------------------------
    @property
    def request_ids(self) -> list[str]:
        return list(self._active)

    @property
    def num_requests(self) -> int:
        return len(self._active)

    def has(self, request_id: str) -> bool:
        return request_id in self._active

    def add(self, state: DecodeState) -> None:
        """Join the batch before the next step. Raises ValueError saying what is wrong."""
        self.validate(state)
        if state.request_id in self._active:
            raise ValueError(f"request {state.request_id!r} is already in the batch")
        seq = torch.tensor(state.prompt_ids + state.canvas_ids, dtype=torch.long, device=self.device)
        self._active[state.request_id] = _Active(state=_copy(state), seq=seq)

    def remove(self, request_id: str) -> DecodeState:
        """Leave the batch (cancel, migrate, drain). Returns the resumable state."""
        try:
            return self._active.pop(request_id).state
        except KeyError:
            raise KeyError(f"request {request_id!r} is not in the batch") from None

    def state(self, request_id: str) -> DecodeState:
        return _copy(self._active[request_id].state)

    def set_threshold(self, request_id: str, threshold: float) -> None:
        _check_threshold(threshold)
        self._active[request_id].state.threshold = float(threshold)

    def validate(self, state: DecodeState) -> None:
        if not state.prompt_ids:
            raise ValueError("prompt is empty: at least one prompt token is required")
        if not state.canvas_ids:
            raise ValueError("canvas is empty: max_tokens must be at least 1")
        total = len(state.prompt_ids) + len(state.canvas_ids)
        if total > self.max_positions:
            raise ValueError(
                f"prompt ({len(state.prompt_ids)} tokens) + canvas ({len(state.canvas_ids)} tokens) = {total} "
                f"exceeds the model's {self.max_positions} positions"
            )
        for name, ids in (("prompt", state.prompt_ids), ("canvas", state.canvas_ids)):
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"{name} token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        if state.mask_token_id != self.mask_token_id:
            raise ValueError(f"mask_token_id {state.mask_token_id} does not match the model's {self.mask_token_id}")
        if state.block_length < 1:
            raise ValueError(f"block_length must be >= 1, got {state.block_length}")
        _check_threshold(state.threshold)
        _check_sampling(state)
        if state.decoding not in ("threshold", "strict", "fixed"):
            raise ValueError(f"unknown decoding {state.decoding!r}")
        if state.decoding == "fixed" and state.steps_per_block < 1:
            raise ValueError("fixed-schedule decoding needs steps_per_block >= 1")
        if not 0 <= state.block_index <= state.num_blocks:
            raise ValueError(f"block_index {state.block_index} outside [0, {state.num_blocks}]")
        if self.mask_token_id in state.canvas_ids[: state.block_index * state.block_length]:
            raise ValueError("canvas has masked positions before the current block")

    # -- one step -----------------------------------------------------------------------------
    def step(self, thresholds: dict[str, float] | None = None) -> StepOutput:
        """Run one denoising step over every request in the batch."""
        for rid, tau in (thresholds or {}).items():
            self.set_threshold(rid, tau)
        t0 = time.perf_counter()
        # A request resumed at a finished canvas (or with an all-committed block) needs no forward.
        for act in self._active.values():
            self._skip_completed_blocks(act)
        work = [a for a in self._active.values() if not a.state.finished]
        segments = [self._plan(a) for a in work]
        logits = self.model.forward_segments([s for s, _ in segments]) if segments else []
        outputs: list[RequestStepOutput] = []
        for act, (seg, kind), lg in zip(work, segments, logits):
            outputs.append(self._commit(act, seg, kind, lg))
        finished = [a.state for a in self._active.values() if a.state.finished]
        for st in finished:
            del self._active[st.request_id]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        return StepOutput(
            elapsed_s=elapsed,
            num_tokens_executed=sum(o.num_tokens_executed for o in outputs),
            requests=outputs,
            finished=finished,
        )

    def _block_bounds(self, st: DecodeState) -> tuple[int, int]:
        start = st.block_index * st.block_length
        return start, min(start + st.block_length, len(st.canvas_ids))

    def _skip_completed_blocks(self, act: _Active) -> None:
        st = act.state
        while not st.finished:
            lo, hi = self._block_bounds(st)
            if any(t == self.mask_token_id for t in st.canvas_ids[lo:hi]):
                break
            st.block_index += 1
            st.block_step = 0
            act.cache = None
            act.masked_at_block_start = -1

    def _plan(self, act: _Active) -> tuple[Segment, StepKind]:
        st = act.state
        p = len(st.prompt_ids)
        lo, hi = self._block_bounds(st)
        total = act.seq.numel()
        masked = torch.nonzero(act.seq[p + lo : p + hi] == self.mask_token_id).flatten() + (p + lo)
        if act.masked_at_block_start < 0:
            act.masked_at_block_start = int(masked.numel())
        dev = self.device
        if self.cache_mode == "none" or act.cache is None:
            keep = {"none": 0, "dual": total, "prefix": p + lo}[self.cache_mode]
            seg = Segment("full", act.seq, torch.arange(total, device=dev), masked, keep_cache=keep)
            return seg, "refresh"
        start = p + lo
        end = p + hi if self.cache_mode == "dual" else total
        kind = "dual" if self.cache_mode == "dual" else "prefix"
        seg = Segment(kind, act.seq[start:end], torch.arange(start, end, device=dev), masked - start, cache=act.cache)
        return seg, "reuse"

    def _candidates(self, st: DecodeState, logits: torch.Tensor, canvas_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if st.temperature <= 0:
            return candidate_tokens(logits, self.mask_token_id)
        lo, _ = self._block_bounds(st)
        u = step_uniforms(st.seed, st.block_index, st.block_step, st.block_length)
        offsets = (canvas_pos - lo).cpu()  # the position's place in its block picks its draw
        return candidate_tokens(logits, self.mask_token_id, st.temperature, st.top_p, u[offsets])

    def _commit(self, act: _Active, seg: Segment, kind: StepKind, logits: torch.Tensor) -> RequestStepOutput:
        st = act.state
        p = len(st.prompt_ids)
        block = st.block_index
        if seg.kind == "full" and seg.keep_cache:
            act.cache = seg.new_cache
        abs_positions = seg.logit_rows + int(seg.positions[0])
        tokens, conf = self._candidates(st, logits, abs_positions - p)
        chosen = select_commits(st, conf, act.masked_at_block_start)
        pos = abs_positions[chosen]
        tok = tokens[chosen]
        act.seq[pos] = tok
        canvas_pos = (pos - p).tolist()
        tok_list = tok.tolist()
        for cp, t in zip(canvas_pos, tok_list):
            st.canvas_ids[cp] = t
        st.num_steps += 1
        st.block_step += 1
        if kind == "refresh":
            st.num_refresh_steps += 1
        else:
            st.num_reuse_steps += 1
        block_finished = int(conf.numel()) == len(tok_list)
        if block_finished:
            st.block_index += 1
            st.block_step = 0
            act.cache = None
            act.masked_at_block_start = -1
            self._skip_completed_blocks(act)
        c = conf.float()
        return RequestStepOutput(
            request_id=st.request_id,
            step_kind=kind,
            committed_positions=canvas_pos,
            committed_token_ids=tok_list,
            num_tokens_executed=int(seg.token_ids.numel()),
            threshold=st.threshold if st.decoding == "threshold" else 1.0,
            confidence_min=float(c.min()) if c.numel() else 1.0,
            confidence_mean=float(c.mean()) if c.numel() else 1.0,
            confidence_max=float(c.max()) if c.numel() else 1.0,
            block_index=block,
            block_finished=block_finished,
            finished=st.finished,
        )


def _copy(state: DecodeState) -> DecodeState:
    """Deep enough copy: the engine mutates canvas_ids, the caller's object must not change."""
    return msgspec.structs.replace(state, prompt_ids=list(state.prompt_ids), canvas_ids=list(state.canvas_ids))


def _check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and 0.0 < float(threshold) <= 1.0):
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")


def _check_sampling(state: DecodeState) -> None:
    if not (isinstance(state.temperature, (int, float)) and 0.0 <= float(state.temperature) < float("inf")):
        raise ValueError(f"temperature must be a finite number >= 0, got {state.temperature!r}")
    if not (isinstance(state.top_p, (int, float)) and 0.0 < float(state.top_p) <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {state.top_p!r}")
    if not isinstance(state.seed, int):
        raise ValueError(f"seed must be an integer, got {state.seed!r}")


def new_state(
    request_id: str,
    prompt_ids: list[int],
    max_tokens: int,
    mask_token_id: int,
    block_length: int,
    threshold: float = 0.9,
    decoding: str = "threshold",
    steps_per_block: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> DecodeState:
    """A fresh request: the canvas is ``max_tokens`` masks. ``temperature`` 0 decodes greedily."""
    return DecodeState(
        request_id=request_id,
        prompt_ids=list(prompt_ids),
        canvas_ids=[mask_token_id] * max_tokens,
        mask_token_id=mask_token_id,
        block_length=block_length,
        threshold=threshold,
        decoding=decoding,  # type: ignore[arg-type]
        steps_per_block=steps_per_block,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )


def rewind_to_block_start(state: DecodeState) -> DecodeState:
    """The state as it was at the start of its current block: what a block checkpoint holds.

    Resuming from it reproduces the uninterrupted greedy output exactly, whatever the cache mode:
    the first step on the new worker is the same refresh the block started with.
    """
    lo = state.block_index * state.block_length
    canvas = state.canvas_ids[:lo] + [state.mask_token_id] * (len(state.canvas_ids) - lo)
    return msgspec.structs.replace(state, prompt_ids=list(state.prompt_ids), canvas_ids=canvas, block_step=0)


def output_ids(state: DecodeState, eos_token_id: int) -> list[int]:
    """The canvas up to (not including) the first EOS — what the gateway returns as text."""
    out = []
    for t in state.canvas_ids:
        if t == eos_token_id or t == state.mask_token_id:
            break
        out.append(t)
    return out
