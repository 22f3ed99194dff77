"""Trace-driven discrete-event simulator driving the pure policy code in ``shared.policy``."""
