"""`dilaserve bench` outcome kinds: served (SLO met or not), refused 503 deadline_unmeetable, other HTTP
errors by status, connection errors; attainment over all requests and over served ones."""

from __future__ import annotations

import argparse
import json

from tooling.loadgen import (
    CONNECTION_ERROR, HTTP_ERROR, REFUSED, SERVED, Outcome, Shot, outcome_lines, response_outcome, summarize,
)

SHOT = Shot(0.0, "123+456=", "0579", "add", 8)


def _args(slo_ms: float | None = 500.0) -> argparse.Namespace:
    return argparse.Namespace(url="http://x", rps=10.0, duration=5.0, trace=None, slo_ms=slo_ms)


def _completion(text: str = "0579") -> str:
    return json.dumps({"choices": [{"text": text}], "dlm": {"timings": {"overhead_ms": 2.0}}})


def _error(code: str, type_: str = "server_error") -> str:
    return json.dumps({"error": {"message": "m", "type": type_, "param": None, "code": code}})


def test_served_and_whether_it_met_its_slo() -> None:
    fast = response_outcome(200, _completion(), 0.2, SHOT, 500.0)
    slow = response_outcome(200, _completion("9"), 0.9, SHOT, 500.0)
    assert (fast.kind, fast.ok, fast.slo_met, fast.correct, fast.overhead_ms) == (SERVED, True, True, True, 2.0)
    assert (slow.kind, slow.slo_met, slow.correct) == (SERVED, False, False)
    assert response_outcome(200, _completion(), 0.9, SHOT, None).slo_met is None


def test_only_503_deadline_unmeetable_is_a_refusal() -> None:
    refused = response_outcome(503, _error("deadline_unmeetable", "deadline_error"), 0.01, SHOT, 500.0)
    assert (refused.kind, refused.ok, refused.http_status) == (REFUSED, False, 503)
    for status, body in [(503, _error("server_overloaded")), (503, _error("service_unavailable")),
                         (500, _error("worker_error")), (429, _error("rate_limit_exceeded")),
                         (504, "gateway timeout"), (400, _error("deadline_unmeetable"))]:
        o = response_outcome(status, body, 0.01, SHOT, 500.0)
        assert (o.kind, o.http_status) == (HTTP_ERROR, status), (status, body)


def test_a_200_without_a_completion_is_an_http_error() -> None:
    for body in ["not json", "{}", json.dumps({"choices": []}), json.dumps([1])]:
        o = response_outcome(200, body, 0.01, SHOT, 500.0)
        assert (o.kind, o.http_status) == (HTTP_ERROR, 200), body


def test_outcome_kind_defaults_from_ok_and_status() -> None:
    assert Outcome(True).kind == SERVED
    assert Outcome(False, http_status=500).kind == HTTP_ERROR
    assert Outcome(False, error="ConnectError()").kind == CONNECTION_ERROR


def test_summary_counts_each_kind_and_both_attainments() -> None:
    outcomes = [
        response_outcome(200, _completion(), 0.1, SHOT, 500.0),
        response_outcome(200, _completion(), 0.2, SHOT, 500.0),
        response_outcome(200, _completion(), 0.8, SHOT, 500.0),  # served late
        response_outcome(503, _error("deadline_unmeetable", "deadline_error"), 0.01, SHOT, 500.0),
        response_outcome(503, _error("deadline_unmeetable", "deadline_error"), 0.01, SHOT, 500.0),
        response_outcome(500, _error("worker_error"), 0.3, SHOT, 500.0),
        response_outcome(503, _error("server_overloaded"), 0.01, SHOT, 500.0),
        Outcome(False, 5.0, error="ReadTimeout()", kind=CONNECTION_ERROR),
    ]
    s = summarize(_args(), outcomes, wall_s=2.0)
    assert (s["sent"], s["completed"], s["refused"], s["errors"]) == (8, 3, 2, 3)
    assert s["outcomes"] == {"served": 3, "served_slo_met": 2, "served_slo_missed": 1,
                             "refused_deadline_unmeetable": 2, "http_errors_by_status": {"500": 1, "503": 1},
                             "connection_errors": 1}
    assert s["slo_attainment"] == round(2 / 8, 4)  # refusals and errors are misses
    assert s["slo_attainment_served"] == round(2 / 3, 4)  # served meet their deadline
    assert len(s["first_errors"]) == 3 and not any("deadline_unmeetable" in e for e in s["first_errors"])
    lines = outcome_lines(s)
    assert "refused 503 deadline_unmeetable 2" in lines[0] and "500: 1, 503: 1" in lines[0]
    assert "0.2500 over all requests" in lines[1] and "0.6667 over served requests" in lines[1]


def test_summary_without_slo_has_no_attainment() -> None:
    s = summarize(_args(None), [response_outcome(200, _completion(), 0.1, SHOT, None)], wall_s=1.0)
    assert s["slo_attainment"] is None and s["slo_attainment_served"] is None
    assert len(outcome_lines(s)) == 1


def test_attainment_over_served_is_none_when_nothing_was_served() -> None:
    refused = response_outcome(503, _error("deadline_unmeetable", "deadline_error"), 0.01, SHOT, 500.0)
    s = summarize(_args(), [refused], wall_s=1.0)
    assert s["slo_attainment"] == 0.0 and s["slo_attainment_served"] is None and s["errors"] == 0
    assert "n/a over served requests" in outcome_lines(s)[1]
