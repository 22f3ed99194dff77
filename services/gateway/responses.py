"""Response bodies in the OpenAI schema, plus the `dlm` object with decoding stats, deadline and timings."""

from __future__ import annotations

from typing import Any, Protocol

from services.gateway.http_models import Accepted
from shared.schemas.records import RequestRecord
from shared.schemas.requests import RequestFinished, Sampling, stop_cut


class Gateway(Protocol):
    """What a response body needs of the gateway: its tokenizer and the model name it serves."""

    model_name: str

    @property
    def tokenizer(self) -> Any: ...


def stops_of(sampling: Sampling | None) -> list[str]:
    return list(sampling.stop) if sampling else []


def output_text(gw: Gateway, fin: RequestFinished, sampling: Sampling | None) -> str:
    """The result's text, cut before the earliest stop string (the worker's output ends just past it)."""
    text = gw.tokenizer.decode(fin.output_ids)
    cut = stop_cut(text, stops_of(sampling))
    return text if cut is None else text[:cut]


def sampling_object(sampling: Sampling | None) -> dict[str, Any]:
    """What the request decoded with: a drawn seed is returned so the output can be reproduced."""
    s = sampling or Sampling()
    sampled = s.temperature > 0
    return {"temperature": s.temperature, "top_p": s.top_p if sampled else None, "seed": s.seed if sampled else None,
            "seed_drawn": s.seed_drawn, "stop": list(s.stop)}


def usage(fin: RequestFinished) -> dict[str, int]:
    n_out = len(fin.output_ids)
    return {"prompt_tokens": fin.num_prompt_tokens, "completion_tokens": n_out, "total_tokens": fin.num_prompt_tokens + n_out}


def dlm_object(fin: RequestFinished, slo_ms: float | None, priority: int, min_threshold: float | None,
               deadline_s: float | None, latency_s: float | None, arrival_s: float | None = None,
               result_seen_s: float | None = None, sampling: Sampling | None = None) -> dict[str, Any]:
    st = fin.stats
    met = None if slo_ms is None or latency_s is None else latency_s * 1000 <= slo_ms
    obj: dict[str, Any] = {
        "request_id": fin.request_id,
        "status": fin.status,
        "slo_ms": slo_ms,
        "priority": priority,
        "min_threshold": min_threshold,
        "deadline_s": deadline_s,
        "deadline_met": met,
        "thresholds_used": st.thresholds_used if st else [],
        "threshold_mean": st.threshold_mean if st else None,
        "steps": st.num_steps if st else 0,
        "refresh_steps": st.num_refresh_steps if st else 0,
        "reuse_steps": st.num_reuse_steps if st else 0,
        "migrations": st.num_migrations if st else 0,
        "worker_id": st.worker_id if st else None,
        "sampling": sampling_object(sampling),
    }
    if latency_s is not None:
        worker_s = st.worker_s if st else 0.0
        obj["timings"] = {
            "gateway_ms": round(latency_s * 1000, 3),  # arrival at the gateway → result ready
            "queue_ms": round((st.queue_s if st else 0.0) * 1000, 3),  # arrival → the worker has it
            "worker_ms": round(worker_s * 1000, 3),  # the request's time on the worker (batching + forwards)
            "worker_forward_ms": round((st.worker_forward_s if st else 0.0) * 1000, 3),
            "overhead_ms": round((latency_s - worker_s) * 1000, 3),  # control plane: everything but the worker
        }
        if st and arrival_s and st.assigned_at_s:  # breakdown of the overhead (wall clocks of one host/NTP)
            obj["timings"]["to_scheduler_ms"] = round((st.assigned_at_s - arrival_s) * 1000, 3)
            obj["timings"]["to_worker_ms"] = round((st.received_at_s - st.assigned_at_s) * 1000, 3)
            if result_seen_s:
                obj["timings"]["result_return_ms"] = round((result_seen_s - fin.finished_s) * 1000, 3)
    return obj


def _dlm_for(acc: Accepted, fin: RequestFinished, latency_s: float, seen_s: float | None = None) -> dict[str, Any]:
    d = acc.dlm
    deadline_s = acc.arrival_s + d.slo_ms / 1000 if d.slo_ms is not None else None
    return dlm_object(fin, d.slo_ms, d.priority, d.min_threshold, deadline_s, latency_s, acc.arrival_s, seen_s,
                      acc.sampling)


def final_body(gw: Gateway, acc: Accepted, fin: RequestFinished, latency_s: float, seen_s: float | None = None) -> dict[str, Any]:
    text = output_text(gw, fin, acc.sampling)
    if acc.kind == "completion":
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": fin.finish_reason}
        obj = "text_completion"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": fin.finish_reason}
        obj = "chat.completion"
    return {"id": acc.request_id, "object": obj, "created": acc.created, "model": gw.model_name, "choices": [choice],
            "usage": usage(fin), "dlm": _dlm_for(acc, fin, latency_s, seen_s)}


def chunk(gw: Gateway, acc: Accepted, delta: str | dict, finish_reason: str | None = None) -> dict[str, Any]:
    if acc.kind == "completion":
        text = delta if isinstance(delta, str) else delta.get("content", "")
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    else:
        d = delta if isinstance(delta, dict) else {"content": delta}
        choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    return {"id": acc.request_id, "object": obj, "created": acc.created, "model": gw.model_name, "choices": [choice]}


def final_chunk(gw: Gateway, acc: Accepted, fin: RequestFinished, rest: str, latency_s: float) -> dict[str, Any]:
    """Last chunk: any text not streamed yet, finish_reason, usage and the dlm object."""
    body = chunk(gw, acc, rest if acc.kind == "completion" else ({"content": rest} if rest else {}), fin.finish_reason)
    body["usage"] = usage(fin)
    body["dlm"] = _dlm_for(acc, fin, latency_s)
    return body


def request_status(gw: Gateway, rec: RequestRecord) -> dict[str, Any]:
    s = rec.submit
    out: dict[str, Any] = {
        "id": rec.request_id, "object": "dlm.request", "status": rec.state, "model": s.model,
        "created": int(s.arrival_s), "worker_id": rec.worker_id or None, "prompt_tokens": len(s.prompt_ids),
        "max_tokens": s.max_tokens, "slo_ms": s.slo_ms, "priority": s.priority, "min_threshold": s.min_threshold,
        "deadline_s": s.deadline_s, "result": None,
    }
    fin = rec.result
    if fin is not None:
        latency_s = fin.finished_s - s.arrival_s if fin.finished_s else None
        out["result"] = {
            "text": output_text(gw, fin, s.sampling), "finish_reason": fin.finish_reason, "usage": usage(fin),
            "error": fin.error or None, "error_code": fin.error_code or None,
            "dlm": dlm_object(fin, s.slo_ms, s.priority, s.min_threshold, s.deadline_s, latency_s, sampling=s.sampling),
        }
    return out
