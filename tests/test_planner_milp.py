"""Planner MILP on tiny instances whose optimum is worked out by hand (docs/planner.md has the model).

Common setup: constant step latencies, so t_j = steps · L. One class, 64 output tokens, block 32
(n_k = 2 refresh steps), thresholds {0.9: 2 tok/step → 32 steps, 0.5: 4 tok/step → 16 steps}.
On "tp1" (L = 0.1 s): t = 3.2 s at 0.9, 1.6 s at 0.5; batch 1, so w_j = t_j instance-seconds/request.
"""

from __future__ import annotations

import pytest

from shared.policy.planner.milp import solve_plan
from shared.policy.planner.placement import fits, place
from shared.policy.planner.types import (
    ArrivalSample, ConfigSpec, Layout, PlannerError, PlannerInput, WorkloadClass,
)
from shared.policy.planner.workload import workload_classes

TP1 = ConfigSpec(name="tp1", tp=1, cache="dual", latency=((32.0, 0.1),), batch_sizes=(1,))
TP2 = ConfigSpec(name="tp2", tp=2, cache="dual", latency=((32.0, 0.07),), batch_sizes=(1,))  # t = 2.24 s
THR = {0.9: 2.0, 0.5: 4.0}


def klass(rate: float, slo_s: float = 10.0) -> WorkloadClass:
    return WorkloadClass(class_id=7, prompt_len=0, output_len=64, slo_s=slo_s, rate=rate, block_len=32)


def plan_for(rate: float, configs=(TP1,), gpus=(2,), thresholds=THR, **kw):
    return solve_plan(PlannerInput([klass(rate)], list(configs), dict(thresholds), list(gpus),
                                   time_limit_s=30.0, **kw))


def test_low_load_all_at_top_threshold_on_one_instance():
    p = plan_for(0.25)  # 0.25 · 3.2 = 0.8 instance-s/s at τ=0.9 → one instance
    assert p.instances == {"tp1": 1}
    assert p.objectives["quality"] == pytest.approx(0.9)
    assert p.objectives["unserved_frac"] == pytest.approx(0.0)
    assert p.targets[0].threshold == pytest.approx(0.9) and p.targets[0].class_id == 7
    assert p.status == "optimal" and p.changed


def test_capacity_bound_mixes_thresholds():
    # λ=1, x ≤ 2: 3.2·y9 + 1.6·y5 ≤ 2, y9 + y5 = 1  →  y9 = 0.25, mean τ = 0.25·0.9 + 0.75·0.5 = 0.6
    p = plan_for(1.0)
    assert p.instances == {"tp1": 2}
    assert p.objectives["quality"] == pytest.approx(0.6, abs=2e-3)
    assert p.targets[0].threshold_mix[0.9] == pytest.approx(0.25, abs=5e-3)


def test_overload_sheds_the_excess_and_says_so():
    # λ=2, all at 0.5: 2 instances serve 2/1.6 = 1.25 req/s → 37.5 % unserved
    p = plan_for(2.0)
    assert p.objectives["unserved_frac"] == pytest.approx(0.375, abs=1e-3)
    assert p.objectives["quality"] == pytest.approx(0.5)
    assert "overloaded" in p.reason


def test_fewest_instances_vs_fewest_gpus():
    # One threshold, λ=0.85, one 4-GPU node. tp1: 0.3125 req/s per instance, tp2: 0.4464.
    # Fewest instances = 2: {tp2:2} (0.893 ≥ 0.85); {tp1:1,tp2:1} serves only 0.759.
    # Fewest GPUs = 3: {tp1:3} (0.9375); {tp1:1,tp2:1} again too small.
    kw = dict(configs=(TP1, TP2), gpus=(4,), thresholds={0.9: 2.0})
    assert plan_for(0.85, **kw).instances == {"tp2": 2}
    shrink = plan_for(0.85, allow_shrink=True, **kw)
    assert shrink.instances == {"tp1": 3}
    assert shrink.objectives["gpus"] == 3


def test_slack_comes_before_size():
    # λ=0.3, SLO 10 s: slack tp1 = 0.68, tp2 = 0.776. Capped at 0.25 they tie → size picks 1×tp1
    # (1 GPU); uncapped, slack prefers tp2 (0.3·2.24 = 0.672 → 1 instance).
    kw = dict(configs=(TP1, TP2), gpus=(4,), thresholds={0.9: 2.0})
    assert plan_for(0.3, **kw).instances == {"tp1": 1}
    p = plan_for(0.3, slack_cap=1.0, **kw)
    assert p.instances == {"tp2": 1}
    assert p.objectives["slack"] == pytest.approx(0.776)


