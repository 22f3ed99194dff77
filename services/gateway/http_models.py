"""HTTP request bodies (OpenAI schema + DLM extensions) and their validation.

DLM extensions may be given at the top level of the body (``"slo_ms": 500``) or inside a ``"dlm"``
object (``"dlm": {"slo_ms": 500}``); the ``dlm`` object wins, then top level, then the ``x-slo-ms`` /
``x-priority`` headers. OpenAI's ``stop``, ``temperature``, ``top_p`` and ``seed`` are validated here
(``sampling_params``); other OpenAI fields (logprobs, presence_penalty, ...) are accepted and ignored
(docs/api.md says why).
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import msgspec

from services.gateway.errors import ApiError, bad_request, from_validation_error
from shared.schemas.requests import MAX_STOP_CHARS, MAX_STOP_STRINGS, SEED_MAX, SEED_MIN, TEMPERATURE_MAX, Sampling


class DlmOptions(msgspec.Struct, forbid_unknown_fields=True):
    slo_ms: float | None = None
    priority: int | None = None
    min_threshold: float | None = None


class _Body(msgspec.Struct):
    model: str | None = None
    max_tokens: int | None = None
    stream: bool = False
    n: int = 1
    slo_ms: float | None = None
    priority: int | None = None
    min_threshold: float | None = None
    dlm: DlmOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None


class CompletionBody(_Body):
    prompt: str | list[str | int] = msgspec.field(default=None)  # type: ignore[assignment]


class ContentPart(msgspec.Struct):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct):
    role: str
    content: str | list[ContentPart] | None = None


class ChatBody(_Body):
    messages: list[ChatMessage] = msgspec.field(default=None)  # type: ignore[assignment]
    max_completion_tokens: int | None = None


PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1


@dataclass
class DlmParams:
    slo_ms: float | None
    priority: int
    min_threshold: float | None


def parse_body(raw: bytes, type_: type) -> Any:
    if not raw.strip():
        raise bad_request("request body is empty: a JSON object is required", None, "invalid_json")
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        raise from_validation_error(exc) from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"malformed JSON body: {exc}", None, "invalid_json") from None


def _header_number(headers: Mapping[str, str], name: str, kind: type) -> Any:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise bad_request(f"header {name} must be a{'n integer' if kind is int else ' number'}, got {raw!r}", name,
                          "invalid_type") from None


def dlm_params(body: _Body, headers: Mapping[str, str]) -> DlmParams:
    nested = body.dlm or DlmOptions()

    def pick(name: str, header: str, kind: type) -> tuple[Any, str]:
        if getattr(nested, name) is not None:
            return getattr(nested, name), f"dlm.{name}"
        if getattr(body, name) is not None:
            return getattr(body, name), name
        return _header_number(headers, header, kind), header

    slo_ms, slo_param = pick("slo_ms", "x-slo-ms", float)
    priority, prio_param = pick("priority", "x-priority", int)
    min_thr, thr_param = pick("min_threshold", "x-min-threshold", float)
    if slo_ms is not None and not 0 < slo_ms < math.inf:
        raise bad_request(f"{slo_param} must be a finite number > 0 (an end-to-end deadline in milliseconds), got {slo_ms}",
                          slo_param)
    if priority is not None and not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        # the scheduler decodes it as a 64-bit int: bound it here rather than strand the request there
        raise bad_request(f"{prio_param} must be in [{PRIORITY_MIN}, {PRIORITY_MAX}], got {priority}", prio_param)
    if min_thr is not None and not 0 < min_thr <= 1:
        raise bad_request(f"{thr_param} must be in (0, 1], got {min_thr}", thr_param)
    return DlmParams(slo_ms=slo_ms, priority=priority or 0, min_threshold=min_thr)


def sampling_params(body: _Body) -> Sampling | None:
    """The request's Sampling (None: greedy without stop strings). A seed is drawn when the client
    gave none and the request samples, so every sampled output can be reproduced (it is returned)."""
    t, top_p, seed = body.temperature, body.top_p, body.seed
    if t is not None and not 0 <= t <= TEMPERATURE_MAX:
        raise bad_request(f"temperature must be in [0, {TEMPERATURE_MAX:g}], got {t}", "temperature")
    if top_p is not None and not 0 < top_p <= 1:
        raise bad_request(f"top_p must be in (0, 1], got {top_p}", "top_p")
    if seed is not None and not SEED_MIN <= seed <= SEED_MAX:
        raise bad_request(f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}], got {seed}", "seed")
    stops = stop_strings(body.stop)
    if not stops and not t:
        return None if seed is None else Sampling(seed=seed)
    drawn = seed is None and bool(t)
    return Sampling(temperature=float(t or 0.0), top_p=float(1.0 if top_p is None else top_p),
                    seed=secrets.randbits(63) if drawn else (seed or 0), seed_drawn=drawn, stop=stops)


def stop_strings(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"stop may hold at most {MAX_STOP_STRINGS} strings, got {len(stops)}", "stop")
    for i, s in enumerate(stops):
        param = "stop" if isinstance(stop, str) else f"stop[{i}]"
        if not s:
            raise bad_request("a stop string must not be empty", param)
        if len(s) > MAX_STOP_CHARS:
            raise bad_request(f"a stop string may be at most {MAX_STOP_CHARS} characters, got {len(s)}", param)
    return stops


def check_common(body: _Body, served_model: str) -> None:
    if body.n != 1:
        raise bad_request(f"only n=1 is supported, got {body.n}", "n")
    if body.model is not None and body.model != served_model:
        raise ApiError(404, f"The model `{body.model}` does not exist; this gateway serves `{served_model}`",
                       param="model", code="model_not_found")


def completion_prompt(body: CompletionBody) -> str | list[int]:
    p = body.prompt
    if p is None:
        raise bad_request("missing required field `prompt`", "prompt", "missing_required_parameter")
    if isinstance(p, list):
        if all(isinstance(x, int) for x in p) and p:
            return list(p)  # type: ignore[arg-type]
        if len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        else:
            raise bad_request("prompt must be a string, a list of one string, or a list of token ids", "prompt")
    if not p:
        raise bad_request("prompt is empty", "prompt")
    return p


def chat_messages(body: ChatBody) -> list[dict[str, str]]:
    if body.messages is None:
        raise bad_request("missing required field `messages`", "messages", "missing_required_parameter")
    if not body.messages:
        raise bad_request("messages must contain at least one message", "messages")
    out = []
    for i, m in enumerate(body.messages):
        if m.role not in ("system", "user", "assistant", "developer", "tool"):
            raise bad_request(f"unknown role {m.role!r}", f"messages[{i}].role")
        content = m.content
        if isinstance(content, list):
            content = "".join(part.text or "" for part in content if part.type == "text")
        out.append({"role": m.role, "content": content or ""})
    return out


@dataclass
class Accepted:
    """A validated request, tokenized and ready to submit."""

    kind: str  # "completion" | "chat"
    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    stream: bool
    dlm: DlmParams
    arrival_s: float
    arrival_mono: float
    sampling: Sampling | None = None
    created: int = field(default_factory=lambda: int(time.time()))
