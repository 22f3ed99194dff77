"""Every NATS subject and stream name, built by functions: ``dlm.v1.<plane>.<entity>.<verb>[.<id>]``.

One message type per subject (see the docstrings).
"""

from __future__ import annotations

PREFIX = "dlm.v1"
SUBMIT_STREAM = "DLM_SUBMIT"  # JetStream stream holding accepted requests until a scheduler places them
# In a NATS cluster a second submit stream, led by another node: while one stream's leader is dead and
# its peers wait out raft's election timeout (4-9 s in nats-server), submissions go to the other one.
SUBMIT_STREAMS = (SUBMIT_STREAM, "DLM_SUBMIT_ALT")
SCHEDULER_DURABLE = "scheduler"
# `dilaserve chaos` only: a stream that records every RequestFinished published (request_done()), so
# duplicate completions are counted even when the observer itself was disconnected.
DONE_AUDIT_STREAM = "DLM_DONE_AUDIT"


def _check_token(token: str) -> str:
    if not token or any(c in token for c in ". *>\t\r\n"):
        raise ValueError(f"invalid subject token {token!r}")
    return token


def request_submit(lane: int = 0) -> str:
    """SubmitRequest, JetStream: lane i is stream SUBMIT_STREAMS[i] (lane 0 on the plain subject)."""
    if not 0 <= lane < len(SUBMIT_STREAMS):
        raise ValueError(f"no submit lane {lane}")
    return f"{PREFIX}.gateway.request.submit" + (f".lane{lane}" if lane else "")


def request_offer() -> str:
    """SubmitRequest, core NATS: the same message as request_submit(), sent beside it because core NATS
    reaches the scheduler one JetStream pass sooner (~1.4 ms here). Not durable and not needed: the
    JetStream copy is what the scheduler acks, and what a restarted scheduler gets redelivered."""
    return f"{PREFIX}.gateway.request.offer"


def request_cancel(request_id: str | None = None) -> str:
    """CancelRequest; None gives the wildcard every worker and the scheduler listen on."""
    return f"{PREFIX}.gateway.request.cancel.{_check_token(request_id) if request_id else '*'}"


def worker_assign(worker_id: str | None = None) -> str:
    """Assignment (request) → AssignmentAck (reply); None gives the wildcard over all workers (observers, tests)."""
    return f"{PREFIX}.scheduler.request.assign.{_check_token(worker_id) if worker_id else '*'}"


def worker_caps(worker_id: str | None = None) -> str:
    """ThresholdCaps for one worker; None gives the wildcard over all workers (observers, tests)."""
    return f"{PREFIX}.scheduler.threshold.cap.{_check_token(worker_id) if worker_id else '*'}"


def worker_migrate(worker_id: str | None = None) -> str:
    """MigrateRequest for the worker holding the request; None gives the wildcard over all workers."""
    return f"{PREFIX}.scheduler.request.migrate.{_check_token(worker_id) if worker_id else '*'}"


def request_released(request_id: str | None = None) -> str:
    """RequestReleased (a worker let a migrating request go); None gives the wildcard (the scheduler's feed)."""
    return f"{PREFIX}.worker.request.released.{_check_token(request_id) if request_id else '*'}"


def request_commit(request_id: str | None = None) -> str:
    """BlockCommitted; None gives the wildcard over all requests (the scheduler's progress feed)."""
    return f"{PREFIX}.events.request.commit.{_check_token(request_id) if request_id else '*'}"


def request_done(request_id: str | None = None) -> str:
    """RequestFinished; None gives the wildcard over all requests."""
    return f"{PREFIX}.events.request.done.{_check_token(request_id) if request_id else '*'}"


def request_events(request_id: str) -> str:
    """Wildcard over commit + done of one request (the gateway's per-request relay subscription)."""
    return f"{PREFIX}.events.request.*.{_check_token(request_id)}"


def worker_heartbeat(worker_id: str | None = None) -> str:
    """WorkerHeartbeat."""
    return f"{PREFIX}.worker.instance.heartbeat.{_check_token(worker_id) if worker_id else '*'}"


def scheduler_heartbeat() -> str:
    """SchedulerHeartbeat (cluster view)."""
    return f"{PREFIX}.scheduler.cluster.heartbeat"


def planner_heartbeat() -> str:
    """PlannerHeartbeat."""
    return f"{PREFIX}.planner.instance.heartbeat"


def plan_publish() -> str:
    """Plan."""
    return f"{PREFIX}.planner.plan.publish"


def js_stream_leader_stepdown(stream: str) -> str:
    """nats-server's API: the stream's leader steps down (to ``{"placement": {"preferred": server}}``)."""
    return f"$JS.API.STREAM.LEADER.STEPDOWN.{_check_token(stream)}"


def js_consumer_leader_stepdown(stream: str, durable: str) -> str:
    """nats-server's API: the consumer's leader steps down (same request body as the stream's)."""
    return f"$JS.API.CONSUMER.LEADER.STEPDOWN.{_check_token(stream)}.{_check_token(durable)}"
