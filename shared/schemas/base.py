"""One base class for every wire message: tagged, frozen-free, compact field order."""

from __future__ import annotations

import msgspec


class Message(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=False):
    """Base of all wire messages. Subclasses set ``tag="..."`` explicitly."""
