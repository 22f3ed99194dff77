"""A migrated request's timings cover its whole life: the worker adds its own time to what the workers it
left did (``Assignment.prior``), and hands the sum on when it lets the request go."""

from __future__ import annotations

import time

import pytest

from services.worker.service import _Meta, _work_so_far
from shared.schemas.codec import decode, encode
from shared.schemas.migration import RequestReleased
from shared.schemas.requests import Assignment, WorkSoFar


def _meta(prior: WorkSoFar | None, on_worker_s: float, forward_s: float) -> _Meta:
    a = Assignment(request_id="r", prompt_ids=[1], max_tokens=16, arrival_s=100.0, assigned_s=105.0,
                   threshold_cap=0.9, resume=prior is not None, prior=prior)
    return _Meta(a, received_s=105.5, received_mono=time.monotonic() - on_worker_s, threshold=0.9,
                 trace_headers={}, forward_s=forward_s)


def test_a_fresh_request_counts_this_worker_only():
    w = _work_so_far(_meta(None, on_worker_s=2.0, forward_s=1.5))
    assert (w.assigned_at_s, w.received_at_s, w.forward_s, w.num_migrations) == (105.0, 105.5, 1.5, 0)
    assert w.worker_s == pytest.approx(2.0, abs=0.05)


def test_a_migrated_request_keeps_its_first_assignment_and_sums_the_workers_time():
    prior = WorkSoFar(assigned_at_s=101.0, received_at_s=101.2, worker_s=3.0, forward_s=2.0, num_migrations=1)
    m = _meta(prior, on_worker_s=1.0, forward_s=0.5)
    w = _work_so_far(m)
    assert (w.assigned_at_s, w.received_at_s, w.forward_s, w.num_migrations) == (101.0, 101.2, 2.5, 1)
    assert w.worker_s == pytest.approx(4.0, abs=0.05)
    leaving = _work_so_far(m, moves=1)  # what a release hands on
    assert leaving.num_migrations == 2
    evt = RequestReleased(request_id="r", worker_id="w0", block_index=2, released_s=110.0, work=leaving)
    assert decode(encode(evt), RequestReleased).work == leaving
