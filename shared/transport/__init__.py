"""The only modules that talk to NATS and Redis."""

from shared.transport.bus import Bus, Delivery
from shared.transport.store import Store

__all__ = ["Bus", "Delivery", "Store"]
