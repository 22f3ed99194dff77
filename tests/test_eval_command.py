"""`dilaserve eval` end to end on a few problems with the shipped model: every configuration, the keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_eval_writes_every_configuration_with_speedups(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    subprocess.run([sys.executable, "-m", "services.common.cli", "eval", "--n", "6", "--seed", "5", "--json", str(out),
                    "--batch-size", "6", "--threads", "1", "--device", "cpu"], check=True, timeout=600,
                   capture_output=True)
    d = json.loads(out.read_text())
    assert (d["n"], d["seed"]) == (6, 5) and d["model"]
    res = d["results"]
    assert [r["decoding"] for r in res[:2]] == ["strict", "fixed"]
    assert {(r["threshold"], r["cache"]) for r in res[2:]} == {
        (t, c) for t in (0.9, 0.8, 0.7, 0.6, 0.5) for c in ("none", "prefix", "dual")}
    for r in res:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["tokens_per_s"] > 0 and r["steps_per_request"] > 0
        assert r["speedup_vs_baseline"] > 0
    assert res[0]["tokens_per_step"] == 1.0  # strict: one token per step
    assert res[1]["speedup_vs_baseline"] == 1.0
    assert res[1]["tokens_per_step"] == 1.0  # the fixed baseline's default: LLaDA's one token per step
