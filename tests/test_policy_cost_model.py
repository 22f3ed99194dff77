import pytest

from shared.policy.cost_model import CostModel, PiecewiseLinear
from shared.policy.live import live_core, live_cost_model
from shared.policy.step_predictor import StepPredictor
from shared.policy.types import InstanceView, StepSample


def test_profile_points_and_interpolation():
    cm = CostModel.llada8b_gh200()
    assert cm.latency("tp1", 2048) == pytest.approx(0.062)
    assert cm.latency("tp4", 8192) == pytest.approx(0.0952)
    # halfway between 4096 (121.4 ms) and 6144 (177.8 ms)
    assert cm.latency("tp1", 5120) == pytest.approx((0.1214 + 0.1778) / 2)
    # beyond the last point: last slope continues
    assert cm.latency("tp1", 10240) > cm.latency("tp1", 8192)
    assert cm.latency("tp1", 1) == pytest.approx(0.0268)


def test_envelope_is_monotone():
    cm = CostModel.llada8b_gh200()
    xs = list(range(16, 9000, 64))
    env = [cm.latency_envelope("tp1", x) for x in xs]
    assert all(b >= a for a, b in zip(env, env[1:]))
    assert cm.latency_envelope("tp1", 512) == pytest.approx(0.0268)  # raw curve dips to 24.5 ms there


def test_online_refit_moves_toward_measurements():
    cm = CostModel.llada8b_gh200()
    before = cm.latency("tp1", 3072)
    for _ in range(200):
        cm.observe("tp1", 3072, 0.2)
    after = cm.latency("tp1", 3072)
    assert before < after <= 0.2 + 1e-9
    assert after == pytest.approx(0.2, rel=0.02)
    assert cm.latency("tp2", 3072) == pytest.approx(0.0652)  # other configs untouched


def test_from_profile_merges_kinds():
    data = {"device": "cpu", "model": "tiny", "points": [
        {"kind": "refresh", "tokens": 64, "latency_s": 0.010},
        {"kind": "reuse", "tokens": 64, "latency_s": 0.012},
        {"kind": "refresh", "tokens": 256, "latency_s": 0.030},
    ]}
    cm = CostModel.from_profile(data)
    assert cm.configs == ["tp1"]
    assert cm.latency("tp1", 64) == pytest.approx(0.011)
    assert cm.latency("tp1", 160) == pytest.approx(0.0205)
    with pytest.raises(ValueError):
        CostModel.named("some/profile.json")  # paths are read by shared/profiles.py, not the policy


CPU = "dilaserve-tiny/cpu/tp1-dual"
GPU = "dilaserve-tiny/h100/tp1-dual"
PROFILE = {"device_kind": "cpu", "points": [{"kind": "refresh", "tokens": 8, "latency_s": 0.004},
                                            {"kind": "refresh", "tokens": 4096, "latency_s": 0.4}]}


def test_live_cost_model_uses_profiles_and_the_prior_elsewhere():
    cm = live_cost_model("", CPU, {CPU: PROFILE})
    assert cm.configs == [CPU] and cm.latency(CPU, 4096) == pytest.approx(0.4)
    prior = live_cost_model("", GPU)  # no profile for the device: the conservative prior
    assert prior.curves[GPU].ys == CostModel.tiny_cpu().curves["tp1"].ys
    assert live_cost_model("llada8b-gh200", CPU).configs == ["tp1", "tp2", "tp4"]


def test_ensure_copies_a_curve_of_the_same_model_and_device():
    cm = CostModel({"tp1": [(8, 1.0)], CPU: [(8, 0.01)]})
    cm.ensure("dilaserve-tiny/cpu/tp1-prefix")
    cm.ensure(GPU)  # no curve of that device: the first configuration's
    assert cm.latency("dilaserve-tiny/cpu/tp1-prefix", 8) == pytest.approx(0.01)
    assert cm.latency(GPU, 8) == pytest.approx(1.0)


