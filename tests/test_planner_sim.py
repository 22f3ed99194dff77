"""The planner inside the simulator: plans in virtual time, drains and launches with delays, loses nothing."""

from __future__ import annotations

from shared.sim.engine import simulate
from shared.sim.planner import SimPlannerSpec, peak_factor
from shared.sim.report import summarize
from shared.sim.workload import SimRequest, phased_rows


def _reqs(n: int, gap_s: float, start_s: float = 0.0, prompt: int = 200) -> list[SimRequest]:
    return [SimRequest(f"r{start_s:.0f}-{i}", start_s + i * gap_s, prompt, 256, 30.0) for i in range(n)]


def test_planner_reconfigures_with_drain_and_launch_delays_and_finishes_everything():
    # A light start on 2 TP4 instances (8 GPUs, 2 nodes), then a heavy phase that needs more instances.
    reqs = _reqs(10, 2.0) + _reqs(120, 0.1, start_s=20.0)
    spec = SimPlannerSpec(interval_s=5.0, window_s=10.0, launch_delay_s=3.0, teardown_s=1.0, max_nodes_changing=1)
    res = simulate("dilaserve", reqs, ["tp4", "tp4"], "llada8b-gh200", seed=0, global_slo_s=30.0,
                   planner=spec, gpus=8)
    s = summarize(res, 40.0)
    p = res.planner
    assert p is not None and p["plans"] >= 4
    assert p["plan_changes"] >= 1 and p["instances_launched"] >= 1 and p["instances_drained"] >= 1
    assert s["finished"] + s["dropped"] == len(reqs) and s["unfinished"] == 0  # nothing lost in transitions
    assert s["slo_attainment"] > 0.9
    # GPUs are never over-committed: launched instances only start on freed GPUs.
    first = p["changes"][0]
    assert sum({"tp1": 1, "tp2": 2, "tp4": 4}[g] * c for g, c in first["instances"].items()) <= 8


def test_planner_off_is_the_static_layout():
    reqs = _reqs(20, 0.5)
    a = summarize(simulate("dilaserve", reqs, ["tp1"] * 2, "llada8b-gh200", seed=0, global_slo_s=30.0), 10.0)
    b = summarize(simulate("dilaserve", reqs, ["tp1"] * 2, "llada8b-gh200", seed=0, global_slo_s=30.0), 10.0)
    assert a == b


def test_peak_factor_and_phased_rows():
    from shared.policy.planner_types import ArrivalSample
    even = [ArrivalSample(t + 0.5, 10, 32, 5.0) for t in range(30)]
    assert peak_factor(even, 30.0, 30.0, 10.0) == 1.0
    burst = [ArrivalSample(29.0, 10, 32, 5.0)] * 30
    assert peak_factor(burst, 30.0, 30.0, 10.0) == 3.0
    rows = phased_rows(["azure_code", "azure_conv"], None, 20.0, (2.0, 8.0))
    first = [r for r in rows if r.t < 10.0]
    second = [r for r in rows if r.t >= 10.0]
    assert first and second and len(second) > len(first)
