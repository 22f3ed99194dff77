"""The device kind a worker reports (``cpu``, ``h100`` …): from the torch device it runs on."""

from __future__ import annotations

from functools import lru_cache

from shared.config import WorkerConfig
from shared.instance_config import InstanceConfig, device_kind, worker_config
from shared.profiles import model_dir


@lru_cache(maxsize=None)
def torch_device_kind(device: str) -> str:
    """``cpu`` → ``cpu``; ``cuda`` / ``cuda:1`` → that GPU's name normalised (``h100``); else the type."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return device_kind(torch.cuda.get_device_name(dev))
    return device_kind(dev.type)


def worker_instance_config(wcfg: WorkerConfig, cache_mode: str) -> InstanceConfig:
    """What this worker reports: its model directory's name, its device kind, TP 1, its cache mode."""
    return worker_config(model_dir(wcfg.model_dir).resolve().name, torch_device_kind(wcfg.device), cache_mode)
