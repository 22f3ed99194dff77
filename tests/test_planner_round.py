"""The planning round (shared/policy/planner/round.py) that the planner service and the simulated planner
share: window, rate estimate, knobs, fill, confirmation. Pure: plain data in, plain data out.

Setup as tests/test_planner_milp.py: one class of 64 output tokens, block 32, τ 0.9 at 2 tokens/step,
TP1 steps of 0.1 s → 3.2 s a request, so one TP1 at ρ = 1 carries 1 / 3.2 = 0.3125 req/s at τ 0.9.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.planner.service import round_knobs
from shared.config import PlannerConfig
from shared.policy.cost_model import CostModel
from shared.policy.planner.configs import config_spec, config_specs
from shared.policy.planner.round import (RoundInput, RoundKnobs, fill_idle, peak_factor, plan_round,
                                         planner_input, window_span)
from shared.policy.planner.types import ArrivalSample, ConfigSpec, Layout, PlannerError
from shared.sim.planner import SimPlannerSpec

TP1 = ConfigSpec(name="tp1", tp=1, cache="dual", latency=((32.0, 0.1),), batch_sizes=(1,))
TP2 = ConfigSpec(name="tp2", tp=2, cache="dual", latency=((32.0, 0.07),), batch_sizes=(1,))
THR = {0.9: 2.0}
KNOBS = RoundKnobs(window_s=30.0, n_classes=1, peak_bin_s=10.0, utilization=1.0, time_limit_s=30.0)
NOW = 100.0


def burst(n: int = 6, start: float = NOW - 9.5, gap: float = 1.5) -> list[ArrivalSample]:
    """``n`` arrivals in the window's last 10 s bin: mean 0.2 req/s over 30 s, 0.6 req/s in the bin."""
    return [ArrivalSample(start + gap * i, 0, 64, 10.0) for i in range(n)]


def rnd(arrivals, current=None, knobs=KNOBS, configs=(TP1,), gpus=(2,), **kw) -> RoundInput:
    return RoundInput(arrivals, NOW, current, list(configs), list(gpus), knobs, 32, THR, **kw)


def test_window_span_and_peak_factor():
    assert window_span(NOW, 30.0, None) == 30.0
    assert window_span(NOW, 30.0, NOW - 12.0) == 12.0 and window_span(NOW, 30.0, NOW + 1.0) == 0.0
    even = [ArrivalSample(t + 0.5, 10, 32, 5.0) for t in range(30)]
    assert peak_factor(even, 30.0, 30.0, 10.0) == 1.0
    assert peak_factor(burst(), NOW, 30.0, 10.0) == 3.0
    assert peak_factor(burst(), NOW, 30.0, 0.0) == 1.0 and peak_factor(burst(), NOW, 10.0, 10.0) == 1.0


def test_the_round_plans_for_the_busiest_bin():
    # 0.6 req/s in the last bin needs two TP1s at τ 0.9; the window's mean (0.2 req/s) fits in one
    peak = plan_round(rnd(burst()))
    assert peak.changed and peak.instances == {"tp1": 2}
    mean = plan_round(rnd(burst(), knobs=replace(KNOBS, peak_bin_s=0.0)))
    assert mean.instances == {"tp1": 1}


def test_the_window_is_what_was_observed_and_nothing_else():
    stale = [ArrivalSample(NOW - 40.0 + i, 0, 64, 10.0) for i in range(9)]  # before the window
    future = [ArrivalSample(NOW + 1.0, 0, 64, 10.0)] * 9  # stamped after now
    classes = planner_input(rnd(stale + burst() + future), burst(), 30.0).classes
    assert [c.count for c in classes] == [6]
    # observed for 10 s only: those 6 arrivals are 0.6 req/s (the span, not the full window)
    short = plan_round(rnd(burst(), knobs=replace(KNOBS, peak_bin_s=0.0),
                           observed_since_s=NOW - 10.0))
    assert short.instances == {"tp1": 2}
    assert plan_round(rnd([], observed_since_s=NOW)).instances == {"tp1": 1}  # nothing seen: the minimum


def test_pool_knobs_set_the_slack_cap_and_the_fill():
    assert planner_input(rnd(burst()), burst(), 30.0).slack_cap == 0.25
    fixed = planner_input(rnd(burst(), knobs=RoundKnobs(fixed_pool=True)), burst(), 30.0)
    assert fixed.fixed_pool and fixed.slack_cap == 1.0
    assert planner_input(rnd(burst(), knobs=RoundKnobs(slack_cap=0.5)), burst(), 30.0).slack_cap == 0.5
    # GPUs a plan leaves idle run the smallest configuration (a 3-GPU node with one TP2)
    assert fill_idle([{"tp2": 1}, {}], [3, 1], [TP2, TP1]) == [{"tp2": 1, "tp1": 1}, {"tp1": 1}]
    p = plan_round(rnd(burst(), knobs=replace(KNOBS, fixed_pool=True), gpus=(3,)))
    assert p.changed and p.instances == {"tp1": 3} and p.nodes == [{"tp1": 3}]


def test_confirm_decides_changed_plans_only():
    seen = []

    def confirm(window, end_s, span_s, current, proposed, ok=True):
        seen.append((len(window), end_s, span_s, current.totals(), proposed.totals()))
        return ok, "note"

    cur = Layout(({"tp1": 1},))
    took = plan_round(rnd(burst(), current=cur), confirm)
    assert took.changed and took.instances == {"tp1": 2} and took.reason.endswith("; note")
    assert seen == [(6, NOW, 30.0, {"tp1": 1}, {"tp1": 2})]
    no = plan_round(rnd(burst(), current=cur), lambda *a: confirm(*a, ok=False))
    assert not no.changed and no.instances == {"tp1": 1} and no.nodes == [{"tp1": 1}]
    assert "changed:" in no.reason and no.reason.endswith("; note")
    seen.clear()
    same = plan_round(rnd(burst(), current=Layout(({"tp1": 2},))), confirm)  # the MILP keeps it: not asked
    assert not same.changed and seen == []


def test_service_and_simulator_share_the_round_defaults():
    live, sim = round_knobs(PlannerConfig()), SimPlannerSpec().knobs()
    assert live.peak_bin_s == sim.peak_bin_s == RoundKnobs().peak_bin_s
    assert sim.fixed_pool and not live.fixed_pool and live.slack_cap is sim.slack_cap is None
    a, b = plan_round(rnd(burst())), plan_round(rnd(burst()))
    assert a.solve_s >= 0 and replace(a, solve_s=0.0) == replace(b, solve_s=0.0)  # deterministic but timing


def test_config_specs_price_each_configuration_by_its_own_curve():
    cost = CostModel.llada8b_gh200()
    specs = config_specs(cost, ("tp1", "tp4"), budget_step_s=0.065)
    assert [(s.name, s.tp, s.cache) for s in specs] == [("tp1", 1, "dual"), ("tp4", 4, "dual")]
    assert specs[1].latency == tuple(zip(cost.curves["tp4"].xs, cost.curves["tp4"].ys))
    assert specs[0].max_tokens == cost.budget_for("tp1", 0.065) and config_spec(cost, "tp2").max_tokens == 0.0
    tiny = CostModel.tiny_cpu("tp1-dual")
    assert config_spec(tiny, "tp1-dual").cache == "dual"
    with pytest.raises(PlannerError, match=r"'tp2-dual' has no latency curve .*tp1-dual"):
        config_specs(tiny, ["tp1-dual", "tp2-dual"])