def test_hysteresis_keeps_current_layout_below_ten_percent():
    # One 4-GPU node, λ=1. New optimum x=4: all at 0.9 (3.2 ≤ 4). Current x=3: 3.2·y9 + 1.6·(1 − y9) ≤ 3
    # → y9 = 0.875, τ = 0.85; 0.9/0.85 − 1 = 5.9 % < 10 % → keep. At 5 % hysteresis it changes.
    current = Layout(({"tp1": 3},))
    kept = plan_for(1.0, gpus=(4,), current=current)
    assert not kept.changed and kept.instances == {"tp1": 3} and kept.nodes == [{"tp1": 3}]
    assert kept.objectives["quality"] == pytest.approx(0.85, abs=2e-3)
    assert kept.reason.startswith("kept:")
    moved = plan_for(1.0, gpus=(4,), current=current, hysteresis=0.05)
    assert moved.changed and moved.instances == {"tp1": 4} and moved.kept_instances == 3


def test_hysteresis_changes_when_clearly_better():
    # λ=1.1: current x=3: 1.6·y9 ≤ 3 − 1.76 → y9 = 0.775 of 1.1, τ = 0.782; new x=4: 0.9, +15 % ≥ 10 %
    p = plan_for(1.1, gpus=(4,), current=Layout(({"tp1": 3},)))
    assert p.changed and p.instances == {"tp1": 4}


def test_coverage_gain_ignores_hysteresis():
    # λ=2 on 4 GPUs: current x=2 serves 1.25 of 2 req/s, new x=4 serves all → change regardless
    p = plan_for(2.0, gpus=(4,), current=Layout(({"tp1": 2},)), hysteresis=10.0)
    assert p.changed and p.instances == {"tp1": 4}


def test_placement_keeps_existing_instances_where_it_can():
    tp = {"tp1": 1, "tp2": 2, "tp4": 4}
    current = Layout(({"tp1": 4}, {"tp1": 2, "tp2": 1}))
    nodes, kept = place({"tp4": 1, "tp2": 1, "tp1": 2}, tp, [4, 4], current)
    # Keeping a tp1 on node 0 would strand the tp4; node 1's three instances all survive.
    assert nodes == [{"tp4": 1}, {"tp1": 2, "tp2": 1}]
    assert kept == 3
    assert place({"tp4": 3}, tp, [4, 4], None) is None


def test_packing_rows_are_exact_for_power_of_two_sizes():
    assert not fits({4: 3}, [6, 6])  # 12 GPUs but only two 4-GPU slots
    assert fits({4: 2, 1: 4}, [6, 6])
    assert not fits({2: 3, 1: 1}, [3, 3, 1])  # level 2: 6 > 2·(1+1+0)


def test_no_arrivals_keeps_current_or_plans_minimum():
    cur = Layout(({"tp1": 2},))
    kept = solve_plan(PlannerInput([], [TP1], THR, [2], current=cur))
    assert not kept.changed and kept.instances == {"tp1": 2} and "no arrivals" in kept.reason
    fresh = solve_plan(PlannerInput([], [TP1], THR, [2]))
    assert fresh.instances == {"tp1": 1}  # min_instances: never an empty cluster while GPUs exist


def test_zero_gpus_returns_empty_plan_with_reason():
    p = solve_plan(PlannerInput([klass(1.0)], [TP1], THR, []))
    assert p.instances == {} and "no GPUs" in p.reason and p.objectives["unserved_frac"] == 1.0
    p = solve_plan(PlannerInput([klass(1.0)], [TP1], THR, [0, 0], current=Layout(({"tp1": 1},))))
    assert p.instances == {} and p.changed


def test_slo_shorter_than_one_step():
    p = solve_plan(PlannerInput([klass(0.5, slo_s=0.05)], [TP1], THR, [2]))  # one step alone is 0.1 s
    assert p.objectives["unserved_frac"] == pytest.approx(1.0)
    assert "cannot be served" in p.reason and p.targets[0].unserved_rate == pytest.approx(0.5)


def test_no_configuration_fits_a_node():
    tp4 = ConfigSpec(name="tp4", tp=4, cache="dual", latency=((32.0, 0.05),), batch_sizes=(1,))
    p = solve_plan(PlannerInput([klass(0.5)], [tp4], THR, [2, 2]))
    assert p.instances == {} and "no configuration fits" in p.reason


def test_malformed_input_is_a_clear_error():
    with pytest.raises(PlannerError, match="no configurations"):
        solve_plan(PlannerInput([klass(1.0)], [], THR, [2]))
    bad = ConfigSpec(name="tp3", tp=3, cache="dual", latency=((32.0, 0.1),))
    with pytest.raises(PlannerError, match="power of two"):
        solve_plan(PlannerInput([klass(1.0)], [bad], THR, [4]))


