"""`dilaserve experiment`: sweep order, one workload for both drivers, aggregation over repeats, the
report from synthetic outcomes, the simulator's live-cluster effects, and one small live run."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pytest

from shared.sim.effects import ClusterEffects
from shared.sim.engine import simulate
from shared.sim.runner import SimSpec, workload_rows
from shared.sim.workload import SimRequest, SloClass, load_trace
from tooling.experiment_metrics import aggregate, speeds_by_task, spread, summarize_run, tokens_per_step
from tooling.experiment_report import points, write_json, write_plots
from tooling.experiment_run import ExperimentSpec, RunKey, run_sim, sweep_order
from tooling.experiment_workload import WorkloadSpec, build_workload, slo_classes, window_rows
from tooling.loadgen import CONNECTION_ERROR, REFUSED, SERVED, Outcome

MIX = "interactive:0.3:2:1,batch:0.7:6:0:0.8"


def encode(text: str) -> list[int]:
    return [ord(c) % 64 for c in text]  # one token per character, as the tiny model's tokenizer


def wspec(**kw) -> WorkloadSpec:
    base = dict(trace="azure_conv", duration_s=30.0, seed=3, slo_ms=400.0, classes=slo_classes(MIX), max_tokens=40,
                block_len=8, max_positions=128, tasks=("add", "sub", "rev"))
    return WorkloadSpec(**{**base, **kw})


# --- sweep order -------------------------------------------------------------------------------------------
def test_sweep_interleaves_policies_and_rates_inside_each_repeat():
    pols, rates = ["fcfs", "balance", "tedi", "dilaserve"], [10.0, 20.0, 30.0]
    order = sweep_order(pols, rates, 3)
    assert len(order) == 3 * 3 * 4
    for k in range(3):
        block = order[k * 12:(k + 1) * 12]
        assert {r.repeat for r in block} == {k}
        assert Counter((r.rps, r.policy) for r in block) == Counter((x, p) for x in rates for p in pols)
        for a, b in zip(block, block[1:]):
            assert a.policy != b.policy  # never two runs of one policy back to back
    assert [order[k * 12].policy for k in range(3)] == ["fcfs", "balance", "tedi"]  # the first one rotates


# --- workload ----------------------------------------------------------------------------------------------
def test_live_and_simulated_requests_share_arrivals_lengths_and_slo_classes():
    spec = wspec()
    reqs = build_workload(spec, 20.0, encode)
    rows = window_rows("azure_conv", 20.0, 30.0)
    assert len(reqs) == len(rows) == 600  # the window holds rate × duration
    assert [r.shot.at_s for r in reqs] == [r.sim.arrival_s for r in reqs] == [row.t for row in rows]
    assert max(r.sim.arrival_s for r in reqs) < 30.0
    classes = {c.name: c for c in spec.classes}
    for r in reqs:
        assert r.sim.prompt_len == len(encode(r.shot.prompt))
        assert r.sim.output_len == r.shot.max_tokens == min(40, 128 - r.sim.prompt_len)
        c = classes[r.sim.cls]
        assert r.shot.dlm["slo_ms"] == pytest.approx(r.sim.slo_s * 1000) == pytest.approx(c.multiplier * 400)
        assert r.shot.dlm["priority"] == r.sim.priority == c.priority
        assert r.shot.dlm.get("min_threshold", 0.0) == r.sim.min_threshold == c.min_threshold
    share = sum(r.sim.cls == "interactive" for r in reqs) / len(reqs)
    assert 0.2 < share < 0.4
    again = build_workload(spec, 20.0, encode)
    assert [(r.shot, r.sim) for r in again] == [(r.shot, r.sim) for r in reqs]  # every repeat replays the same


def test_window_keeps_the_trace_shape_and_trace_basis_is_simulates_rescaling():
    trace = [row.t for row in load_trace("azure_conv")[:61]]
    win = [row.t for row in window_rows("azure_conv", 6.0, 10.0)]
    assert len(win) == 60 and win[0] == 0.0
    assert win == pytest.approx([t * 10.0 / trace[60] for t in trace[:60]])  # one time factor: same bursts
    reqs = build_workload(wspec(rate_basis="trace"), 20.0, encode)
    rows = workload_rows(SimSpec(trace="azure_conv", duration_s=30.0, seed=3), 20.0)
    assert [r.sim.arrival_s for r in reqs] == [row.t for row in rows]
    long = window_rows("azure_conv", 30000.0, 1.0)  # more arrivals than the trace has: tiled
    assert len(long) == 30000 and long == sorted(long, key=lambda r: r.t)


def test_canvas_is_clipped_to_the_context_and_tedi_gets_the_mean_slo():
    spec = wspec(max_positions=20, max_tokens=16, tasks=("add", "sub"))
    reqs = build_workload(spec, 10.0, encode)
    assert all(r.sim.prompt_len + r.sim.output_len == 20 for r in reqs)
    assert spec.mean_slo_s() == pytest.approx((0.3 * 2 + 0.7 * 6) * 0.4)


# --- metrics and aggregation -------------------------------------------------------------------------------
def _req(i: int, cls: str = "default", out: int = 32, task: str = "add") -> object:
    from tooling.experiment_workload import Request
    from tooling.loadgen import Shot
    return Request(Shot(i * 0.1, "1+1=", "2", task, out, {"slo_ms": 400}),
                   SimRequest(f"r{i:06d}", i * 0.1, 4, out, 0.4, 0, 0.0, cls))


def _served(latency: float, met: bool, correct: bool, tau: float = 0.9, steps: int = 8) -> Outcome:
    return Outcome(True, latency, slo_met=met, correct=correct, kind=SERVED, http_status=200, threshold_mean=tau,
                   steps=steps, timings_ms={"worker_ms": 100.0, "worker_forward_ms": 80.0})


def test_run_summary_counts_refusals_and_errors_as_misses():
    work = [_req(0, "a"), _req(1, "a"), _req(2, "b", 16), _req(3, "b")]
    outs = [_served(0.2, True, True, 0.9), _served(0.5, False, False, 0.6),
            Outcome(False, 0.01, error="HTTP 503", kind=REFUSED, http_status=503),
            Outcome(False, 1.0, error="read", kind=CONNECTION_ERROR)]
    s = summarize_run(work, outs, duration_s=2.0)
    assert s["slo_attainment"] == 0.25 and s["slo_attainment_served"] == 0.5
    assert s["goodput_rps"] == 0.5 and s["accuracy"] == 0.5
    assert s["mean_threshold"] == pytest.approx(0.75)  # weighted by canvas (32 and 32)
    assert s["outcomes"]["refused_deadline_unmeetable"] == 1 and s["outcomes"]["connection_errors"] == 1
    assert s["attainment_by_class"] == {"a": 0.5, "b": 0.0}
    with pytest.raises(ValueError):
        summarize_run(work, outs[:3], 2.0)


def test_tokens_per_step_pools_requests_that_ran_at_one_tau():
    work = [_req(0), _req(1), _req(2)]
    outs = [_served(0.1, True, True, 0.9, 8), _served(0.1, True, True, 0.9, 4), _served(0.1, True, True, 0.73, 2)]
    assert tokens_per_step(list(zip(work, outs)), (0.9, 0.8, 0.7)) == {0.9: round(64 / 12, 4)}


def test_each_task_keeps_the_speeds_its_requests_decoded_at():
    work = [_req(0, task="cum"), _req(1, task="cum"), _req(2, task="path"), _req(3, task="path")]
    outs = [_served(0.1, True, True, 0.9, 4), _served(0.1, True, True, 0.9, 4), _served(0.1, True, True, 0.9, 16),
            _served(0.1, True, True, 0.77, 2)]  # the last ran at no single τ: not a speed sample
    pairs = list(zip(work, outs))
    tps = tokens_per_step(pairs, (0.9,))
    assert tps == {0.9: 4.0}  # 96 tokens in 24 steps
    assert speeds_by_task(pairs, tps) == {"cum": [2.0, 2.0], "path": [0.5]}


def test_simulated_requests_draw_their_task_speed_and_slow_ones_take_more_steps():
    from tooling.experiment_sim import with_speeds
    work = [_req(i, task="cum" if i % 2 else "path") for i in range(6)]
    drawn = with_speeds(work, {"cum": [2.0], "path": [0.5, 0.5]}, seed=1)
    assert [r.sim.speed for r in drawn] == [0.5, 2.0] * 3
    assert with_speeds(work, {}, seed=1)[0].sim.speed == 1.0  # a task never measured: the mean
    from dataclasses import replace
    slow, fast = (replace(r, speed=v) for r, v in ((_lone()[0], 0.5), (_lone()[0], 2.0)))
    steps = {}
    for r in (slow, fast):
        (res,) = simulate("fcfs", [r], ["tp1"], "tiny-cpu", 0, block_len=8, truth_tps={0.9: 4.0}).requests
        steps[r.speed] = res.refresh_steps + res.reuse_steps
    assert steps == {0.5: 16, 2.0: 4}  # 32 tokens at 2 and at 8 a step (blocks of 8)


def test_a_request_keeps_its_own_speed_at_each_tau_it_was_measured_at():
    from dataclasses import replace
    from tooling.experiment_metrics import speeds_by_request
    from tooling.experiment_sim import with_speeds
    work = [_req(0, task="path"), _req(1, task="path")]
    tps = {0.9: 4.0, 0.7: 8.0}
    # request 0: slow at τ 0.9 in two runs (16 steps for 32 tokens), fast at τ 0.7; request 1 ran at no one τ
    pairs = [(10.0, work[0], _served(0.1, True, True, 0.9, 16)), (10.0, work[0], _served(0.1, True, True, 0.9, 16)),
             (10.0, work[0], _served(0.1, True, True, 0.7, 2)), (10.0, work[1], _served(0.1, True, True, 0.77, 4))]
    own = speeds_by_request(pairs, tps)
    assert own == {(10.0, "r000000"): {0.7: 2.0, 0.9: 0.5}}
    sim = with_speeds(work, {"path": [1.5]}, seed=1, own={"r000000": own[(10.0, "r000000")]})
    assert sim[0].sim.speed_by_tau == ((0.7, 2.0), (0.9, 0.5)) and sim[0].sim.speed == 1.5  # 1.5: other τ
    assert sim[1].sim.speed_by_tau == () and sim[1].sim.speed == 1.5
    steps = {}
    for by_tau in (((0.9, 0.5),), ((0.7, 0.5),)):  # fcfs runs at τ 0.9: its own speed there, else `speed`
        r = replace(_lone()[0], speed=1.0, speed_by_tau=by_tau)
        (res,) = simulate("fcfs", [r], ["tp1"], "tiny-cpu", 0, block_len=8, truth_tps={0.9: 4.0}).requests
        steps[by_tau[0][0]] = res.refresh_steps + res.reuse_steps
    assert steps == {0.9: 16, 0.7: 8}  # 32 tokens at 2 a step (its own 0.5 × 4), and at 4 a step


def _run(policy: str, rps: float, repeat: int, att: float | None, refused: int = 0) -> dict:
    live = {"slo_attainment": att, "goodput_rps": att, "latency_p50_s": 0.2, "latency_p99_s": 0.5,
            "mean_threshold": 0.9, "accuracy": 0.95,
            "outcomes": {"refused_deadline_unmeetable": refused, "connection_errors": 0,
                         "http_errors_by_status": {"500": 1} if refused else {}}}
    return {"policy": policy, "rps": rps, "repeat": repeat, "live": live, "cpu_cores": {"services": 0.2},
            "warmup_overhead_parts_p50_ms": {"to_scheduler_ms": 2.0, "to_worker_ms": 1.0, "result_return_ms": 1.0}}


def test_aggregation_gives_the_spread_over_repeats():
    runs = [_run("fcfs", 10.0, 0, 0.9, 1), _run("fcfs", 10.0, 1, 0.7, 2), _run("fcfs", 10.0, 2, None),
            _run("dilaserve", 10.0, 0, 1.0)]
    agg = aggregate(runs)
    a = agg[(10.0, "fcfs")]["slo_attainment"]
    assert (a["mean"], a["min"], a["max"], a["n"]) == (0.8, 0.7, 0.9, 2)
    assert a["std"] == pytest.approx(0.1)
    assert agg[(10.0, "fcfs")]["repeats"] == 3 and agg[(10.0, "fcfs")]["refused"] == 3
    assert agg[(10.0, "fcfs")]["http_errors_by_status"] == {"500": 2}
    assert agg[(10.0, "dilaserve")]["slo_attainment"]["std"] == 0.0
    assert spread([None]) == {"mean": None, "min": None, "max": None, "std": None, "n": 0}


def test_report_json_and_plots_from_synthetic_outcomes(tmp_path: Path):
    runs = [_run(p, r, k, a) for p, a in (("fcfs", 0.6), ("dilaserve", 0.9)) for r in (10.0, 20.0) for k in (0, 1)]
    sim = {(r, p): {"slo_attainment": 0.5, "latency_p50_s": 0.25} for r in (10.0, 20.0) for p in ("fcfs", "dilaserve")}
    report = {"config": {"policies": ["fcfs", "dilaserve"]}, "runs": runs, "points": points(runs, sim, {10.0: 5})}
    path = write_json(report, tmp_path / "x.json")
    data = json.loads(path.read_text())
    assert [p["rps"] for p in data["points"]] == [10.0, 20.0]
    for p in data["points"]:
        for name in ("fcfs", "dilaserve"):
            v = p["policies"][name]
            assert v["live"]["slo_attainment"]["n"] == 2 and v["sim"]["slo_attainment"] == 0.5
            assert v["gap"]["latency_p50_rel"] == pytest.approx(0.25)
    assert data["points"][0]["policies"]["fcfs"]["gap"]["attainment"] == pytest.approx(-0.1)
    for png in write_plots(data, tmp_path / "img"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the simulator's live-cluster effects ------------------------------------------------------------------
def _lone(n: int = 1, gap: float = 10.0) -> list[SimRequest]:
    return [SimRequest(f"r{i}", i * gap, 16, 32, 30.0) for i in range(n)]


def _latency(effects: ClusterEffects | None, reqs: list[SimRequest], configs=("tp1",)) -> list[float]:
    kw = {"effects": effects} if effects is not None else {}
    res = simulate("fcfs", reqs, list(configs), "tiny-cpu", 0, block_len=8, **kw)
    return sorted(r.finish_s - r.arrival_s for r in res.requests)


def test_default_effects_change_nothing_and_delays_add_up():
    reqs = _lone(3)
    base = _latency(None, reqs)
    assert _latency(ClusterEffects(), reqs) == base
    delayed = _latency(ClusterEffects(arrival_delay_s=0.01, dispatch_delay_s=0.02, result_delay_s=0.03), reqs)
    assert delayed == pytest.approx([b + 0.06 for b in base])
    slower = _latency(ClusterEffects(step_scale=2.0), reqs)
    assert slower == pytest.approx([2 * b for b in base])


def test_step_loop_time_grows_with_the_requests_in_the_step():
    def run(effects, reqs):
        res = simulate("fcfs", reqs, ["tp1"], "tiny-cpu", 0, block_len=8, effects=effects)
        return {r.request_id: (r.finish_s - r.arrival_s, r.refresh_steps + r.reuse_steps) for r in res.requests}

    loop = ClusterEffects(step_overhead_s=0.002, step_overhead_per_request_s=0.01)
    (lone, steps), = run(loop, _lone(1)).values()  # alone: 2 + 10 ms more per step
    assert lone == pytest.approx(run(ClusterEffects(), _lone(1))["r0"][0] + steps * 0.012, rel=1e-6)
    pair = _lone(2, gap=0.0)  # two stepping together: 2 + 20 ms while both are in the step
    base = run(ClusterEffects(), pair)
    for rid, (lat, steps) in run(loop, pair).items():
        added = lat - base[rid][0]
        assert steps * 0.012 + 0.01 <= added + 1e-9 and added <= steps * 0.022 + 1e-9


def test_step_loop_fit_recovers_a_line_and_never_goes_negative():
    from tooling.experiment_metrics import loop_overhead

    line = [(n, 0.001 + 0.0002 * n) for n in (1, 2, 4, 8, 16) for _ in range(3)]
    assert loop_overhead(line) == pytest.approx((0.001, 0.0002))
    assert loop_overhead([(1, 0.004), (8, 0.002)]) == pytest.approx((0.003, 0.0))  # falling: the mean, flat
    assert loop_overhead([(2, 0.001), (10, 0.009)]) == pytest.approx((0.0, 0.092 / 104), rel=1e-3)  # through 0
    assert loop_overhead([]) is None


def test_the_workers_timed_gaps_set_the_step_loop_time_where_saved(tmp_path: Path):
    # with gaps.json in the run folders, the fit of the workers' own gaps is used, not the requests' medians
    from tooling.experiment_metrics import GAPS
    spec = ExperimentSpec(policies=["fcfs"], rates=[2.0], repeats=1, sim_cores=2.0, workers=1,
                          workload=wspec(duration_s=10.0, classes=(SloClass("default", 1.0, 1.0),), slo_ms=5000.0))
    work = {2.0: build_workload(spec.workload, 2.0, encode)}
    run = dict(_run("fcfs", 2.0, 0, 1.0), run_dir=str(tmp_path))
    (tmp_path / GAPS).write_text(json.dumps([[n, 0.0005 + 0.0001 * n] for n in (1, 2, 3, 4)]))
    pairs = [(RunKey(0, 2.0, "fcfs"), w, Outcome(True, 0.1, slo_met=True, kind=SERVED, threshold_mean=0.9, steps=5,
                                                 timings_ms={"worker_forward_ms": 50.0, "worker_ms": 150.0}))
             for w in work[2.0]]
    _, measured = run_sim(spec, work, [run], pairs)
    eff = measured["effects_by_rps"][2.0]
    assert eff["step_overhead_s"] == pytest.approx(0.0005) and eff["step_overhead_per_request_s"] == pytest.approx(0.0001)


def test_shared_cpu_stretches_steps_only_when_oversubscribed():
    two = _lone(2, gap=0.0)  # two requests at once on two instances
    alone = _latency(None, two, ("tp1", "tp1"))
    assert _latency(ClusterEffects(cpu_cores=2.0), two, ("tp1", "tp1")) == pytest.approx(alone)
    shared = _latency(ClusterEffects(cpu_cores=1.0, service_cores=0.5), two, ("tp1", "tp1"))
    assert min(shared) > min(alone) * 1.4


def test_step_jitter_makes_the_simulated_policy_plan_for_slower_steps():
    # live, the cost models refit toward the 0.9 quantile of steps that vary at one size; steps without
    # spread leave the policy at the truth, steps with the measured spread make it plan ≈ 1.4× slower
    from shared.sim.engine import Simulator
    ratio = {}
    for cv in (0.0, 0.3):
        sim = Simulator("fcfs", _lone(300, gap=0.03), ["tp1"], "tiny-cpu", 0, block_len=8,
                        effects=ClusterEffects(cost_quantile=0.9, step_cv=cv))
        sim.run()
        ratio[cv] = sim.core.cost.latency("tp1", 512) / sim.truth.latency("tp1", 512)
    assert ratio[0.0] == pytest.approx(1.0, abs=0.05)
    assert 1.2 < ratio[0.3] < 1.6


@pytest.mark.parametrize("rps", [2.0, 12.0])
def test_simulated_side_recovers_a_known_step_slowdown(rps: float):
    # at 12 req/s the 3×-slow cluster is near saturation: a slower step also lengthens the queue, and past
    # saturation the budget shrinks the batches, so the ratio crosses 1 again (near 4×) beyond the truth.
    # Deeper in overload (16 req/s and more) the forward times no longer tell the machine's speed.
    spec = ExperimentSpec(policies=["fcfs"], rates=[rps], repeats=1, sim_cores=2.0, workers=1,
                          workload=wspec(duration_s=20.0, classes=(SloClass("default", 1.0, 1.0),), slo_ms=5000.0))
    work = {rps: build_workload(spec.workload, rps, encode)}
    from shared.profiles import profile_path
    from tooling.experiment_sim import SimSetup, measured_effects, profile_cost, scaled, simulate_point
    runs = [_run("fcfs", rps, 0, 1.0)]
    # "live": the same cluster with steps 3× the profile (the batches follow from the slower steps)
    cost = scaled(profile_cost(profile_path(spec.model_dir, "cpu")), 3.0)
    setup = SimSetup(1, cost, 8, None, {0.9: 8.0}, 1.0, 3)
    res = simulate_point("fcfs", [r.sim for r in work[rps]], setup, measured_effects(runs, 2.0)[rps])
    fwd = {r.request_id: r.step_s * 1000 for r in res.requests}
    pairs = [(RunKey(0, rps, "fcfs"), w, Outcome(True, 0.1, slo_met=True, kind=SERVED, threshold_mean=0.9, steps=5,
                                                 timings_ms={"worker_forward_ms": fwd[w.sim.request_id],
                                                             "worker_ms": fwd[w.sim.request_id]}))
             for w in work[rps]]  # 40 tokens in 5 steps: 8 a step, as above
    sim, measured = run_sim(spec, work, runs, pairs)
    assert measured["profile_scale"] == pytest.approx(3.0, rel=0.02)
    assert measured["effects_by_rps"][rps]["arrival_delay_s"] == pytest.approx(0.002)
    assert sim[(rps, "fcfs")]["requests"] == len(work[rps])
    assert runs[0]["slowdown_vs_profile"] > 3.0  # on the unscaled profile the batches are smaller


def test_each_rate_is_simulated_with_its_own_step_overhead():
    # the worker's time per step outside the forward grows with the batch: measured per rate
    spec = ExperimentSpec(policies=["fcfs"], rates=[2.0, 4.0], repeats=1, sim_cores=2.0, workers=1,
                          workload=wspec(duration_s=10.0, classes=(SloClass("default", 1.0, 1.0),), slo_ms=5000.0))
    work = {rps: build_workload(spec.workload, rps, encode) for rps in spec.rates}
    extra_ms = {2.0: 5.0, 4.0: 20.0}  # per step (5 steps a request)
    pairs = [(RunKey(0, rps, "fcfs"), w, Outcome(True, 0.1, slo_met=True, kind=SERVED, threshold_mean=0.9, steps=5,
                                                 timings_ms={"worker_forward_ms": 50.0,
                                                             "worker_ms": 50.0 + 5 * extra_ms[rps]}))
             for rps in spec.rates for w in work[rps]]
    _, measured = run_sim(spec, work, [_run("fcfs", rps, 0, 1.0) for rps in spec.rates], pairs)
    assert {rps: e["step_overhead_s"] for rps, e in measured["effects_by_rps"].items()} == {2.0: 0.005, 4.0: 0.02}


def test_live_step_samples_set_the_simulated_speed_at_each_rate(tmp_path: Path):
    # the steps ran 2× the profile at 2 req/s and 2.4× at 4 req/s (a CPU the services share): the factor
    # comes from the lowest rate's steps, each rate's own steps scale it, and no CPU model is added on top
    from shared.profiles import profile_path
    from tooling.experiment_metrics import STEPS
    from tooling.experiment_sim import SIM_CONFIG, profile_cost
    spec = ExperimentSpec(policies=["fcfs"], rates=[2.0, 4.0], repeats=1, sim_cores=2.0, workers=1,
                          workload=wspec(duration_s=10.0, classes=(SloClass("default", 1.0, 1.0),), slo_ms=5000.0))
    work = {rps: build_workload(spec.workload, rps, encode) for rps in spec.rates}
    profile = profile_cost(profile_path(spec.model_dir, "cpu"))
    runs = []
    for rps, slow in ((2.0, 2.0), (4.0, 2.4)):
        run = dict(_run("fcfs", rps, 0, 1.0), run_dir=str(tmp_path / f"r{rps:g}"))
        Path(run["run_dir"]).mkdir()
        steps = [(t, slow * profile.latency(SIM_CONFIG, t)) for t in (16, 16, 16, 112, 512)]
        (Path(run["run_dir"]) / STEPS).write_text(json.dumps(steps))
        runs.append(run)
    pairs = [(RunKey(0, rps, "fcfs"), w, Outcome(True, 0.1, slo_met=True, kind=SERVED, threshold_mean=0.9, steps=5,
                                                 timings_ms={"worker_forward_ms": 50.0, "worker_ms": 60.0}))
             for rps in spec.rates for w in work[rps]]
    _, measured = run_sim(spec, work, runs, pairs)
    assert measured["profile_scale"] == pytest.approx(2.0, rel=1e-3)
    assert measured["profile_scale_source"] == "step_samples"
    eff = measured["effects_by_rps"]
    assert eff[2.0]["step_scale"] == 1.0 and eff[4.0]["step_scale"] == pytest.approx(1.2, rel=1e-3)
    assert eff[2.0]["cpu_cores"] == eff[4.0]["cpu_cores"] == 0.0


def test_step_size_factors_interpolate_in_log_tokens_and_clamp_at_the_ends():
    e = ClusterEffects(step_scale_by_tokens=((16.0, 1.2), (256.0, 0.8)))
    assert e.size_scale(8) == e.size_scale(16) == 1.2 and e.size_scale(1024) == 0.8
    assert e.size_scale(64) == pytest.approx(1.0)  # halfway between 16 and 256 in log tokens
    assert ClusterEffects().size_scale(100) == 1.0
    for bad in (((256.0, 1.0), (16.0, 1.0)), ((16.0, 0.0),), ((0.0, 1.0),)):
        with pytest.raises(ValueError, match="step_scale_by_tokens"):
            ClusterEffects(step_scale_by_tokens=bad)
    reqs = _lone(3)
    assert _latency(ClusterEffects(step_scale_by_tokens=((1.0, 2.0),)), reqs) == pytest.approx(
        [2 * b for b in _latency(None, reqs)])


def test_simulate_reads_step_size_factors_and_refuses_bad_ones():
    from shared.sim.cli import add_effect_arguments, effects_from_args
    parser = argparse.ArgumentParser()
    add_effect_arguments(parser)
    e = effects_from_args(parser.parse_args(["--step-scale-by-tokens", "16:1.05,512:1.2"]))
    assert e.step_scale_by_tokens == ((16.0, 1.05), (512.0, 1.2))
    for bad in ("16", "16:x", "16:1:2", "512:1,16:1"):
        with pytest.raises(SystemExit, match="step-scale-by-tokens|step_scale_by_tokens"):
            effects_from_args(parser.parse_args(["--step-scale-by-tokens", bad]))


def test_each_repeat_is_simulated_at_its_own_speed_and_steps_by_their_size(tmp_path: Path):
    # two repeats of one point, on a machine 2× and 2.4× the profile, where steps of 512 tokens ran 1.5×
    # slower than the rest: each repeat is simulated at its own speed, and the size factors hold the shape
    from shared.profiles import profile_path
    from tooling.experiment_metrics import STEPS
    from tooling.experiment_sim import SIM_CONFIG, profile_cost
    spec = ExperimentSpec(policies=["fcfs"], rates=[2.0], repeats=2, sim_cores=2.0, workers=1,
                          workload=wspec(duration_s=10.0, classes=(SloClass("default", 1.0, 1.0),), slo_ms=5000.0))
    work = {2.0: build_workload(spec.workload, 2.0, encode)}
    profile = profile_cost(profile_path(spec.model_dir, "cpu"))
    runs = []
    for repeat, speed in ((0, 2.0), (1, 2.4)):
        run = dict(_run("fcfs", 2.0, repeat, 1.0), run_dir=str(tmp_path / f"r{repeat}"))
        Path(run["run_dir"]).mkdir()
        steps = [(t, speed * (1.5 if t == 512 else 1.0) * profile.latency(SIM_CONFIG, t))
                 for t in [16] * 60 + [512] * 60]
        (Path(run["run_dir"]) / STEPS).write_text(json.dumps(steps))
        runs.append(run)
    pairs = [(RunKey(k, 2.0, "fcfs"), w, Outcome(True, 0.1, slo_met=True, kind=SERVED, threshold_mean=0.9, steps=5,
                                                 timings_ms={"worker_forward_ms": 50.0, "worker_ms": 60.0}))
             for k in (0, 1) for w in work[2.0]]
    sim, measured = run_sim(spec, work, runs, pairs)
    assert [r["step_scale"] for r in sim[(2.0, "fcfs")]["repeats"]] == pytest.approx([2.0 / 2.2, 2.4 / 2.2], rel=1e-3)
    gap = points(runs, sim, {2.0: len(work[2.0])})[0]["policies"]["fcfs"]["gap"]  # and repeat by repeat
    assert gap["attainment_by_repeat"] == [pytest.approx(r["slo_attainment"] - 1.0) for r in sim[(2.0, "fcfs")]["repeats"]]
    knots = measured["effects_by_rps"][2.0]["step_scale_by_tokens"]
    assert [t for t, _ in knots] == [16.0, 512.0] and knots[1][1] / knots[0][1] == pytest.approx(1.5, rel=1e-3)


def test_generator_lag_is_reported_and_resimulating_may_change_only_simulation_settings():
    from tooling.experiment_metrics import send_lag_ms
    from tooling.experiment_run import live_config
    lag = send_lag_ms([Outcome(True, 0.1, kind=SERVED, send_lag_s=s) for s in (0.001, 0.002, 0.030)])
    assert lag == {"p50": 2.0, "p99": 30.0, "max": 30.0}
    spec = ExperimentSpec(policies=["fcfs"], rates=[2.0], repeats=1, workload=wspec())
    assert live_config(spec.config()) == live_config(dict(spec.config(), sim_cores=64.0, quality="q.json"))
    assert live_config(spec.config()) != live_config(dict(spec.config(), repeats=3))


def test_step_spread_is_relative_to_steps_of_the_same_size():
    from tooling.experiment_metrics import step_spread
    # two sizes 20× apart, each with latencies of 0.5×, 1× and 1.5× its own median: spread as at one size
    samples = [(t, base * f) for t, base in ((16, 0.01), (320, 0.2)) for f in (0.5, 1.0, 1.5) for _ in range(4)]
    sp = step_spread(samples)
    assert sp["n"] == 24 and sp["p10"] == 0.5 and sp["p50"] == 1.0 and sp["p90"] == 1.5
    assert sp["cv"] == pytest.approx((2 / 3) ** 0.5 * 0.5, rel=1e-3)
    assert step_spread([(16, 0.01)] * 3) == {"n": 0}  # too few steps of a size to have a median


def test_a_machine_whose_speed_changed_between_runs_is_flagged():
    from tooling.experiment_calibrate import speed_warning
    assert speed_warning([{"slowdown_vs_profile": 1.1}, {"slowdown_vs_profile": 1.5}]) is None
    assert "changed between runs" in speed_warning([{"slowdown_vs_profile": 1.1}, {"slowdown_vs_profile": 3.0}])
    # with the step samples' own measure, the request-level one (which grows with the queue) is not used
    steady = [{"slowdown_vs_profile": 1.1, "steps_vs_profile": 2.0}, {"slowdown_vs_profile": 5.0, "steps_vs_profile": 2.2}]
    assert speed_warning(steady) is None
    steady[1]["steps_vs_profile"] = 3.5
    assert "runs[].steps_vs_profile" in speed_warning(steady)


def test_steps_are_compared_with_the_profile_at_their_own_size():
    from tooling.experiment_metrics import steps_vs_profile
    profile = {16: 0.003, 512: 0.035}.__getitem__
    # a machine 2× slower at every size, whatever the mix of small and large steps
    assert steps_vs_profile([(16, 0.006)] * 5 + [(512, 0.07)] * 20, profile) == pytest.approx(2.0)
    assert steps_vs_profile([(16, 0.006), (512, 0.105), (512, 0.105)], profile) == pytest.approx(3.0)
    assert steps_vs_profile([], profile) is None


# --- one small live run ------------------------------------------------------------------------------------
def test_live_smoke_run_reports_live_and_simulated_attainment(tmp_path: Path):
    from tooling import experiment
    p = argparse.ArgumentParser()
    experiment.add_arguments(p)
    argv = ["--policies", "fcfs,dilaserve", "--rates", "3", "--repeats", "1", "--duration", "2",
            "--workers", "1", "--warmup-s", "0.5", "--trace", "poisson", "--slo-ms", "5000",
            "--tasks", "add,sub", "--timeout", "60", "--out-dir", str(tmp_path)]
    assert experiment.main(p.parse_args(argv)) == 0
    data = json.loads((tmp_path / "experiment.json").read_text())
    (point,) = data["points"]
    assert set(point["policies"]) == {"fcfs", "dilaserve"}
    for v in point["policies"].values():
        assert v["live"]["slo_attainment"]["n"] == 1 and 0.0 <= v["live"]["slo_attainment"]["mean"] <= 1.0
        assert 0.0 <= v["sim"]["slo_attainment"] <= 1.0
    assert len(data["runs"]) == 2 and (tmp_path / "attainment_vs_rate.png").exists()
    for run in data["runs"]:  # the workers' steps, heard on their heartbeats during the replay
        sp = run["step_spread"]
        assert sp["n"] > 5 and sp["p10"] <= sp["p50"] <= sp["p90"] and sp["cv"] >= 0, sp
        assert len(json.loads((Path(run["run_dir"]) / "steps.json").read_text())) >= sp["n"]
        times = json.loads((Path(run["run_dir"]) / "step_times.json").read_text())  # the same steps, timed
        assert len(times) == len(json.loads((Path(run["run_dir"]) / "steps.json").read_text()))
        assert times and all(-5.0 < t < 60.0 for t, _, _ in times)  # seconds from the replay's start
        assert 0.2 < run["steps_vs_profile"] < 20  # this machine against the committed profile, per step
        assert run["live"]["send_lag_ms"]["p50"] is not None and run["live"]["send_lag_ms"]["p50"] >= 0
        gaps = json.loads((Path(run["run_dir"]) / "gaps.json").read_text())  # the step loop, timed by the workers
        assert len(gaps) > 5 and all(n >= 1 and 0.0 <= g < 1.0 for n, g in gaps), gaps[:5]
    measured = data["measured"]
    assert measured["effects_by_rps"]["3.0"]["step_cv"] > 0  # the simulator draws the live spread
    # the simulated steps run as fast as the live ones heard: the lowest (only) rate sets the factor
    assert measured["profile_scale_source"] == "step_samples" and 0.2 < measured["profile_scale"] < 20
    assert measured["effects_by_rps"]["3.0"]["step_scale"] == 1.0
    loop = measured["effects_by_rps"]["3.0"]
    assert loop["step_overhead_s"] + loop["step_overhead_per_request_s"] > 0
    from tooling.experiment_metrics import loop_overhead  # fitted from those gaps, not the requests' medians
    saved = [tuple(g) for run in data["runs"] for g in json.loads((Path(run["run_dir"]) / "gaps.json").read_text())]
    assert (loop["step_overhead_s"], loop["step_overhead_per_request_s"]) == pytest.approx(loop_overhead(saved))
    # the saved runs simulated again: the same simulated side, and a refusal for other settings
    assert experiment.main(p.parse_args(argv + ["--resimulate"])) == 0
    again = json.loads((tmp_path / "experiment.json").read_text())
    assert [x["policies"] for x in again["points"]] == [x["policies"] for x in data["points"]]
    with pytest.raises(SystemExit, match="other settings"):
        experiment.main(p.parse_args(argv + ["--resimulate", "--slo-ms", "4000"]))


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit():  # the parent's pid is the 4th field, after "(name)"
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(proc.name))
        except (OSError, IndexError, ValueError):  # exited while listed
            continue
    found, todo = set(), [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found.update(kids)
        todo.extend(kids)
    return found


def _alive(pids: set[int]) -> set[int]:
    """Those still running (a zombie, left to an init that does not reap, has stopped)."""
    out = set()
    for p in pids:
        try:
            if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.add(p)
        except OSError:  # gone
            continue
    return out


def test_sigterm_stops_the_cluster_an_experiment_started(tmp_path: Path):
    import os
    import signal
    import subprocess
    import sys
    import time
    argv = [sys.executable, "-m", "services.common.cli", "experiment", "--policies", "fcfs", "--rates", "3",
            "--repeats", "1", "--duration", "60", "--workers", "1", "--warmup-s", "0", "--trace", "poisson",
            "--slo-ms", "5000", "--tasks", "add", "--out-dir", str(tmp_path)]
    exp = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("runs/*/logs/worker-0*")) and time.monotonic() < deadline:
            time.sleep(0.5)  # NATS, Redis and the services run once the worker's log exists
        started = _descendants(exp.pid)  # nats-server, redis-server, the services
        assert len(started) >= 5, "the experiment's cluster never started"
        exp.send_signal(signal.SIGTERM)
        assert exp.wait(timeout=60) == 130
        deadline = time.monotonic() + 10
        while _alive(started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(started), "SIGTERM left the experiment's NATS, Redis or services running"
    finally:
        if exp.poll() is None:
            exp.kill()
        for pid in _alive(started | _descendants(exp.pid)):  # no strays for the rest of the suite
            os.kill(pid, signal.SIGKILL)
