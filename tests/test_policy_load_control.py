from shared.policy.load_control import LoadController, LoadItem, demand
from shared.policy.step_predictor import StepPredictor

SP = StepPredictor()
CANDS = (0.9, 0.8, 0.7, 0.6, 0.5)


def item(i, progress=0.0, deadline=10.0, floor=0.0):
    masked = int(256 * (1 - progress))
    return LoadItem(f"r{i}", masked, -(-masked // 32), 512, 32, progress, deadline, floor)


def test_demand_formula():
    it = item(0)
    assert demand(it, 0.9, SP) == 8 * 512 + (256 / 3.02 - 8) * 32
    assert demand(it, 0.5, SP) < demand(it, 0.9, SP)


def test_light_load_all_top_and_overload_all_bottom():
    items = [item(i) for i in range(10)]
    lc = LoadController(CANDS, "window")
    caps = lc.caps(items, supply_tps=1e9, window_s=10, now_s=0, predictor=SP)
    assert set(caps.values()) == {0.9}
    caps = lc.caps(items, supply_tps=1.0, window_s=10, now_s=0, predictor=SP)
    assert set(caps.values()) == {0.5}


def test_window_prefers_most_advanced():
    items = [item(0, 0.1), item(1, 0.8), item(2, 0.5)]
    need_min = sum(demand(i, 0.5, SP) for i in items)
    lc = LoadController(CANDS, "window")
    caps = lc.caps(items, supply_tps=(need_min + 1200) / 10, window_s=10, now_s=0, predictor=SP)
    assert caps["r1"] >= caps["r2"] >= caps["r0"]
    assert caps["r1"] > caps["r0"]
    total = sum(demand(i, caps[i.request_id], SP) for i in items)
    assert total <= need_min + 1200 + 1e-6


def test_deadline_mode_earliest_deadline_gets_room_and_floors_hold():
    items = [item(0, deadline=30.0), item(1, deadline=5.0), item(2, deadline=30.0, floor=0.8)]
    lc = LoadController(CANDS, "deadline")
    need_min = sum(demand(i, 0.5, SP) for i in items)
    caps = lc.caps(items, supply_tps=need_min / 4.0, window_s=0, now_s=0.0, predictor=SP)
    assert caps["r2"] >= 0.8
    assert caps["r1"] >= caps["r0"]
    assert lc.due(0.5) is False and lc.due(1.0) is True
