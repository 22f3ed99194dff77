"""Measured profiles on disk → the live cost models of workers and the scheduler, per device kind."""

import json

from services.scheduler.main import scheduler_cost_model
from services.supervisor.main import worker_env
from services.worker.device import torch_device_kind, worker_instance_config
from services.worker.threshold_control import worker_threshold_control
from shared.config import load_config
from shared.policy.cost_model import CostModel
from shared.profiles import SHIPPED_MODEL_DIR, cost_model_named, load_profiles, profile_path

CPU = "dilaserve-tiny/cpu/tp1-dual"


def _profile(kind: str, ms: float) -> dict:
    return {"device": kind, "device_kind": kind, "points": [
        {"kind": "refresh", "tokens": 8, "latency_s": ms / 1000}, {"kind": "reuse", "tokens": 512, "latency_s": ms / 10}]}


def test_the_shipped_model_has_a_cpu_profile_the_worker_and_scheduler_read():
    data = json.loads(profile_path(SHIPPED_MODEL_DIR, "cpu").read_text())
    assert data["device_kind"] == "cpu" and len(data["points"]) >= 8
    cfg = load_config(env={})
    control = worker_threshold_control(cfg.scheduler, cfg.worker, worker_instance_config(cfg.worker, "dual"))
    measured = CostModel.from_profile(data, CPU)
    assert control.config == CPU and control.cost.curves[CPU].ys == measured.curves[CPU].ys
    assert scheduler_cost_model(cfg).curves[CPU].ys == measured.curves[CPU].ys


def test_worker_controller_follows_the_configured_policy():
    cfg = load_config(env={"DILASERVE_SCHEDULER_POLICY": "fcfs"})
    control = worker_threshold_control(cfg.scheduler, cfg.worker, worker_instance_config(cfg.worker, "dual"))
    assert control.params.mode == "fixed"


def test_profiles_beside_the_model_one_per_device_kind(tmp_path):
    for kind, ms in (("cpu", 10.0), ("h100", 1.0)):
        profile_path(tmp_path, kind).write_text(json.dumps(_profile(kind, ms)))
    (tmp_path / "profile-broken.json").write_text("{not json")
    assert sorted(load_profiles("", tmp_path)) == ["cpu", "h100"]
    cfg = load_config(env={"DILASERVE_WORKER_MODEL_DIR": str(tmp_path)})
    cm = scheduler_cost_model(cfg)
    name = tmp_path.resolve().name
    cpu, gpu = f"{name}/cpu/tp1-dual", f"{name}/h100/tp1-dual"
    assert sorted(cm.configs) == sorted([cpu, gpu]) and cm.latency(gpu, 8) < cm.latency(cpu, 8)
    assert list(load_profiles(str(profile_path(tmp_path, "h100")), tmp_path)) == ["h100"]  # scheduler.cost_profile


def test_without_a_profile_the_prior(tmp_path):
    cfg = load_config(env={"DILASERVE_WORKER_MODEL_DIR": str(tmp_path)})
    control = worker_threshold_control(cfg.scheduler, cfg.worker, worker_instance_config(cfg.worker, "prefix"))
    assert control.config == f"{tmp_path.resolve().name}/cpu/tp1-prefix"
    assert control.cost.curves[control.config].ys == CostModel.tiny_cpu().curves["tp1"].ys


def test_simulator_reads_profile_paths(tmp_path):
    path = profile_path(tmp_path, "cpu")
    path.write_text(json.dumps(_profile("cpu", 10.0)))
    assert cost_model_named(str(path)).latency("tp1", 8) == 0.01
    assert cost_model_named("llada8b-gh200").configs == ["tp1", "tp2", "tp4"]


def test_device_kind_and_supervisor_env():
    assert torch_device_kind("cpu") == "cpu"
    assert worker_env("tp1-prefix") == {"DILASERVE_WORKER_CACHE_MODE": "prefix"}
    assert worker_env("dilaserve-tiny/h100/tp1-dual") == {"DILASERVE_WORKER_CACHE_MODE": "dual",
                                                          "DILASERVE_WORKER_DEVICE": "cuda"}


def test_worker_service_default_controller_uses_the_configured_policy(monkeypatch):
    from types import SimpleNamespace

    from services.worker.service import WorkerService
    from shared.config import WorkerConfig

    monkeypatch.setenv("DILASERVE_SCHEDULER_POLICY", "fcfs")
    svc = WorkerService(WorkerConfig(), "w", None, None, SimpleNamespace(cache_mode="prefix"), None)
    try:
        assert svc.control.params.mode == "fixed"
        assert svc.instance_config == "dilaserve-tiny/cpu/tp1-prefix"
    finally:
        svc._forward.shutdown()


def test_the_step_predictors_start_from_the_models_own_tokens_per_step(tmp_path):
    from shared.policy.live import live_core
    from shared.policy.step_predictor import LLADA_TPS_PRIOR
    from shared.profiles import read_tps_prior

    shipped = read_tps_prior(SHIPPED_MODEL_DIR)
    assert shipped is not None and shipped[0.5] > 1.8 * shipped[0.9]  # the tiny model's, not LLaDA's
    cfg = load_config(env={})
    control = worker_threshold_control(cfg.scheduler, cfg.worker, worker_instance_config(cfg.worker, "dual"))
    assert control.predictor.tokens_per_step(0.7) == shipped[0.7]
    core = live_core("dilaserve", CostModel.tiny_cpu(), tps_prior=shipped)
    assert core.predictor.tokens_per_step(0.7) == shipped[0.7]
    # a model without the file, or with a broken one: LLaDA's built-in prior
    assert read_tps_prior(tmp_path) is None
    for broken in ("{not json", '{"tokens_per_step": [1, 2]}', '{"tokens_per_step": {"x": 3}}'):
        (tmp_path / "tokens-per-step.json").write_text(broken)
        assert read_tps_prior(tmp_path) is None, broken
    assert live_core("dilaserve", CostModel.tiny_cpu()).predictor.tokens_per_step(0.7) == LLADA_TPS_PRIOR[0.7]
