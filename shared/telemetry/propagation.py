"""Trace context over NATS headers: W3C `traceparent`/`tracestate` plus `baggage`.

A private composite propagator is used (not the global one) so behaviour does not depend on
whatever another library configured globally.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


def inject(carrier: MutableMapping[str, str] | None = None, context: Context | None = None) -> dict[str, str]:
    """Write the current (or given) trace context into `carrier` and return it as a plain dict."""
    out: dict[str, str] = dict(carrier or {})
    _PROPAGATOR.inject(out, context=context)
    if carrier is not None:
        carrier.update(out)
    return out


def extract(headers: Mapping[str, str] | None, context: Context | None = None) -> Context:
    """Context carried by message headers; an empty/None mapping yields the given (or an empty) context."""
    # NATS headers may be case-preserved; W3C keys are lowercase, so normalise.
    carrier = {k.lower(): v for k, v in (headers or {}).items()}
    return _PROPAGATOR.extract(carrier, context=context)
