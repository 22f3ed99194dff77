"""Wire contract: one base class, explicit unique tags, lossless round trips, subject scheme, config."""

from __future__ import annotations

import inspect
import re

import msgspec
import pytest

from shared import subjects
from shared.config import load_config
from shared.schemas import cluster, engine, records, requests
from shared.schemas.base import Message
from shared.schemas.codec import decode, encode

MODULES = [requests, cluster, records, engine]


def _message_types() -> list[type]:
    out = []
    for mod in MODULES:
        out += [obj for _, obj in inspect.getmembers(mod, inspect.isclass)
                if issubclass(obj, Message) and obj is not Message and obj.__module__ == mod.__name__]
    return out


def test_every_message_has_an_explicit_unique_tag():
    tags = [t.__struct_config__.tag for t in _message_types()]
    assert all(isinstance(tag, str) and tag for tag in tags)
    assert len(tags) == len(set(tags))


def test_time_fields_carry_units():
    """Float fields that are times say their unit; counts start with num_."""
    for t in _message_types():
        for name, ftype in zip(t.__struct_fields__, t.__annotations__.values()):
            if "float" in str(ftype) and any(w in name for w in ("time", "latency", "deadline", "slo", "arrival")):
                assert name.endswith(("_s", "_ms")), f"{t.__name__}.{name} needs a unit suffix"


def test_round_trips():
    sub = requests.SubmitRequest(request_id="r1", model="m", prompt_ids=[5, 6], max_tokens=8, arrival_s=1.5,
                                 gateway_id="g", slo_ms=100.0, deadline_s=1.6, priority=2, min_threshold=0.7)
    fin = requests.RequestFinished(request_id="r1", status="completed", finish_reason="stop", output_ids=[7],
                                   stats=requests.RequestStats(worker_id="w", thresholds_used=[0.9], num_steps=3))
    msgs = [
        sub, fin,
        requests.Assignment(request_id="r1", prompt_ids=[1], max_tokens=8, arrival_s=1.0, assigned_s=1.1, threshold_cap=0.9),
        requests.BlockCommitted(request_id="r1", worker_id="w", block_index=0, block_length=8, token_ids=[3] * 8, committed_s=2.0),
        cluster.Plan(plan_id="p", created_s=1.0, instances=[cluster.InstanceCount(config="tp1-dual", count=2)]),
        records.RequestRecord(request_id="r1", state="queued", submit=sub, result=fin),
        engine.DecodeState(request_id="r1", prompt_ids=[1], canvas_ids=[1, 1], mask_token_id=1, block_length=8),
    ]
    for m in msgs:
        assert decode(encode(m), type(m)) == m


def test_tagged_union_decoding_and_wrong_type_rejected():
    evt = requests.BlockCommitted(request_id="r", worker_id="w", block_index=1, block_length=8, token_ids=[], committed_s=0.0)
    union = requests.BlockCommitted | requests.RequestFinished
    assert decode(encode(evt), union) == evt
    with pytest.raises(msgspec.ValidationError):
        decode(encode(evt), requests.RequestFinished)


def test_subjects_follow_the_scheme():
    scheme = re.compile(r"^dlm\.v1\.[a-z]+\.[a-z]+\.([a-z]+|\*)(\.[A-Za-z0-9_*-]+)?$")
    for s in [subjects.request_submit(), subjects.request_offer(), subjects.request_cancel("r1"), subjects.request_cancel(), subjects.worker_assign("w-1"),
              subjects.worker_caps("w"), subjects.request_commit("r"), subjects.request_done("r"), subjects.request_events("r"),
              subjects.worker_heartbeat("w"), subjects.scheduler_heartbeat(), subjects.planner_heartbeat(), subjects.plan_publish()]:
        assert scheme.match(s), s
    with pytest.raises(ValueError):
        subjects.request_done("a.b")


def test_config_file_and_env(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("gateway:\n  port: 9000\nworker:\n  cache_mode: prefix\n")
    cfg = load_config(f, env={"DILASERVE_GATEWAY_PORT": "9100", "DILASERVE_NATS_URL": "nats://x:1"})
    assert cfg.gateway.port == 9100 and cfg.worker.cache_mode == "prefix" and cfg.nats.url == "nats://x:1"
    with pytest.raises(ValueError, match="gateway.portz"):
        load_config(env={"DILASERVE_GATEWAY_PORTZ": "1"})
    with pytest.raises(ValueError, match="gateway.port"):
        load_config(env={"DILASERVE_GATEWAY_PORT": "abc"})
