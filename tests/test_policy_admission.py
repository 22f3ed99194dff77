"""Admission that keeps admitted requests on time, and a cost model refitted toward a quantile."""

from __future__ import annotations

from shared.policy.cost_model import CostModel
from shared.policy.policies import make_core
from shared.policy.step_predictor import StepPredictor
from shared.policy.types import InstanceView, RequestView

CFG = "tp1-dual"


def _core(protect: bool):
    # 10 ms per step up to 64 tokens, then 1 ms more per 8 tokens: adding a request slows everyone
    cost = CostModel({CFG: [(8, 0.010), (64, 0.010), (1024, 0.130)]})
    core = make_core("dilaserve", cost, StepPredictor({0.9: 8.0, 0.5: 8.0}), protect_admitted=protect,
                     drop_expired=True, budget_step_s=10.0, load_control="none")
    core.on_instance_update(InstanceView("w0", CFG), 0.0)
    return core


def _fill(core, n: int, slo_s: float, first: int = 0) -> list[str]:
    placed = []
    for i in range(first, first + n):
        core.on_arrival(RequestView(f"r{i}", 0.0, slo_s, 100, 32, 8), 0.0)
        placed += [p.request_id for p in core.schedule(0.0).placements]
    return placed


def test_a_request_that_would_make_admitted_ones_late_waits():
    # each request: 4 steps of (132·k − 64)/8 ms + 10 ms with k requests in the batch; two with a
    # 200-ms deadline fit (4 × 35 ms × 1.1), then requests with a loose deadline arrive
    results = {}
    for protect in (False, True):
        core = _core(protect)
        assert _fill(core, 2, 0.2) == ["r0", "r1"]
        results[protect] = (core, _fill(core, 5, 5.0, first=2))
    assert len(results[False][1]) == 5  # unprotected: all placed, the first two now miss their deadline
    core, later = results[True]
    assert later == []  # protected: they wait until the tight ones are done
    assert core.queue_length() == 5
    step_s = core.cost.latency_envelope(CFG, core.insts["w0"].load)
    assert 1.1 * 4 * step_s <= 0.2
    core.on_finished("r0", 0.05)
    core.on_finished("r1", 0.05)
    assert len(core.schedule(0.05).placements) == 5


def test_a_late_member_does_not_close_the_instance():
    core = _core(True)
    core.on_arrival(RequestView("late", 0.0, 0.001, 100, 32, 8), 0.0)
    core.assign("late", "w0", 0.0)  # already there and beyond saving
    assert _fill(core, 1, 5.0) == ["r0"]


def _refit(quantile: float | None) -> float:
    cost = CostModel({CFG: [(100, 0.010)]}, learning_rate=0.05, quantile=quantile)
    for k in range(4000):  # a shared machine: the same step takes 10 ms or 20 ms, in equal shares
        cost.observe(CFG, 100, 0.010 if k % 2 else 0.020)
    return cost.latency(CFG, 100)


def test_refit_toward_the_mean_or_a_high_quantile():
    assert abs(_refit(None) - 0.015) < 0.002
    assert _refit(0.9) > 0.019  # at least 90 % of the steps are no slower than the fitted latency


def test_an_arrival_with_room_is_placed_not_shed_when_the_load_control_comes_due():
    # Shedding prices a waiting request at a full instance's step (≈ 66 ms here): 64 tokens of canvas
    # at the shedding τ cannot make a 400-ms SLO that way. A request that has room now does not wait.
    cost = CostModel({CFG: [(16, 0.003), (112, 0.009), (1024, 0.066)]})
    core = make_core("dilaserve", cost, StepPredictor(), drop_expired=True, budget_step_s=0.07)
    for w in ("w0", "w1"):
        core.on_instance_update(InstanceView(w, CFG), 0.0)
    core.on_arrival(RequestView("r0", 0.0, 0.4, 20, 64, 16), 0.0)
    assert core.load_controller.due(0.0)
    out = core.schedule(0.0)
    assert [p.request_id for p in out.placements] == ["r0"] and out.dropped == []
    assert out.placements[0].cap == core.cap("r0") and "r0" not in out.caps  # the new cap rides the placement
    # while one that finds no room and cannot make it is shed as before
    for i in range(1, 40):
        core.on_arrival(RequestView(f"r{i}", 1.0, 1.4, 20, 64, 16), 1.0)
    out = core.schedule(1.0)
    assert out.dropped and not set(out.dropped) & {p.request_id for p in out.placements}
