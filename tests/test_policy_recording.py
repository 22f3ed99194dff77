"""The recorder and its replay (shared/policy/recording.py, shared/sim/recorded.py) catch a driver that
feeds the core something the record lacks, or skips a decision — the replay is not a tautology."""

from __future__ import annotations

import json

from shared.policy.cost_model import CostModel
from shared.policy.policies import make_core
from shared.policy.recording import RecordingCore
from shared.policy.step_predictor import StepPredictor
from shared.policy.types import InstanceView, RequestView, StepSample
from shared.sim.recorded import applied_mismatches, replay


def _apply(core: RecordingCore, now: float) -> None:
    """Schedule and carry out every decision, noting each as the live scheduler does."""
    out = core.schedule(now)
    for p in out.placements:
        core.applied(("place", p.request_id, p.instance_id, p.cap, p.deadline_s), now)
    for m in out.migrations:
        core.applied(("migrate", m.request_id, m.src_instance_id, m.dst_instance_id), now)
    for rid, cap in out.caps.items():
        core.applied(("caps", rid, cap), now)
    for rid in out.dropped + out.rejected:
        core.applied(("refuse", rid), now)


def _recorded_run(policy: str = "dilaserve") -> list[dict]:
    records: list[dict] = []
    core = RecordingCore(make_core(policy, CostModel.tiny_cpu("tp1-dual"), StepPredictor(), global_slo_s=2.0,
                                   drop_expired=True), lambda r: records.append(json.loads(json.dumps(r))))
    now = 100.0
    for k in range(2):
        core.on_instance_update(InstanceView(f"w{k}", "tp1-dual", 0, False, [StepSample(40, 0.03)]), now)
    for i in range(12):
        now += 0.01
        core.on_arrival(RequestView(f"r{i}", now, now + (0.05 if i % 4 == 0 else 3.0), 29, 96, 8, i % 2), now)
        _apply(core, now)
    for i in (1, 2, 3):
        now += 0.5
        core.on_progress(f"r{i}", 8, 1, True, now)
        _apply(core, now)
    core.on_finished("r1", now + 1.0)
    _apply(core, now + 1.0)
    return records


def test_a_faithful_record_replays_identically():
    records = _recorded_run()
    report = replay(records)
    assert report.schedules == 16 and report.mismatches == []
    assert report.decisions["placements"] > 0 and report.decisions["dropped"] > 0
    assert applied_mismatches(records) == []


def test_an_input_the_record_lacks_changes_the_decisions():
    records = _recorded_run()
    arrival = next(i for i, r in enumerate(records) if r["kind"] == "arrival" and r["req"]["request_id"] == "r2")
    del records[arrival]  # the driver told the core of a request the record does not show
    assert replay(records).mismatches


def test_a_decision_not_carried_out_is_reported():
    records = _recorded_run()
    skipped = next(i for i, r in enumerate(records) if r["kind"] == "applied" and r["key"][0] == "place")
    key = records.pop(skipped)["key"]
    assert applied_mismatches(records) == [f"decided, not applied: {tuple(key)}"]
