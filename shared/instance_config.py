"""Instance configurations: what a worker runs (model, device kind, tensor-parallel degree, cache mode).

The wire name — what ``WorkerHeartbeat.instance_config`` carries, what plans and the supervisor spell and
what the cost model is keyed by — is ``[<model>/<device>/]tp<N>[-<cache>]``:

- ``dilaserve-tiny/cpu/tp1-dual``: the shipped model, one CPU worker, dual cache (what a worker reports);
- ``dilaserve-tiny/h100/tp1-dual``: the same on an H100, so its step-latency curve never mixes with CPU's;
- ``tp1-dual``, ``tp4``, ``tp2-prefix``: short names (plans, the simulator) — model and device unspecified,
  i.e. the ones the curve of that name was measured for; no cache part = the dual cache.

The model may contain ``/`` (``GSAI-ML/LLaDA-8B-Base/h100/tp1-dual``): the name is split from the right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CACHE_MODES = ("dual", "prefix", "none")
DEFAULT_CACHE = "dual"
_HEAD = re.compile(r"tp([1-9][0-9]*)(?:-([a-z]+))?")
_DEVICE = re.compile(r"[a-z0-9]+")
# Words in CUDA device names that say nothing about the chip ("NVIDIA GeForce RTX 4090" → rtx4090).
_BRAND_WORDS = frozenset({"nvidia", "geforce", "tesla", "quadro", "amd", "radeon", "instinct", "intel"})


@dataclass(frozen=True, slots=True)
class InstanceConfig:
    """One configuration. Empty ``model`` / ``device`` / ``cache`` = unspecified (short names)."""

    model: str = ""
    device: str = ""
    tp: int = 1
    cache: str = ""

    def __post_init__(self) -> None:
        if self.tp < 1:
            raise ValueError(f"tensor-parallel degree must be >= 1, got {self.tp}")
        if self.cache and self.cache not in CACHE_MODES:
            raise ValueError(f"cache mode must be one of {CACHE_MODES}, got {self.cache!r}")
        if self.device and not _DEVICE.fullmatch(self.device):
            raise ValueError(f"device kind must be lower-case letters and digits, got {self.device!r}")
        if self.model and (not self.device or self.model != self.model.strip() or self.model.endswith("/")):
            raise ValueError(f"a model needs a device kind and a name without edge spaces or '/': {self.model!r}")

    @classmethod
    def parse(cls, name: str) -> "InstanceConfig":
        """The one parser of wire names; raises ValueError on anything else."""
        *rest, head = name.rsplit("/", 2)
        m = _HEAD.fullmatch(head)
        if m is None:
            raise ValueError(f"not an instance configuration (tp<N>[-<cache>]): {name!r}")
        if any(not part for part in rest):
            raise ValueError(f"empty model or device in {name!r}")
        model, device = (rest[0], rest[1]) if len(rest) == 2 else ("", rest[0] if rest else "")
        return cls(model=model, device=device, tp=int(m.group(1)), cache=m.group(2) or "")

    @classmethod
    def parse_or_none(cls, name: str) -> "InstanceConfig | None":
        """``parse``, or None for a name that is no configuration (a layout such as ``mixed``)."""
        try:
            return cls.parse(name)
        except ValueError:
            return None

    @property
    def name(self) -> str:
        """The one formatter: ``parse(c.name) == c``."""
        head = f"tp{self.tp}-{self.cache}" if self.cache else f"tp{self.tp}"
        if self.model:
            return f"{self.model}/{self.device}/{head}"
        return f"{self.device}/{head}" if self.device else head

    @property
    def cache_mode(self) -> str:
        return self.cache or DEFAULT_CACHE

    def __str__(self) -> str:
        return self.name


def device_kind(device_name: str) -> str:
    """A device's name as a config's device kind: ``cpu``; ``NVIDIA H100 80GB HBM3`` → ``h100``;
    ``NVIDIA A100-SXM4-80GB`` → ``a100``; ``NVIDIA GeForce RTX 4090`` → ``rtx4090``. Idempotent."""
    words = [w for w in re.findall(r"[a-z0-9]+", device_name.lower()) if w not in _BRAND_WORDS]
    kept: list[str] = []
    for w in words:  # the chip is named up to its first word with a digit; memory size etc. follow
        kept.append(w)
        if any(c.isdigit() for c in w):
            break
    return "".join(kept) or "unknown"


def worker_config(model_name: str, device: str, cache_mode: str, tp: int = 1) -> InstanceConfig:
    """What a worker serving ``model_name`` on ``device`` (a device name or kind) reports."""
    return InstanceConfig(model=model_name, device=device_kind(device), tp=tp, cache=cache_mode)


def tp_of(config: str) -> int:
    """``tp4-dual`` → 4 (the GPUs, or CPU worker slots, an instance occupies)."""
    return InstanceConfig.parse(config).tp


def cache_of(config: str) -> str:
    """``tp4-prefix`` → ``prefix``; a name without a cache part uses the dual cache."""
    return InstanceConfig.parse(config).cache_mode