def test_workload_classes_split_and_summarise():
    short = [ArrivalSample(i, 100, 64, 4.0 + (i % 2)) for i in range(6)]  # SLO 4 or 5 → class SLO 4
    long = [ArrivalSample(i, 2000, 512, 20.0) for i in range(4)]
    classes = workload_classes(short + long, window_s=2.0, n_classes=2)
    assert [(c.prompt_len, c.output_len, c.slo_s, c.rate) for c in classes] == [
        (100, 64, 4.0, 3.0), (2000, 512, 20.0, 2.0)]
    assert workload_classes([], 1.0, 5) == []
    assert len(workload_classes(long, 1.0, 5)) == 1  # identical points cannot be split


def test_deterministic():
    kw = dict(configs=(TP1, TP2), gpus=(4, 4), thresholds=THR)
    a, b = plan_for(1.3, **kw), plan_for(1.3, **kw)
    assert (a.instances, a.nodes, a.assignments) == (b.instances, b.nodes, b.assignments)


def test_plan_bench_writes_runs(tmp_path):
    import argparse
    import json

    from tooling import plan_bench as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "pb.json"
    args = parser.parse_args(["--gpus", "8", "--classes", "3", "--repeats", "2", "--arrivals", "50",
                              "--caches", "dual", "--json", str(out)])
    assert bench.main(args) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["gpus"] == 8 and run["classes"] == 3
    assert run["solve_s_p50"] <= run["solve_s_max"] and 0.0 <= run["gap"] <= 0.01
    assert bench.main(parser.parse_args(["--tps", "8"])) == 2  # no tp8 curve in the profile: clear error


def test_time_limit_without_incumbent_keeps_current_layout():
    cur = Layout(({"tp1": 2},))
    p = solve_plan(PlannerInput([klass(1.0)], [TP1], THR, [2], current=cur, time_limit_s=1e-12))
    assert p.status == "solver_failed" and not p.changed
    assert p.instances == {"tp1": 2} and "solver failed" in p.reason
    fresh = solve_plan(PlannerInput([klass(1.0)], [TP1], THR, [2], time_limit_s=1e-12))
    assert fresh.status == "solver_failed" and fresh.instances == {}


def test_fixed_pool_uses_every_gpu_and_prefers_more_instances():
    # Same setup as test_fewest_instances_vs_fewest_gpus (λ=0.85 fits {tp2:2} or {tp1:3}); on a fixed
    # 4-GPU pool every GPU runs an instance and, the earlier stages tied, the most instances win: {tp1:4}
    # (slack capped at 0.25 everywhere, so stage 2 does not separate them).
    kw = dict(configs=(TP1, TP2), gpus=(4,), thresholds={0.9: 2.0})
    p = plan_for(0.85, fixed_pool=True, **kw)
    assert p.instances == {"tp1": 4} and p.objectives["gpus"] == 4
    # 5 GPUs with only tp2 offered: the pack row is ≥ 4 (two TP2s), the odd GPU cannot be used
    assert plan_for(0.5, fixed_pool=True, configs=(TP2,), gpus=(5,), thresholds={0.9: 2.0}).instances == {"tp2": 2}
    with pytest.raises(PlannerError, match="fixed_pool"):
        plan_for(0.85, fixed_pool=True, allow_shrink=True, **kw)


def test_fixed_pool_hysteresis_does_not_weigh_size():
    # λ=0.3 on a fixed 4-GPU node with the current {tp1:4}: the MILP's {tp2:2} is not better in quality
    # or slack (both capped at 0.25), and on a fixed pool fewer instances are no reason to reconfigure:
    # without fixed_pool the same comparison changes (size 4 → 2, +50 %), which is pure churn.
    kw = dict(configs=(TP1, TP2), gpus=(4,), thresholds={0.9: 2.0})
    cur = Layout(({"tp1": 4},))
    assert not plan_for(0.3, fixed_pool=True, current=cur, **kw).changed
    churn = plan_for(0.3, current=cur, **kw)
    assert churn.changed and churn.instances == {"tp1": 1} and "instances" in churn.reason
    # a current layout that leaves GPUs idle is evaluated (not rejected as infeasible) and replaced on merit
    idle = plan_for(1.0, fixed_pool=True, current=Layout(({"tp1": 2},)), gpus=(4,))
    assert idle.changed and idle.instances == {"tp1": 4} and "quality 0.6 -> 0.9" in idle.reason
