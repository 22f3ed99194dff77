import pytest

from shared.policy.cost_model import CostModel
from shared.policy.quality import QualityModel
from shared.policy.step_predictor import StepPredictor
from shared.policy.threshold import (BatchCost, ThresholdParams, batch_cost, choose_threshold,
                                     planning_deadline_left, time_left)

P = ThresholdParams()
SP = StepPredictor()
BC = BatchCost(refresh_s=0.05, reuse_s=0.03)


def pick(deadline_left, cap=1.0, floor=0.0, params=P):
    return choose_threshold(masked_left=256, n_refresh=8, deadline_left_s=deadline_left, cap=cap,
                            min_threshold=floor, batch=BC, predictor=SP, params=params)


def test_time_left_formula():
    t = time_left(256, 8, 0.9, BC, SP)
    assert t == pytest.approx(8 * 0.05 + (256 / 3.02 - 8) * 0.03)
    assert time_left(10, 3, 0.5, BC, SP) == pytest.approx(3 * 0.05)  # reuse_left never negative


def test_highest_fitting_threshold():
    t09, t07, t05 = (time_left(256, 8, tau, BC, SP) for tau in (0.9, 0.7, 0.5))
    assert pick(t09 + 0.01) == 0.9
    assert pick(t07 + 0.01) == 0.7
    assert pick(t05 + 0.01) == 0.5
    assert pick(t05 - 0.5) == 0.5  # nothing fits: lowest allowed


def test_cap_and_floor():
    assert pick(100.0, cap=0.7) == 0.7
    assert pick(0.0, floor=0.8) == 0.8
    assert pick(0.0, cap=0.6, floor=0.8) == 0.8  # the quality floor wins over the load cap
    assert pick(100.0, cap=0.75) == 0.7


def test_fixed_mode_ignores_deadline_but_keeps_floor():
    fixed = ThresholdParams(mode="fixed", fixed=0.9)
    assert pick(0.0, params=fixed) == 0.9
    assert pick(100.0, params=ThresholdParams(mode="fixed", fixed=0.5), floor=0.7) == 0.7


def test_batch_cost_and_planning_margin():
    cm = CostModel.llada8b_gh200()
    bc = batch_cost(cm, "tp1", 4 * 512, 4, 32)
    assert bc.refresh_s == pytest.approx(0.062)
    assert bc.reuse_s == pytest.approx(cm.latency("tp1", 128))
    assert planning_deadline_left(10.0, 20.0, 12.0, 0.8) == pytest.approx(6.0)


def test_quality_model_anchors_and_monotone():
    q = QualityModel()
    assert q.accuracy(1.0) == pytest.approx(0.793)
    assert q.accuracy(0.9) == pytest.approx(0.785)
    vals = [q.accuracy(t) for t in (0.9, 0.8, 0.7, 0.6, 0.5)]
    assert all(a > b for a, b in zip(vals, vals[1:]))
    m = QualityModel.from_points({0.5: 0.4, 0.9: 0.6})
    assert m.accuracy(0.7) == pytest.approx(0.5)
