"""Replay a recorded live scheduler (shared/policy/recording.py) through a fresh ``SchedulerCore``.

The first record holds the live core's switches and model state; every later input is re-issued with
its recorded ``now_s``, and each ``schedule`` call's decisions are compared with the live ones. Equal
decisions mean the live service fed the core nothing the record misses; the ``applied`` records then
show it carried out each decision (``applied_mismatches``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from shared.policy.cost_model import CostModel
from shared.policy.scheduling import CoreParams, SchedulerCore
from shared.policy.step_predictor import StepPredictor
from shared.policy.threshold import ThresholdParams
from shared.policy.types import InstanceView, RequestView, StepSample, TpsSample


def core_from_snapshot(rec: dict[str, Any]) -> SchedulerCore:
    p = dict(rec["params"])
    th = dict(p.pop("threshold"))
    th["candidates"] = tuple(th["candidates"])
    params = CoreParams(**p, threshold=ThresholdParams(**th))
    cost = CostModel({n: [tuple(x) for x in pts] for n, pts in rec["cost"].items()}, rec["cost_learning_rate"],
                     rec["cost_quantile"], rec.get("cost_global_share", 0.0))  # older records: a purely local refit
    predictor = StepPredictor({float(t): v for t, v in rec["tps"].items()}, rec["tps_learning_rate"])
    predictor.set_table({float(t): v for t, v in rec["tps"].items()})  # exactly as recorded (no prior defaults)
    return SchedulerCore(params, cost, predictor)


def _instance(d: dict[str, Any]) -> InstanceView:
    return InstanceView(d["instance_id"], d["config"], d["token_budget"], d["draining"],
                        [StepSample(**s) for s in d["step_samples"]], [TpsSample(**t) for t in d["tps_samples"]])


def _feed(core: SchedulerCore, rec: dict[str, Any]) -> None:
    kind, now = rec["kind"], rec["now_s"]
    if kind == "arrival":
        core.on_arrival(RequestView(**rec["req"]), now)
    elif kind == "instance":
        core.on_instance_update(_instance(rec["inst"]), now)
    elif kind == "instance_lost":
        core.on_instance_lost(rec["instance_id"], now)
    elif kind == "progress":
        core.on_progress(rec["request_id"], rec["committed"], rec["blocks_refreshed"], rec["at_block_boundary"], now)
    elif kind == "finished":
        core.on_finished(rec["request_id"], now)
    elif kind == "requeue":
        core.requeue(rec["request_id"], now)
    elif kind == "assign":
        core.assign(rec["request_id"], rec["instance_id"], now)
    else:
        raise ValueError(f"unknown record kind {kind!r}")


@dataclass
class ReplayReport:
    schedules: int = 0
    decisions: dict[str, int] = field(default_factory=dict)  # placements, migrations, caps, dropped, rejected
    mismatches: list[dict[str, Any]] = field(default_factory=list)


def replay(records: Iterable[dict[str, Any]]) -> ReplayReport:
    """Re-run every input; report each ``schedule`` whose decisions differ from the recorded ones."""
    it = iter(records)
    core = core_from_snapshot(next(it))
    report = ReplayReport()
    for rec in it:
        if rec["kind"] == "applied":
            continue
        if rec["kind"] != "schedule":
            _feed(core, rec)
            continue
        got = asdict(core.schedule(rec["now_s"]))
        report.schedules += 1
        for key, val in got.items():
            report.decisions[key] = report.decisions.get(key, 0) + len(val)
        if got != rec["out"]:
            report.mismatches.append({"now_s": rec["now_s"], "live": rec["out"], "replay": got})
    return report


def applied_mismatches(records: list[dict[str, Any]]) -> list[str]:
    """Decisions the live driver did not carry out as decided (placement without its cap and deadline,
    migration not sent, cap not forwarded, drop not answered)."""
    want: list[tuple] = []
    done: list[tuple] = []
    for rec in records:
        if rec["kind"] == "schedule":
            out = rec["out"]
            want += [("place", p["request_id"], p["instance_id"], p["cap"], p["deadline_s"]) for p in out["placements"]]
            want += [("migrate", m["request_id"], m["src_instance_id"], m["dst_instance_id"]) for m in out["migrations"]]
            want += [("caps", rid, cap) for rid, cap in out["caps"].items()]
            want += [("refuse", rid) for rid in out["dropped"] + out["rejected"]]
        elif rec["kind"] == "applied":
            done.append(tuple(rec["key"]))
    missing = [w for w in want if w not in done]
    extra = [d for d in done if d not in want]
    return [f"decided, not applied: {w}" for w in missing] + [f"applied, not decided: {d}" for d in extra]
