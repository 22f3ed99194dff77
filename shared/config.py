"""Typed configuration, loaded explicitly: defaults ← YAML/JSON file ← ``DILASERVE_*`` environment.

Environment keys are ``DILASERVE_<SECTION>_<FIELD>``, e.g. ``DILASERVE_NATS_URL``,
``DILASERVE_WORKER_CACHE_MODE=prefix``, ``DILASERVE_GATEWAY_PORT=8080``. ``DILASERVE_CONFIG`` names a file.
Nothing is read at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import msgspec

ENV_PREFIX = "DILASERVE_"


@dataclass
class NatsConfig:
    url: str = "nats://127.0.0.1:4222"
    submit_max_age_s: float = 3600.0  # accepted-but-unplaced requests are kept this long in JetStream
    # High availability: the URL may list several servers (comma-separated, one cluster); the submit
    # stream is then kept on this many of them (3 for a 3-node cluster). Never lowered on an existing stream.
    stream_replicas: int = 1


@dataclass
class RedisConfig:
    # or redis+sentinel://host:port,host:port/<master name>/<db>: the master through Sentinel (failover)
    url: str = "redis://127.0.0.1:6379/0"
    result_ttl_s: int = 3600  # finished request records expire after this
    max_connections: int = 64  # per process; beyond it commands wait for a free connection
    pool_timeout_s: float = 10.0  # how long a command may wait for one before it fails


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    gateway_id: str = ""  # "" = "gateway-<pid>"
    model_dir: str = ""  # "" = the shipped model
    model_name: str = "dilaserve-tiny"
    default_max_tokens: int = 64
    request_timeout_s: float = 300.0
    backend_timeout_s: float = 5.0  # bound on each single Redis/NATS wait on the request path
    # Also send each submission over core NATS: the scheduler sees it ≈ 1 ms sooner than through
    # JetStream, which stays the durable copy (docs/operations.md, "Offering submissions").
    offer_submissions: bool = True


def hash_api_key(key: str) -> str:
    """The only form an API key is kept in: sha256 hex digest of its UTF-8 bytes."""
    return hashlib.sha256(key.encode()).hexdigest()


def _csv(value: list[str] | str) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    return [v.strip() for v in items if v.strip()]


@dataclass
class SecurityConfig:
    """Gateway API keys and request limits. Keys live only as sha256 digests (never logged or printed):
    ``api_key_hashes`` takes digests; ``api_keys`` takes plaintext (meant for the environment) that is hashed
    on load and dropped. Lists may be given comma-separated. No keys = authentication off."""

    api_key_hashes: list[str] | str = field(default_factory=list, repr=False)
    api_keys: list[str] | str = field(default_factory=list, repr=False)
    rate_limit_per_s: float = 0.0  # token refill per key (per client address without auth); 0 = unlimited
    rate_limit_burst: int = 0  # bucket size; 0 = max(1, ceil(rate_limit_per_s))
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_prompt_tokens: int = 0  # 0 = only the model's context limit applies
    max_inflight: int = 1024  # generation requests in flight per gateway (streams included); 0 = unbounded
    retry_after_s: int = 1  # Retry-After sent with an overload 503

    def __post_init__(self) -> None:
        hashes = [h.lower() for h in _csv(self.api_key_hashes)]
        for i, h in enumerate(hashes):
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                raise ValueError(f"security.api_key_hashes[{i}] is not a sha256 hex digest (64 hex digits)")
        self.api_key_hashes = sorted(set(hashes) | {hash_api_key(k) for k in _csv(self.api_keys)})
        self.api_keys = []  # plaintext is not kept


COST_MODELS = ("llada8b-gh200", "tiny-cpu")  # built in (shared/policy/cost_model.py)


@dataclass
class SchedulerConfig:
    scheduler_id: str = "scheduler-0"
    heartbeat_timeout_s: float = 3.0  # a worker silent this long is dead; its requests are re-placed
    status_interval_s: float = 0.5
    default_threshold_cap: float = 0.9
    assign_timeout_s: float = 2.0
    ack_wait_s: float = 60.0
    reconcile_interval_s: float = 5.0  # drop requests Redis shows finished whose completion event was missed
    record_wait_s: float = 30.0  # a submission whose Redis record is still missing this long after arrival is dropped
    # Scheduling policy (shared/policy, docs/scheduler.md): fcfs | balance | tedi | dilaserve.
    policy: str = "dilaserve"
    # Cost model (docs/scheduler.md, "Cost model"): "" = measured `dilaserve profile` curves, one per
    # device kind, and the conservative prior where a device has none; "llada8b-gh200" / "tiny-cpu" (the
    # prior alone) are built in. Workers use the same settings.
    cost_model: str = ""
    # A `dilaserve profile` JSON; "" = every profile-<device kind>.json beside the model (worker.model_dir).
    cost_profile: str = ""
    # Refit the cost model toward this quantile of the measured step latencies (0 = their mean): deadlines
    # are planned on it, and steps of a shared machine vary (docs/scheduler.md, "Cost model")
    cost_quantile: float = 0.9
    budget_step_s: float = 0.1  # per-worker token budget: the most tokens whose step stays under this
    token_budget: int = 0  # > 0: a fixed per-worker token budget instead
    global_slo_s: float = 0.0  # tedi's deployment-wide SLO (needed by tedi only)
    # dilaserve sheds queued requests that can no longer make their deadline (answered 503
    # deadline_unmeetable, docs/api.md), as the simulator's dilaserve does; false: they run late instead
    drop_expired: bool = True
    # dilaserve: expected time × this must fit a deadline to place a request (0 = the policy's 1.1);
    # higher refuses more and serves more of what it admits on time (docs/benchmarks.md)
    place_safety: float = 0.0
    lc_period_s: float = 1.0  # load control (threshold caps) period
    # "": off; a path: every input of the policy core and every decision, as JSON lines (shared/policy/
    # recording.py), for replaying the live scheduler through the simulator's core (shared/sim/recorded.py)
    record_path: str = ""
    # Leader lease (docs/operations.md, "High availability"): of the schedulers sharing a Redis, the one
    # holding the lease consumes submissions and places requests; the others stand by. scheduler_id
    # (env DILASERVE_SCHEDULER_SCHEDULER_ID) names the holder: unique per instance, stable across its restarts.
    lease_ttl_s: float = 3.0  # a leader that stops renewing is replaced this long after its last renewal
    lease_renew_s: float = 0.5  # the leader renews, and a standby tries to take the lease, this often

    def __post_init__(self) -> None:
        if not 0 < self.lease_renew_s < self.lease_ttl_s:
            raise ValueError(f"scheduler.lease_renew_s must be > 0 and below scheduler.lease_ttl_s "
                             f"({self.lease_ttl_s:g}), got {self.lease_renew_s:g}")
        if self.cost_model not in ("", *COST_MODELS):  # a profile path goes in cost_profile
            raise ValueError(f"scheduler.cost_model must be '' or one of {COST_MODELS}, got {self.cost_model!r}")


@dataclass
class WorkerConfig:
    worker_id: str = ""  # "" = "worker-<pid>"
    model_dir: str = ""
    device: str = "cpu"
    cache_mode: str = "dual"
    block_length: int = 0  # 0 = the model's own (config.json block_length)
    max_batch: int = 32
    torch_threads: int = 1
    forward_nice: int = 5  # the forward thread runs this much "nicer" than the worker's I/O thread
    heartbeat_interval_s: float = 0.5

    def __post_init__(self) -> None:
        if self.block_length <= 0:  # every service reads the same model's own block length
            from shared.profiles import model_block_length

            self.block_length = model_block_length(self.model_dir)


@dataclass
class PlannerConfig:
    planner_id: str = "planner-0"
    interval_s: float = 5.0
    instance_config: str = "tp1-dual"  # the configuration the cluster starts with
    num_workers: int = 2  # instances the cluster starts with (the first plan)
    mode: str = "milp"  # milp: re-plan every interval_s (docs/planner.md) | static: keep the first plan
    configs: str = ""  # configurations offered to the MILP, comma-separated ("" = instance_config)
    nodes: int = 1  # nodes, each with slots_per_node "GPUs" (on CPU: worker slots)
    slots_per_node: int = 0  # 0 = num_workers
    window_s: float = 60.0  # arrivals the planner looks at
    n_classes: int = 8
    default_slo_s: float = 30.0  # SLO assumed for requests submitted without one
    time_limit_s: float = 2.0
    mip_gap: float = 0.01
    hysteresis: float = 0.10
    utilization: float = 0.8  # ρ: plan instances to be busy at most this fraction of the time
    allow_shrink: bool = False  # minimise GPUs (slots) instead of instances in the last stage
    # >= 0: a changed plan must beat the plan in force by this much SLO attainment when the window is
    # replayed in the simulator (shared/sim/replay.py); < 0 (default): off — with one configuration the
    # live planner only sizes the cluster, where the MILP's own objectives decide.
    replay_margin: float = -1.0
    replay_transition_s: float = 5.0  # in the replay, a worker the plan adds serves only after this (start-up)
    # Who carries a changed plan out (services/planner/actuators): "local" = the node supervisors that
    # follow the published plan; "kubernetes" = scale the worker Deployments (Scale subresource).
    actuator: str = "local"
    k8s_namespace: str = ""  # "" = the planner pod's own namespace (its service account's)
    # configuration=Deployment, comma-separated, e.g. "tp1-dual=dls-dilaserve-worker-tp1-dual"
    k8s_deployments: str = ""
    k8s_api_url: str = ""  # "" = in-cluster service account; else this API server (kubectl proxy, tests)
    k8s_ready_timeout_s: float = 600.0  # a scale step waits this long for ready replicas / the drain
    k8s_poll_s: float = 1.0  # how often that wait reads the Deployment

    def __post_init__(self) -> None:
        if self.actuator not in PLANNER_ACTUATORS:
            raise ValueError(f"planner.actuator must be one of {PLANNER_ACTUATORS}, got {self.actuator!r}")
        if self.actuator == "kubernetes":
            deployment_map(self.k8s_deployments)  # raises with the entry named


PLANNER_ACTUATORS = ("local", "kubernetes")


def deployment_map(spec: str) -> dict[str, str]:
    """``planner.k8s_deployments`` ("config=deployment,...") as a mapping; ValueError when malformed."""
    out: dict[str, str] = {}
    for entry in _csv(spec):
        config, sep, name = (part.strip() for part in entry.partition("="))
        if not sep or not config or not name:
            raise ValueError(f"planner.k8s_deployments entry {entry!r} is not configuration=deployment")
        out[config] = name
    if not out:
        raise ValueError("planner.k8s_deployments must name a Deployment per configuration with planner.actuator=kubernetes")
    return out


@dataclass
class Config:
    nats: NatsConfig = field(default_factory=NatsConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)


SECTIONS = tuple(Config.__dataclass_fields__)


def _read_file(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        rest = key[len(ENV_PREFIX):].lower()
        section, _, name = rest.partition("_")
        if section in SECTIONS and name:
            out.setdefault(section, {})[name] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged.get(k) or {}, v) if isinstance(v, Mapping) else v
    return merged


def _check_keys(data: Mapping[str, Any]) -> None:
    for section, values in data.items():
        if section not in SECTIONS:
            raise ValueError(f"invalid configuration: unknown section {section!r} (known: {', '.join(SECTIONS)})")
        known = Config.__dataclass_fields__[section].default_factory.__dataclass_fields__  # type: ignore[union-attr]
        for key in values or {}:
            if key not in known:
                raise ValueError(f"invalid configuration: unknown key {section}.{key}")


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Build the config. Unknown keys and wrong types raise ValueError naming the key."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    path = path or env.get(ENV_PREFIX + "CONFIG")
    if path:
        data = _read_file(Path(path))
    data = _merge(data, _env_overrides(env))
    _check_keys(data)
    try:
        # strict=False: env values are strings ("8080" → int).
        return msgspec.convert(data, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid configuration: {exc}") from None
