"""Model code for the served families (LLaDA, Dream), registered with transformers' Auto classes on demand."""

from __future__ import annotations

import json
from pathlib import Path

from services.gateway.tokenizer import load_local_tokenizer
from services.worker.model.configuration_dream import DreamConfig
from services.worker.model.configuration_llada import LLaDAConfig
from services.worker.model.modeling_dream import DreamModel
from services.worker.model.modeling_llada import LLaDAModelLM
from services.worker.model.segments import KVCache, Segment
from shared.profiles import SHIPPED_MODEL_DIR

__all__ = [
    "LLaDAConfig", "LLaDAModelLM", "DreamConfig", "DreamModel", "KVCache", "Segment", "MODEL_TYPES",
    "register_llada", "register_models", "load_model", "load_tokenizer", "default_model_dir",
]

# config.json model_type -> (config class, model class)
MODEL_TYPES = {"llada": (LLaDAConfig, LLaDAModelLM), "Dream": (DreamConfig, DreamModel)}

_registered = False


def register_models() -> None:
    """Register every family with AutoConfig/AutoModel/AutoModelForMaskedLM (idempotent, explicit rather than on import)."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    for model_type, (config_cls, model_cls) in MODEL_TYPES.items():
        AutoConfig.register(model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, model_cls, exist_ok=True)
        AutoModelForMaskedLM.register(config_cls, model_cls, exist_ok=True)
    _registered = True


register_llada = register_models  # the name callers of the LLaDA-only version use


def default_model_dir() -> Path:
    """The shipped model, committed under models/ at the repository root."""
    return SHIPPED_MODEL_DIR


def load_model(path: str | Path, device: str = "cpu", dtype: str = "auto") -> LLaDAModelLM | DreamModel:
    """Load from a local directory only (never the hub), the class chosen by config.json's model_type.

    bf16 on CUDA, fp32 on CPU unless told otherwise. Code shipped with a checkpoint is never run.
    """
    import torch

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model at {path}: expected a directory with config.json and weights")
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unsupported model_type {model_type!r} in {path / 'config.json'}; supported: {sorted(MODEL_TYPES)}")
    register_models()
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    model_cls = MODEL_TYPES[model_type][1]
    model = model_cls.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True, trust_remote_code=False)
    return model.to(device).eval()


def load_tokenizer(path: str | Path):
    return load_local_tokenizer(path)
