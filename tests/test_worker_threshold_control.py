"""The worker's τ rule is the simulator's: ThresholdControl.choose == choose_threshold on the same inputs."""

import math
from types import SimpleNamespace

from services.worker.threshold_control import ThresholdControl
from shared.policy.cost_model import CostModel
from shared.policy.live import live_threshold_params
from shared.policy.step_predictor import StepPredictor
from shared.policy.threshold import batch_cost, choose_threshold, planning_deadline_left


def ctl(policy="dilaserve"):
    return ThresholdControl(live_threshold_params(policy), CostModel.tiny_cpu("tp1-dual"), StepPredictor(),
                            "tp1-dual", 8)


def test_same_choice_as_the_simulator_and_floor_beats_cap():
    c = ctl()
    c.add("a", 0.0, 3.0, 0.9, None, 20, 96, 96, 0, 8)
    c.add("b", 0.0, None, 0.6, 0.8, 20, 96, 96, 0, 8)  # cap below its floor: the floor wins
    c.add("c", 0.0, 1e9, 0.7, None, 20, 96, 96, 0, 8)
    taus = c.choose(["a", "b", "c"], 1.0, keep={"a", "b", "c"})
    bc = batch_cost(c.cost, "tp1-dual", 3 * 116, 3, 8)
    want = choose_threshold(masked_left=96, n_refresh=12, deadline_left_s=planning_deadline_left(0.0, 3.0, 1.0, 0.8),
                            cap=0.9, min_threshold=0.0, batch=bc, predictor=c.predictor, params=c.params)
    assert taus["a"] == want
    assert taus["b"] == 0.8 and taus["c"] == 0.7  # no deadline pressure: the highest the cap/floor allow
    c.set_cap("c", 0.9)
    assert c.choose(["c"], 1.0, keep={"c"})["c"] == 0.9 and set(c.reqs) == {"c"}  # a and b forgotten
    assert c.initial(0.6, 0.95) == 0.95 and c.initial(0.9, None) == 0.9
    assert ctl("fcfs").initial(0.5, None) == 0.9  # fixed τ for the baselines


def test_progress_refit_and_samples():
    c = ctl()
    c.add("a", 0.0, math.inf, 0.9, None, 20, 16, 16, 0, 8)
    before = c.cost.latency("tp1-dual", 200)
    out = SimpleNamespace(request_id="a", committed_token_ids=[5, 6, 7], step_kind="refresh", block_index=0,
                          threshold=0.9)
    c.observe(1.0, 200, [out])
    assert c.reqs["a"].masked_left == 13 and c.reqs["a"].blocks_refreshed == 1
    assert c.cost.latency("tp1-dual", 200) > before
    steps, tps = c.take_samples()
    assert [(s.tokens, s.latency_s) for s in steps] == [(200, 1.0)]
    assert [(t.threshold, t.tokens, t.steps) for t in tps] == [(0.9, 3, 1)]
    assert c.take_samples() == ([], [])
