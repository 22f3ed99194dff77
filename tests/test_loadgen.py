"""`dilaserve bench`'s pure parts: arrivals, trace rescaling, and the summary it prints."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from tooling.loadgen import Outcome, make_shots, poisson_arrivals, summarize, trace_arrivals


def _args(**kw) -> argparse.Namespace:
    base = dict(url="http://x", rps=10.0, duration=5.0, trace=None, slo_ms=None, max_tokens=32, seed=0)
    return argparse.Namespace(**{**base, **kw})


def test_poisson_arrivals_have_the_asked_rate_and_stay_in_the_window() -> None:
    arr = poisson_arrivals(50.0, 100.0, random.Random(1))
    assert all(0 < a < 100.0 for a in arr) and arr == sorted(arr)
    assert 4500 < len(arr) < 5500


def test_trace_arrivals_are_rescaled_to_the_asked_rate(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    rows = "".join(f"{i * 0.5},{100},{7 + i}\n" for i in range(41))  # 2 req/s over 20 s
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + rows)
    arrivals, lengths = trace_arrivals(path, rps=20.0, duration_s=1.0)
    assert 18 <= len(arrivals) <= 21 and arrivals[-1] < 1.0
    assert lengths[:3] == [7, 8, 9]


def test_shots_are_reproducible_task_problems() -> None:
    a, b = make_shots(_args(seed=3)), make_shots(_args(seed=3))
    assert [(s.at_s, s.prompt) for s in a] == [(s.at_s, s.prompt) for s in b]
    assert all(s.answer and s.max_tokens == 32 for s in a)


def test_summary_counts_failures_as_missed_and_breaks_the_overhead_down() -> None:
    ok = [Outcome(True, 0.1 * i, overhead_ms=float(i), slo_met=i < 3, correct=True,
                  timings_ms={"to_scheduler_ms": 1.0 * i, "to_worker_ms": 0.5, "result_return_ms": 0.2})
          for i in range(1, 6)]
    bad = [Outcome(False, 1.0, error="HTTP 500: boom")]
    s = summarize(_args(slo_ms=250.0), ok + bad, wall_s=2.0)
    assert (s["sent"], s["completed"], s["errors"]) == (6, 5, 1)
    assert s["slo_attainment"] == round(2 / 6, 4)  # the failed request counts as a miss
    assert s["overhead_p50_ms"] == 3.0 and s["overhead_p99_ms"] == 5.0
    assert s["overhead_parts_p50_ms"] == {"to_scheduler_ms": 3.0, "to_worker_ms": 0.5, "result_return_ms": 0.2,
                                          "queue_ms": None}
    assert s["first_errors"] == ["HTTP 500: boom"]
    assert s["throughput_rps"] == 2.5
