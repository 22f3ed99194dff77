"""Cluster-plane wire messages: heartbeats, the scheduler's cluster view, plans."""

from __future__ import annotations

from shared.schemas.base import Message


class StepLatencySample(Message, tag="step_latency_sample"):
    """One measured engine step: tokens executed and its wall latency (cost-model refit); the requests
    in it and the worker's step-loop time since the previous forward ended (None after an idle wait):
    what a step costs beyond its forward (``dilaserve experiment`` gives it to the simulator)."""

    tokens: int
    latency_s: float
    num_requests: int = 0
    gap_before_s: float | None = None


class ThresholdTpsSample(Message, tag="threshold_tps_sample"):
    """Tokens committed over ``steps`` request-steps at ``threshold`` (step-predictor refit)."""

    threshold: float
    tokens: int
    steps: int


class WorkerHeartbeat(Message, tag="worker_heartbeat"):
    worker_id: str
    instance_config: str  # InstanceConfig wire name (shared/instance_config.py): "dilaserve-tiny/cpu/tp1-dual"
    num_active: int
    num_active_tokens: int
    max_batch: int
    step_latency_ema_s: float
    tokens_per_step_ema: float
    num_steps_total: int
    sent_s: float
    draining: bool = False
    incarnation: str = ""  # new on every process start: a restarted worker (same id) holds none of the old requests
    step_samples: list[StepLatencySample] = []  # steps since the previous heartbeat (at most 64, newest)
    tps_samples: list[ThresholdTpsSample] = []  # per τ since the previous heartbeat


class PlannerHeartbeat(Message, tag="planner_heartbeat"):
    planner_id: str
    plan_id: str
    sent_s: float


class SchedulerHeartbeat(Message, tag="scheduler_heartbeat"):
    """The scheduler's cluster view, published periodically (readiness, dashboards)."""

    scheduler_id: str
    worker_ids: list[str]
    num_queued: int
    num_running: int
    planner_alive: bool
    sent_s: float


class InstanceCount(Message, tag="instance_count"):
    config: str
    count: int


class NodePlan(Message, tag="node_plan"):
    """The instances one node (index as in the planner's node list) should run."""

    node: int
    instances: list[InstanceCount]


class Plan(Message, tag="plan"):
    plan_id: str
    created_s: float
    instances: list[InstanceCount]  # totals per configuration
    reason: str = ""
    nodes: list[NodePlan] = []  # per-node placement (what each node supervisor executes)
    objectives: dict[str, float] = {}  # unserved_frac, quality, slack, instances, gpus, … (docs/planner.md)
    solve_s: float = 0.0
    status: str = ""  # optimal | time_limit | degenerate | solver_failed ("" for a static plan)