def test_cpu_and_gpu_workers_keep_separate_curves():
    core = live_core("dilaserve", live_cost_model("", CPU, {CPU: PROFILE}))
    core.on_instance_update(InstanceView("w-gpu", GPU, 0, False), 0.0)
    core.on_instance_update(InstanceView("w-cpu", CPU, 0, False), 0.0)
    cpu_before, gpu_before = core.cost.latency(CPU, 2048), core.cost.latency(GPU, 2048)
    for t in range(1, 50):  # the GPU runs the same steps 100x faster
        core.on_instance_update(InstanceView("w-gpu", GPU, 0, False, [StepSample(2048, 0.002)]), float(t))
    assert core.cost.latency(CPU, 2048) == cpu_before
    assert core.cost.latency(GPU, 2048) < gpu_before / 2
    gpu_now = core.cost.latency(GPU, 2048)
    for t in range(50, 100):
        core.on_instance_update(InstanceView("w-cpu", CPU, 0, False, [StepSample(2048, 1.0)]), float(t))
    assert core.cost.latency(GPU, 2048) == gpu_now and core.cost.latency(CPU, 2048) > cpu_before


def test_budget_and_throughput():
    cm = CostModel.llada8b_gh200()
    assert cm.budget_for("tp1", 0.065) == 2148  # 2048 at 62 ms, 3072 at 92.7 ms: 3 ms more buys ~100 tokens
    assert cm.throughput("tp1", 2048) == pytest.approx(2048 / 0.062)
    with pytest.raises(ValueError):
        PiecewiseLinear([])


def test_the_budget_moves_smoothly_with_the_curve():
    # A refit that nudges the 896-token step just past the limit costs a few tokens, not half the budget.
    cm = CostModel({"tp1": [(448, 0.05), (512, 0.055), (896, 0.0999), (1792, 0.2)]})
    assert cm.budget_for("tp1", 0.1) == 896
    nudged = CostModel({"tp1": [(448, 0.05), (512, 0.055), (896, 0.1001), (1792, 0.2)]})
    assert 890 <= nudged.budget_for("tp1", 0.1) < 896
    assert cm.budget_for("tp1", 10.0) == 1792  # never beyond the last profiled count
    assert cm.budget_for("tp1", 0.001) == 448  # nor below the first


def test_step_predictor_prior_interpolation_and_learning():
    sp = StepPredictor()
    assert sp.tokens_per_step(0.9) == pytest.approx(3.02)
    assert sp.tokens_per_step(0.75) == pytest.approx((3.89 + 4.77) / 2)
    assert sp.tokens_per_step(1.0) == 1.0
    assert sp.steps_left(256, 0.5) == pytest.approx(256 / 6.58)
    assert sp.steps_left(0, 0.5) == 0.0
    for _ in range(100):
        sp.observe(0.9, 40, 10)  # 4 tokens per step measured
    assert sp.tokens_per_step(0.9) == pytest.approx(4.0, rel=0.01)
    assert sp.tokens_per_step(0.5) == pytest.approx(6.58)


def test_a_uniformly_slower_machine_moves_the_sizes_not_yet_seen():
    # The profile of a faster machine; this one runs every step 2× slower, but only small steps have run.
    profile = [(16, 0.003), (112, 0.009), (512, 0.035), (1024, 0.066)]
    cm = CostModel({"tp1": profile})
    assert cm.budget_for("tp1", 0.1) == 1024
    for _ in range(400):
        cm.observe("tp1", 16, 0.006)
    assert cm.latency("tp1", 16) == pytest.approx(0.006, rel=0.02)  # the measured size, as before
    assert cm.latency("tp1", 1024) > 1.6 * 0.066  # and the rest of the curve with it (2^0.8 ≈ 1.74)
    assert cm.budget_for("tp1", 0.1) == 881  # interpolated between 512 (61 ms) and 1024 (115 ms)
    local = CostModel({"tp1": profile}, global_share=0.0)  # a refit of the two bracketing points only
    for _ in range(400):
        local.observe("tp1", 16, 0.006)
    assert local.latency("tp1", 1024) == pytest.approx(0.066) and local.budget_for("tp1", 0.1) == 1024


def test_the_shape_is_still_learned_where_it_differs():
    cm = CostModel({"tp1": [(16, 0.003), (1024, 0.066)]})
    for k in range(4000):  # small steps as profiled, large ones 1.5× slower
        cm.observe("tp1", 16, 0.003) if k % 2 else cm.observe("tp1", 1024, 0.099)
    assert cm.latency("tp1", 16) == pytest.approx(0.003, rel=0.05)
    assert cm.latency("tp1", 1024) == pytest.approx(0.099, rel=0.05)
    with pytest.raises(ValueError):
        CostModel({"tp1": [(16, 0.003)]}, global_share=1.5)
