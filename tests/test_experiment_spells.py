"""The machine's speed over one live run: when the workers' steps began (from their heartbeats), the
windows' factors ``dilaserve experiment`` measures from them, and the simulator stepping slower inside
a slow spell only."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from shared.schemas.cluster import StepLatencySample, WorkerHeartbeat
from shared.sim.effects import ClusterEffects
from shared.sim.engine import simulate
from shared.sim.workload import SimRequest
from tooling.experiment_calibrate import SPELL_MIN_STEPS, run_spells
from tooling.experiment_live import step_starts
from tooling.experiment_metrics import STEP_TIMES


def _finish(effects: ClusterEffects, reqs: list[SimRequest]) -> list[float]:
    res = simulate("fcfs", reqs, ["tp1"], "tiny-cpu", 0, block_len=8, effects=effects)
    return [r.finish_s - r.arrival_s for r in sorted(res.requests, key=lambda r: r.arrival_s)]


def test_a_spell_slows_only_the_steps_that_start_inside_it():
    reqs = [SimRequest(f"r{i}", i * 10.0, 16, 32, 30.0) for i in range(3)]  # alone: at 0, 10 and 20 s
    base = _finish(ClusterEffects(), reqs)
    spell = _finish(ClusterEffects(step_scale_over_time=((9.0, 2.0), (15.0, 1.0))), reqs)
    assert spell[0] == base[0] and spell[2] == base[2]
    assert spell[1] == pytest.approx(2 * base[1])
    assert _finish(ClusterEffects(step_scale_over_time=((0.0, 1.0),)), reqs) == base


def test_time_factors_hold_from_their_knot_and_bad_knots_are_refused():
    e = ClusterEffects(step_scale_over_time=((1.0, 1.5), (3.0, 0.8)))
    assert [e.time_scale(t) for t in (0.0, 0.99, 1.0, 2.9, 3.0, 99.0)] == [1.0, 1.0, 1.5, 1.5, 0.8, 0.8]
    assert ClusterEffects().time_scale(5.0) == 1.0
    for bad in (((3.0, 1.0), (1.0, 1.0)), ((1.0, 0.0),), ((1.0, 1.0), (1.0, 2.0))):
        with pytest.raises(ValueError, match="step_scale_over_time"):
            ClusterEffects(step_scale_over_time=bad)


def test_simulate_reads_spells_and_refuses_bad_ones():
    from shared.sim.cli import add_effect_arguments, effects_from_args
    parser = argparse.ArgumentParser()
    add_effect_arguments(parser)
    e = effects_from_args(parser.parse_args(["--step-scale-over-time", "0:1,5.5:1.3,8:1"]))
    assert e.step_scale_over_time == ((0.0, 1.0), (5.5, 1.3), (8.0, 1.0))
    for bad in ("5", "5:x", "8:1,5:1", "1:-1"):
        with pytest.raises(SystemExit, match="step-scale-over-time|step_scale_over_time"):
            effects_from_args(parser.parse_args(["--step-scale-over-time", bad]))


def test_step_starts_walk_back_from_the_heartbeat_through_latencies_and_gaps():
    samples = [StepLatencySample(16, 0.010, 1, None), StepLatencySample(16, 0.020, 1, 0.005),
               StepLatencySample(32, 0.030, 2, 0.002)]
    hb = WorkerHeartbeat("w", "c", 0, 0, 8, 0.0, 0.0, 3, sent_s=101.0, step_samples=samples)
    # the last step ends at the send (1.0 s after the origin), each earlier one its gap before the next
    assert step_starts(hb, 100.0) == pytest.approx([1.0 - 0.030 - 0.002 - 0.020 - 0.005 - 0.010,
                                                    1.0 - 0.030 - 0.002 - 0.020, 1.0 - 0.030])


def test_spells_are_each_windows_speed_against_the_whole_run(tmp_path: Path):
    from shared.profiles import SHIPPED_MODEL_DIR, profile_path
    from tooling.experiment_sim import SIM_CONFIG, SimSetup, profile_cost
    cost = profile_cost(profile_path(SHIPPED_MODEL_DIR, "cpu"))
    setup = SimSetup(2, cost, 16, None, None, 0.4, 0)
    n = SPELL_MIN_STEPS
    # 0–1 s and 2–3 s at the profile's speed, 1–2 s twice as slow, 3–4 s too few steps to judge
    rows = [(w + i / (2 * n), t, (2.0 if w == 1 else 1.0) * cost.latency(SIM_CONFIG, t))
            for w in (0, 1, 2) for i in range(n) for t in (16, 256)] + [(3.5, 16, 9.0 * cost.latency(SIM_CONFIG, 16))]
    (tmp_path / STEP_TIMES).write_text(json.dumps(rows))
    knots = run_spells(str(tmp_path), setup, ClusterEffects())
    assert [t for t, _ in knots] == [0.0, 1.0, 2.0, 3.0] and knots[3][1] == 1.0
    assert knots[1][1] / knots[0][1] == pytest.approx(2.0, rel=1e-3) and knots[0][1] == knots[2][1] < 1.0
    assert run_spells(str(tmp_path / "none"), setup, ClusterEffects()) == ()  # a run saved without step times


def test_each_repeat_is_simulated_with_its_own_slow_spell(tmp_path: Path):
    # two repeats: the first ran 3× slower from 4 to 6 s (its mean 1.4× its fast part), the second
    # evenly; each is simulated with its own windows' factors, which the report lists per repeat
    from shared.profiles import profile_path
    from shared.sim.workload import SloClass
    from tooling.experiment_metrics import STEPS
    from tooling.experiment_run import ExperimentSpec, RunKey, run_sim
    from tooling.experiment_sim import SIM_CONFIG, profile_cost
    from tooling.experiment_workload import WorkloadSpec, build_workload
    from tooling.loadgen import SERVED, Outcome
    wl = WorkloadSpec(trace="azure_conv", duration_s=10.0, seed=3, slo_ms=5000.0,
                      classes=(SloClass("default", 1.0, 1.0),), max_tokens=40, block_len=8, max_positions=128,
                      tasks=("add", "sub", "rev"))
    spec = ExperimentSpec(policies=["fcfs"], rates=[2.0], repeats=2, sim_cores=2.0, workers=1, workload=wl)
    work = {2.0: build_workload(wl, 2.0, lambda text: [ord(c) % 64 for c in text])}
    profile = profile_cost(profile_path(spec.model_dir, "cpu"))
    runs = []
    for repeat, slow in ((0, 3.0), (1, 1.0)):
        rows = [(i / 10, t, (slow if 4.0 <= i / 10 < 6.0 else 1.0) * 2.0 * profile.latency(SIM_CONFIG, t))
                for i in range(100) for t in (16, 64)]
        run_dir = tmp_path / f"r{repeat}"
        run_dir.mkdir()
        (run_dir / STEP_TIMES).write_text(json.dumps(rows))
        (run_dir / STEPS).write_text(json.dumps([(t, lat) for _, t, lat in rows]))
        runs.append({"policy": "fcfs", "rps": 2.0, "repeat": repeat, "run_dir": str(run_dir),
                     "live": {"slo_attainment": 1.0}, "cpu_cores": {"services": 0.2},
                     "warmup_overhead_parts_p50_ms": {"to_scheduler_ms": 2.0, "to_worker_ms": 1.0,
                                                      "result_return_ms": 1.0}})
    pairs = [(RunKey(k, 2.0, "fcfs"), w, Outcome(True, 0.1, slo_met=True, kind=SERVED, threshold_mean=0.9, steps=5,
                                                 timings_ms={"worker_forward_ms": 50.0, "worker_ms": 60.0}))
             for k in (0, 1) for w in work[2.0]]
    sim, _ = run_sim(spec, work, runs, pairs)
    first, second = (r["spells"] for r in sim[(2.0, "fcfs")]["repeats"])
    assert [f for t, f in first if 4.0 <= t < 6.0] == [pytest.approx(3.0 / 1.4, rel=1e-3)] * 2
    assert {f for _, f in second} == {1.0}
