import argparse
import json

import pytest

from shared.sim import cli
from shared.sim.engine import parse_layout, simulate
from shared.sim.report import summarize
from shared.sim.runner import SimSpec, dumps, run
from shared.sim.workload import LengthScaling, SimRequest, parse_slo_mix

KEYS = {"slo_attainment", "goodput_rps", "latency_p50_s", "latency_p90_s", "latency_p99_s", "mean_latency_s",
        "mean_threshold", "est_accuracy", "refresh_steps", "reuse_steps"}


def test_layouts():
    assert parse_layout("tp1", 16) == ["tp1"] * 16
    assert parse_layout("tp4", 16) == ["tp4"] * 4
    assert parse_layout("mixed", 16) == ["tp1"] * 8 + ["tp2"] * 2 + ["tp4"]
    assert parse_layout("tp1:2,tp2:1", 99) == ["tp1", "tp1", "tp2"]


def test_light_load_everything_finishes_with_block_structure():
    reqs = [SimRequest(f"r{i}", i * 0.5, 200, 256, 30.0) for i in range(20)]
    res = simulate("dilaserve", reqs, ["tp1"], "llada8b-gh200", seed=0, global_slo_s=30.0)
    s = summarize(res, 10.0)
    assert s["finished"] == 20 and s["slo_attainment"] == 1.0
    assert s["refresh_steps"] == 20 * 8  # one refresh per block
    assert s["mean_threshold"] == pytest.approx(0.9)  # no pressure: top τ
    assert 20 * 70 < s["reuse_steps"] < 20 * 85
    lat = s["latency_p50_s"]
    assert 1.5 < lat < 3.5  # ~85 steps of ~25 ms


@pytest.mark.parametrize("tps", [4.47, 7.1, 2.38])
def test_a_request_takes_output_over_tokens_per_step_steps(tps: float):
    # a measured tokens per step is tokens ÷ steps: the simulated requests must realise it, block ends
    # included (per-step draws cut at each block's end took 4 steps per block of 16 at 4.47, not 3.58)
    reqs = [SimRequest(f"r{i}", i * 5.0, 40, 64, 60.0) for i in range(200)]
    res = simulate("fcfs", reqs, ["tp1"], "tiny-cpu", seed=3, block_len=16, truth_tps={0.9: tps})
    steps = sum(r.refresh_steps + r.reuse_steps for r in res.requests)
    assert sum(r.output_len for r in res.requests) / steps == pytest.approx(tps, rel=0.02)
    assert all(r.refresh_steps == 4 for r in res.requests)  # one refresh per block of 16


def small_spec(**kw):
    base = dict(trace="gamma", gpus=2, duration_s=40.0, seed=1, policies=("fcfs", "tedi", "dilaserve"))
    base.update(kw)
    return SimSpec(**base)


def test_overload_dilaserve_beats_fcfs():
    report, _ = run(small_spec(), [(14.0, 5.0)])
    pol = report["points"][0]["policies"]
    assert KEYS <= set(pol["fcfs"])
    assert pol["dilaserve"]["slo_attainment"] >= pol["fcfs"]["slo_attainment"] + 0.15
    assert pol["dilaserve"]["mean_threshold"] < 0.9 == pol["fcfs"]["mean_threshold"]
    assert pol["dilaserve"]["est_accuracy"] < pol["fcfs"]["est_accuracy"]


def test_same_seed_same_bytes_other_seed_differs():
    a = dumps(run(small_spec(duration_s=15.0), [(8.0, 4.0)])[0])
    b = dumps(run(small_spec(duration_s=15.0), [(8.0, 4.0)])[0])
    c = dumps(run(small_spec(duration_s=15.0, seed=2), [(8.0, 4.0)])[0])
    assert a == b and a != c


def test_mixed_classes_dilaserve_not_worse_than_tedi():
    spec = small_spec(trace="azure_conv", classes=parse_slo_mix("interactive:0.3:2:1,batch:0.7:6"),
                      policies=("tedi", "dilaserve"), duration_s=40.0)
    report, _ = run(spec, [(11.0, 1.0)])
    pol = report["points"][0]["policies"]
    assert pol["dilaserve"]["slo_attainment"] >= pol["tedi"]["slo_attainment"] - 0.01


def test_cli_json_shape_and_plots(tmp_path):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "r.json"
    args = parser.parse_args(["--trace", "poisson", "--gpus", "2", "--sweep-rps", "4:12:2", "--duration", "10",
                              "--policies", "fcfs,dilaserve", "--json", str(out), "--plot", str(tmp_path / "p")])
    assert cli.main(args) == 0
    rep = json.loads(out.read_text())
    assert rep["config"]["gpus"] == 2 and rep["config"]["output_len"] == 256
    assert [p["rps"] for p in rep["points"]] == [4.0, 12.0]
    assert set(rep["points"][0]["policies"]) == {"fcfs", "dilaserve"}
    for name in ("attainment_vs_rate.png", "latency_cdf.png", "tau_over_time.png"):
        png = tmp_path / "p" / name
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 200_000
    args = parser.parse_args(["--trace", "poisson", "--gpus", "1", "--rps", "3", "--sweep-slo", "2:5:2",
                              "--duration", "5", "--policies", "tedi", "--json", str(out)])
    assert cli.main(args) == 0
    assert [p["slo_scale"] for p in json.loads(out.read_text())["points"]] == [2.0, 5.0]


def test_keep_output_lengths_from_trace():
    spec = small_spec(trace="azure_code", scaling=LengthScaling(keep_output=True), policies=("fcfs",),
                      duration_s=5.0)
    report, _ = run(spec, [(5.0, 5.0)])
    m = report["points"][0]["policies"]["fcfs"]
    assert m["refresh_steps"] < 8 * report["points"][0]["requests"]  # code outputs are short: fewer blocks


def test_reject_and_no_drop_switches_are_reported():
    reqs = [SimRequest(f"r{i}", 0.0, 200, 256, 0.3 if i % 2 else 30.0) for i in range(6)]
    res = simulate("dilaserve", reqs, ["tp1"], "llada8b-gh200", seed=0, reject_infeasible=True)
    s = summarize(res, 1.0)
    assert s["rejected"] == 3 and s["finished"] == 3 and s["slo_attainment"] == 0.5
    spec = small_spec(policies=("dilaserve",), drop=False, duration_s=20.0)
    report, _ = run(spec, [(20.0, 2.0)])
    assert report["points"][0]["policies"]["dilaserve"]["dropped"] == 0
    assert report["config"]["dilaserve_drop"] is False


def test_step_jitter_has_mean_one_and_the_asked_spread():
    import random
    import statistics

    from shared.sim.effects import ClusterEffects
    e = ClusterEffects(step_cv=0.3)
    xs = [e.step_factor(random.Random(k)) for k in range(20000)]
    assert statistics.mean(xs) == pytest.approx(1.0, abs=0.01)
    assert statistics.pstdev(xs) / statistics.mean(xs) == pytest.approx(0.3, abs=0.01)
    with pytest.raises(ValueError):
        ClusterEffects(step_cv=-0.1)
