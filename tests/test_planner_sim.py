"""The planner inside the simulator: plans in virtual time, drains and launches with delays, loses nothing."""

from __future__ import annotations

import pytest

from shared.policy.planner.round import peak_factor
from shared.sim.engine import simulate
from shared.sim.planner import SimPlannerSpec
from shared.sim.replay import ReplayCheck, layout_configs, split_change, window_requests
from shared.sim.report import summarize
from shared.sim.workload import SimRequest, phased_rows


def _reqs(n: int, gap_s: float, start_s: float = 0.0, prompt: int = 200) -> list[SimRequest]:
    return [SimRequest(f"r{start_s:.0f}-{i}", start_s + i * gap_s, prompt, 256, 30.0) for i in range(n)]


def _tight(n: int, gap_s: float, start_s: float = 0.0, slo_s: float = 2.5) -> list[SimRequest]:
    return [SimRequest(f"t{start_s:.0f}-{i}", start_s + i * gap_s, 200, 256, slo_s) for i in range(n)]


def test_planner_reconfigures_with_drain_and_launch_delays_and_finishes_everything():
    # A light start on 2 TP4 instances (8 GPUs, 2 nodes), then 40 s at 50 req/s with a 2.5 s SLO, which
    # 2 TP4s cannot carry (static: 54 % attainment, admitting only what stays on time) and 8 TP1s can:
    # the planner moves to TP1 (73 %).
    reqs = _tight(10, 2.0) + _tight(2000, 0.02, start_s=20.0)
    spec = SimPlannerSpec(interval_s=5.0, window_s=10.0, launch_delay_s=3.0, teardown_s=1.0, max_nodes_changing=1)
    res = simulate("dilaserve", reqs, ["tp4", "tp4"], "llada8b-gh200", seed=0, planner=spec, gpus=8)
    static = summarize(simulate("dilaserve", reqs, ["tp4", "tp4"], "llada8b-gh200", seed=0), 60.0)
    s = summarize(res, 60.0)
    p = res.planner
    assert p is not None and p["plans"] >= 4
    assert p["plan_changes"] >= 1 and p["instances_launched"] >= 1 and p["instances_drained"] >= 1
    assert "replay attainment" in p["changes"][0]["reason"]  # the replay check confirmed it
    assert s["finished"] + s["dropped"] == len(reqs) and s["unfinished"] == 0  # nothing lost in transitions
    assert static["slo_attainment"] < 0.6 and s["slo_attainment"] > static["slo_attainment"] + 0.15
    # GPUs are never over-committed: launched instances only start on freed GPUs.
    first = p["changes"][0]
    assert sum({"tp1": 1, "tp2": 2, "tp4": 4}[g] * c for g, c in first["instances"].items()) <= 8


def test_replay_check_vetoes_a_change_that_only_pays_in_steady_state():
    # 30 req/s at a 2.5 s SLO: 2 TP4s and 8 TP1s both meet ~99 %, TP1 at a higher τ. Changing now means
    # the TP1s serve only after the 4 s transition: the replay of the change loses attainment → kept.
    window = _tight(300, 0.03)
    check = ReplayCheck(simulate, "dilaserve", "llada8b-gh200", margin=0.02, transition_s=4.0)
    steady = ReplayCheck(simulate, "dilaserve", "llada8b-gh200", margin=0.02)
    tp4, tp1 = ["tp4", "tp4"], ["tp1"] * 8
    assert steady.outcome(window, tp1).attainment == pytest.approx(steady.outcome(window, tp4).attainment, abs=0.01)
    v = check.judge(window, 9.0, tp4, tp1)
    assert not v.changed and v.proposed.attainment < v.current.attainment - 0.2 and "(kept)" in v.note()
    # with free transitions the equal attainment and +30 % τ make the change worth it
    free = steady.judge(window, 9.0, tp4, tp1)
    assert free.changed and free.proposed.mean_threshold > 1.1 * free.current.mean_threshold
    # a change keeps the instances both layouts run and launches only the rest
    assert split_change(["tp4", "tp1", "tp1"], ["tp1", "tp4", "tp2"]) == (["tp1", "tp4"], ["tp2"])


def test_window_requests_are_retimed_and_layouts_flattened():
    from shared.policy.planner.types import ArrivalSample
    arr = [ArrivalSample(10.0, 5, 32, 2.0), ArrivalSample(12.5, 7, 64, 3.0), ArrivalSample(20.0, 1, 32, 1.0)]
    w = window_requests(arr, 10.0, 15.0)  # (start, end]: 10.0 is outside
    assert [(r.arrival_s, r.prompt_len, r.output_len, r.slo_s) for r in w] == [(2.5, 7, 64, 3.0)]
    assert layout_configs([{"tp4": 1}, {"tp1": 2, "tp2": 1}]) == ["tp4", "tp1", "tp1", "tp2"]


def test_planner_off_is_the_static_layout():
    reqs = _reqs(20, 0.5)
    a = summarize(simulate("dilaserve", reqs, ["tp1"] * 2, "llada8b-gh200", seed=0, global_slo_s=30.0), 10.0)
    b = summarize(simulate("dilaserve", reqs, ["tp1"] * 2, "llada8b-gh200", seed=0, global_slo_s=30.0), 10.0)
    assert a == b


def test_peak_factor_and_phased_rows():
    from shared.policy.planner.types import ArrivalSample
    even = [ArrivalSample(t + 0.5, 10, 32, 5.0) for t in range(30)]
    assert peak_factor(even, 30.0, 30.0, 10.0) == 1.0
    burst = [ArrivalSample(29.0, 10, 32, 5.0)] * 30
    assert peak_factor(burst, 30.0, 30.0, 10.0) == 3.0
    rows = phased_rows(["azure_code", "azure_conv"], None, 20.0, (2.0, 8.0))
    first = [r for r in rows if r.t < 10.0]
    second = [r for r in rows if r.t >= 10.0]
    assert first and second and len(second) > len(first)
