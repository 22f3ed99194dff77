"""The one codec: msgspec JSON for every Message (readable in `nats sub` / `redis-cli`)."""

from __future__ import annotations

from functools import lru_cache
from typing import TypeVar

import msgspec

from shared.schemas.base import Message

M = TypeVar("M", bound=Message)
_encoder = msgspec.json.Encoder()


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)


@lru_cache(maxsize=None)
def _decoder(type_: type) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(type_)


def decode(data: bytes, type_: type[M]) -> M:
    """Raises msgspec.ValidationError / DecodeError on a payload of the wrong shape."""
    return _decoder(type_).decode(data)
