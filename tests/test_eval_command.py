"""`dilaserve eval` and `bench-engine` end to end on a few problems with the shipped model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from shared.profiles import read_quality_model

THRESHOLDS = (0.9, 0.8, 0.7, 0.6, 0.5)


def _run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "services.common.cli", *args, "--threads", "1", "--device", "cpu"],
                   check=True, timeout=600, capture_output=True)


def test_eval_writes_every_configuration_and_the_quality_curve(tmp_path: Path) -> None:
    out, quality = tmp_path / "eval.json", tmp_path / "quality.json"
    _run("eval", "--n", "6", "--seed", "5", "--json", str(out), "--batch-size", "6", "--quality-out", str(quality))
    d = json.loads(out.read_text())
    assert (d["n"], d["seed"]) == (6, 5) and d["model"]
    config = json.loads((Path(d["model"]) / "config.json").read_text())
    trained = json.loads((Path(d["model"]) / "training.json").read_text())["task_weights"]
    assert set(d["tasks"]) == {t.split("=")[0] for t in trained.split(",") if float(t.split("=")[1]) > 0}
    assert d["block_length"] == config["block_length"] and d["max_tokens"] == 4 * config["block_length"]
    res = d["results"]
    assert [r["decoding"] for r in res[:2]] == ["strict", "fixed"]
    assert {(r["threshold"], r["cache"]) for r in res[2:]} == {
        (t, c) for t in THRESHOLDS for c in ("none", "prefix", "dual")}
    blocks = 6 * math.ceil(d["max_tokens"] / d["block_length"])
    for r in res:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["tokens_per_s"] > 0 and r["speedup_vs_baseline"] > 0
        assert r["content_tokens_per_step"] <= r["tokens_per_step"]  # EOS padding excluded
        assert r["steps_per_block"] == r["steps_per_request"] * 6 / blocks
        assert r["steps_per_block"] >= 1.0  # every block takes at least one step
        assert 0.0 <= r["reuse_fraction"] <= 1.0
    assert res[0]["tokens_per_step"] == 1.0  # strict: one token per step
    assert res[1]["speedup_vs_baseline"] == 1.0
    assert res[1]["tokens_per_step"] == 1.0  # the fixed baseline's default: LLaDA's one token per step
    assert all(r["reuse_fraction"] == 0.0 for r in res if r["cache"] == "none")  # no cache: every step refreshes
    for r in res:  # a cached block refreshes once, then reuses; without a cache every step refreshes
        if r["cache"] == "none":
            assert r["refresh_steps"] == r["steps_per_request"] * 6 and r["reuse_steps"] == 0
        else:
            assert r["refresh_steps"] <= blocks and r["refresh_steps"] + r["reuse_steps"] == r["steps_per_request"] * 6
    curve = json.loads(quality.read_text())
    assert [p["threshold"] for p in curve["points"]] == sorted([*THRESHOLDS, 1.0])
    dual = {r["threshold"]: r["accuracy"] for r in res if r["cache"] == "dual"}
    model = read_quality_model(str(quality))  # the format `dilaserve simulate --quality` reads
    assert model.accuracy(0.9) == dual[0.9] and model.accuracy(1.0) == res[0]["accuracy"]


def test_bench_engine_interleaves_rounds_and_reports_median_ratios(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    _run("bench-engine", "--n", "3", "--batch-size", "3", "--rounds", "2", "--caches", "dual",
         "--max-tokens", "16", "--json", str(out))
    d = json.loads(out.read_text())
    assert d["rounds"] == 2 and d["baseline"]["speedup_rounds"] == [1.0, 1.0]
    assert [r["threshold"] for r in d["results"]] == list(THRESHOLDS)
    for r in d["results"]:
        assert len(r["speedup_rounds"]) == 2 and len(r["tokens_per_s_rounds"]) == 2
        lo, hi = sorted(r["speedup_rounds"])
        assert lo <= r["speedup_vs_baseline"] <= hi


def test_bench_engine_refuses_unknown_caches(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "services.common.cli", "bench-engine", "--caches", "dual,turbo",
                           "--n", "1", "--json", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--caches 'dual,turbo'" in proc.stderr


def test_every_round_runs_every_configuration_in_a_rotated_order() -> None:
    from lab.bench_engine import bench_specs, round_order

    specs = bench_specs(["dual", "prefix"])
    orders = [round_order(specs, r) for r in range(3)]
    assert all(sorted(map(str, o)) == sorted(map(str, specs)) for o in orders)
    assert len({o[0] for o in orders}) == 3  # a different configuration opens each round
